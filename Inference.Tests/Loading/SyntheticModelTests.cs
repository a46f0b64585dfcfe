using System.Runtime.InteropServices;
using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Tests.Support;
using LLama.Native;

namespace Inference.Tests.Loading;

public class SyntheticModelTests
{
    private string _dir = "";

    [SetUp]
    public void SetUp() => _dir = TestData.TempDir();

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static SyntheticModelOptions Options(int heads = 8, int kvHeads = 8, GgmlType type = GgmlType.F32, int seed = 7) => new()
    {
        Dimension = 64,
        LayerCount = 2,
        HeadCount = heads,
        KvHeadCount = kvHeads,
        FeedForwardLength = 96,
        ContextLength = 256,
        RopeFreqBase = 10000f,
        RmsNormEpsilon = 1e-5f,
        TensorType = type,
        Seed = seed,
        WeightScale = 0.05f,
        TokenizerDonorPath = TestData.Stories260K,
    };

    private string Write(SyntheticModelOptions o, string name)
    {
        var path = Path.Combine(_dir, name);
        SyntheticModel.Write(path, o);
        return path;
    }

    [Test]
    public void Write_HasLlamaTensorNamesShapesAndKeys()
    {
        var path = Write(Options(8, 2, GgmlType.Q8_0) with { LayerCount = 3 }, "gqa.gguf");
        using var f = GgufFile.Open(path);
        using var donor = GgufFile.Open(TestData.Stories260K);

        Assert.That(f.GetString("general.architecture"), Is.EqualTo("llama"));
        Assert.That(f.GetString("general.name"), Is.EqualTo("synthetic"));
        Assert.That(f.GetInteger("general.file_type"), Is.EqualTo(7));
        Assert.That(f.GetInteger("llama.context_length"), Is.EqualTo(256));
        Assert.That(f.GetInteger("llama.embedding_length"), Is.EqualTo(64));
        Assert.That(f.GetInteger("llama.block_count"), Is.EqualTo(3));
        Assert.That(f.GetInteger("llama.feed_forward_length"), Is.EqualTo(96));
        Assert.That(f.GetInteger("llama.rope.dimension_count"), Is.EqualTo(8));
        Assert.That(f.GetInteger("llama.attention.head_count"), Is.EqualTo(8));
        Assert.That(f.GetInteger("llama.attention.head_count_kv"), Is.EqualTo(2));
        Assert.That(f.GetFloat("llama.attention.layer_norm_rms_epsilon"), Is.EqualTo(1e-5f));
        Assert.That(f.GetFloat("llama.rope.freq_base"), Is.EqualTo(10000f));
        Assert.That(f.GetInteger("llama.vocab_size"), Is.EqualTo(512));
        foreach (var key in donor.MetadataKeys.Where(k => k.StartsWith("tokenizer.", StringComparison.Ordinal)))
            Assert.That(f.Metadata[key].Value, Is.EqualTo(donor.Metadata[key].Value), key);

        long[] D(params long[] d) => d;
        var expected = new List<(string, long[], GgmlType)> { ("token_embd.weight", D(64, 512), GgmlType.Q8_0) };
        for (int l = 0; l < 3; l++)
        {
            expected.Add(($"blk.{l}.attn_norm.weight", D(64), GgmlType.F32));
            expected.Add(($"blk.{l}.attn_q.weight", D(64, 64), GgmlType.Q8_0));
            expected.Add(($"blk.{l}.attn_k.weight", D(64, 16), GgmlType.Q8_0));
            expected.Add(($"blk.{l}.attn_v.weight", D(64, 16), GgmlType.Q8_0));
            expected.Add(($"blk.{l}.attn_output.weight", D(64, 64), GgmlType.Q8_0));
            expected.Add(($"blk.{l}.ffn_norm.weight", D(64), GgmlType.F32));
            expected.Add(($"blk.{l}.ffn_gate.weight", D(64, 96), GgmlType.Q8_0));
            expected.Add(($"blk.{l}.ffn_up.weight", D(64, 96), GgmlType.Q8_0));
            expected.Add(($"blk.{l}.ffn_down.weight", D(96, 64), GgmlType.Q8_0));
        }
        expected.Add(("output_norm.weight", D(64), GgmlType.F32));
        expected.Add(("output.weight", D(64, 512), GgmlType.Q8_0));
        Assert.That(f.Tensors.Select(t => (t.Name, t.Dimensions, t.Type)), Is.EqualTo(expected));
    }

    [Test]
    public void Write_IsDeterministicPerSeed_AndTiedHeadOmitsOutput()
    {
        var a = File.ReadAllBytes(Write(Options(seed: 1), "a.gguf"));
        var b = File.ReadAllBytes(Write(Options(seed: 1), "b.gguf"));
        var c = File.ReadAllBytes(Write(Options(seed: 2), "c.gguf"));
        Assert.That(a, Is.EqualTo(b));
        Assert.That(c, Is.Not.EqualTo(a));

        using var tied = GgufFile.Open(Write(Options() with { OutputHead = OutputHead.TiedToEmbedding }, "tied.gguf"));
        Assert.That(tied.FindTensor("output.weight"), Is.Null);
        Assert.That(tied.FindTensor("token_embd.weight"), Is.Not.Null);
    }

    [Test]
    public void Weights_HaveTheRequestedScale_AndTypesHoldTheSameValues()
    {
        using var f32 = GgufFile.Open(Write(Options(type: GgmlType.F32), "f32.gguf"));
        using var f16 = GgufFile.Open(Write(Options(type: GgmlType.F16), "f16.gguf"));
        using var q8 = GgufFile.Open(Write(Options(type: GgmlType.Q8_0), "q8.gguf"));

        var w = Floats(f32, "blk.1.ffn_down.weight");
        double mean = w.Average(), std = Math.Sqrt(w.Select(x => (x - mean) * (x - mean)).Average());
        Assert.That(mean, Is.EqualTo(0).Within(0.005));
        Assert.That(std, Is.EqualTo(0.05).Within(0.005));
        var norm = Floats(f32, "blk.0.attn_norm.weight");
        Assert.That(norm, Has.All.InRange(0.97f, 1.03f));
        Assert.That(norm.Distinct().Count(), Is.GreaterThan(32), "norms carry a little noise");

        var h = Floats(f16, "blk.1.ffn_down.weight");
        for (int i = 0; i < w.Length; i++) Assert.That(h[i], Is.EqualTo((float)(Half)w[i]), $"F16 element {i}");

        // Q8_0: dequantized values are within half a quantization step of the F32 values, plus the f16 rounding of the
        // scale (relative 2^-11, times at most 127 steps).
        var t = q8.GetTensor("blk.1.ffn_down.weight");
        var bytes = q8.GetTensorBytes(t);
        for (int b = 0; b < w.Length / 32; b++)
        {
            float d = (float)MemoryMarshal.Read<Half>(bytes[(b * 34)..]);
            for (int j = 0; j < 32; j++)
            {
                float x = w[b * 32 + j], q = (sbyte)bytes[b * 34 + 2 + j] * d;
                Assert.That(q, Is.EqualTo(x).Within(d * (0.5f + 127f / 2048f) + 1e-7f), $"block {b} element {j}");
            }
        }
    }

    [Test]
    public void Q8_0_MatchesLlamaCppQuantizerByteForByte()
    {
        var f32 = Write(Options(8, 2, GgmlType.F32), "f32.gguf");
        var ours = Write(Options(8, 2, GgmlType.Q8_0), "q8.gguf");
        var theirs = Path.Combine(_dir, "q8-llama.gguf");
        LlamaCpp.Quantize(f32, theirs, LLamaFtype.MOSTLY_Q8_0);

        using var a = GgufFile.Open(ours);
        using var b = GgufFile.Open(theirs);
        int compared = 0;
        foreach (var tb in b.Tensors)
        {
            if (tb.Type != GgmlType.Q8_0) continue;
            var ta = a.GetTensor(tb.Name);
            Assert.That(ta.Type, Is.EqualTo(GgmlType.Q8_0), tb.Name);
            Assert.That(a.GetTensorBytes(ta).SequenceEqual(b.GetTensorBytes(tb)), Is.True, tb.Name);
            compared++;
        }
        Assert.That(compared, Is.GreaterThanOrEqualTo(2 * 7), "every block matrix was compared");
    }

    [TestCase(8, 8, GgmlType.F32)]
    [TestCase(8, 2, GgmlType.F32)]
    [TestCase(8, 1, GgmlType.F32)]
    [TestCase(8, 8, GgmlType.F16)]
    [TestCase(8, 2, GgmlType.F16)]
    [TestCase(8, 1, GgmlType.F16)]
    [TestCase(8, 2, GgmlType.BF16)]
    [TestCase(8, 8, GgmlType.Q8_0)]
    [TestCase(8, 2, GgmlType.Q8_0)]
    [TestCase(8, 1, GgmlType.Q8_0)]
    public void LoadsInLlamaCpp_WithFiniteLogits(int heads, int kvHeads, GgmlType type)
    {
        var path = Write(Options(heads, kvHeads, type), $"m-{heads}-{kvHeads}-{type}.gguf");
        using var model = LlamaCpp.Load(path);
        Assert.That(model.VocabCount, Is.EqualTo(512));
        var logits = model.EvaluateLastLogits([1, 300, 301, 302, 303]);
        Assert.That(logits, Has.Length.EqualTo(512));
        Assert.That(logits.All(float.IsFinite), Is.True);
        Assert.That(logits.Max() - logits.Min(), Is.GreaterThan(1e-3f), "logits depend on the weights");
        Assert.That(logits.Select(Math.Abs).Max(), Is.LessThan(100f), "the weight scale keeps logits moderate");
    }

    [Test]
    public void TiedEmbeddings_LoadInLlamaCpp_AndQuantizeToQ4_K_M()
    {
        var o = Options(8, 2, GgmlType.F32) with { Dimension = 256, FeedForwardLength = 256, OutputHead = OutputHead.TiedToEmbedding };
        var path = Write(o, "tied.gguf");
        var q4 = Path.Combine(_dir, "tied-q4km.gguf");
        LlamaCpp.Quantize(path, q4, LLamaFtype.MOSTLY_Q4_K_M);
        using (var f = GgufFile.Open(q4))
            Assert.That(f.Tensors.Any(t => t.Type == GgmlType.Q4_K), Is.True);
        foreach (var p in new[] { path, q4 })
        {
            using var model = LlamaCpp.Load(p);
            var logits = model.EvaluateLastLogits([1, 300, 301]);
            Assert.That(logits.All(float.IsFinite), Is.True, p);
        }
    }

    [Test]
    public void Gpt2TokenizerDonor_IsCopiedWhole_LlamaCppTokenizesItsTestVectors()
    {
        // The gpt-2 vocab GGUF carries 50,257 tokens and 50,000 merges: llama.cpp must tokenize exactly as with the donor.
        var donor = TestData.Path("vocab/ggml-vocab-gpt-2.gguf");
        var path = Write(Options(8, 2, GgmlType.F16) with { TokenizerDonorPath = donor, LayerCount = 1 }, "gpt2.gguf");
        var inputs = File.ReadAllText(donor + ".inp").Split("\n__ggml_vocab_test__\n");
        var outputs = File.ReadAllText(donor + ".out").Split('\n');
        using var model = LlamaCpp.Load(path);
        Assert.That(model.VocabCount, Is.EqualTo(50257));
        int compared = 0;
        for (int i = 0; i < inputs.Length - 1; i++)
        {
            var expected = outputs[i].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
            Assert.That(model.Tokenize(inputs[i], BosToken.Omit), Is.EqualTo(expected), $"case {i}: {inputs[i]}");
            compared++;
        }
        Assert.That(compared, Is.EqualTo(46));
        Assert.That(model.EvaluateLastLogits([464, 3290, 318]).All(float.IsFinite), Is.True);
    }

    [Test]
    public void Cancelled_LeavesNoFileBehind()
    {
        var path = Path.Combine(_dir, "cancelled.gguf");
        Assert.Throws<OperationCanceledException>(() => SyntheticModel.Write(path, Options(), new CancellationToken(canceled: true)));
        Assert.That(File.Exists(path), Is.False);
    }

    [Test]
    public void Options_AreValidated()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SyntheticModelOptions { Dimension = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SyntheticModelOptions { TensorType = GgmlType.Q4_K });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SyntheticModelOptions { WeightScale = float.NaN });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SyntheticModelOptions { RmsNormEpsilon = 0 });
        Assert.Throws<ArgumentException>(() => Options(heads: 6, kvHeads: 6).Validate()); // 64 % 6 != 0
        Assert.Throws<ArgumentException>(() => Options(heads: 8, kvHeads: 3).Validate());
        Assert.Throws<ArgumentException>(() => (Options(type: GgmlType.Q8_0) with { FeedForwardLength = 100 }).Validate());
        Assert.Throws<ArgumentException>(() => new SyntheticModelOptions().Validate()); // no donor
        Assert.Throws<ArgumentException>(() => (Options() with { Dimension = 24, HeadCount = 8, KvHeadCount = 8 }).Validate()); // head dim 3 is odd
    }

    private static float[] Floats(GgufFile f, string name)
    {
        var t = f.GetTensor(name);
        var result = new float[t.ElementCount];
        Dequantize.Row(t.Type, f.GetTensorBytes(t), result);
        return result;
    }
}
