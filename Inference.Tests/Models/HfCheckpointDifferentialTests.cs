using Inference.Kernels.Reference;
using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

/// <summary>
/// Random Hugging Face checkpoints (hidden 128, 2 layers, 8 heads, 2 KV heads, stories260K's vocabulary; llama F32 in two
/// shards, llama F16, qwen2 F32 with Q/K/V biases and tied embeddings) against their GGUF conversion: the checkpoint's weights bound in place (Neox RoPE on un-permuted Q/K) must give the same logits as
/// the converted file (adjacent-pair RoPE on permuted Q/K) in our engine and in llama.cpp.
/// </summary>
/// <remarks>
/// NOTE: until <see cref="LlamaModel"/> takes an <see cref="IWeightSource"/>, the in-place HF binding runs through
/// <see cref="HfReferenceForward"/>, a plain double-precision forward pass over any weight source. The engine's own Neox
/// path is checked on a GGUF copy of the checkpoint with Q/K rows left in HF order and the HF configuration.
/// </remarks>
[NonParallelizable]
[TestFixture("llama", SafetensorsDType.F32, false, 2, 1e-3)]
[TestFixture("llama", SafetensorsDType.F16, false, 1, 5e-3)]
[TestFixture("qwen2", SafetensorsDType.F32, true, 1, 1e-3)]
[TestFixture("qwen3", SafetensorsDType.F32, false, 1, 1e-3)]
[TestFixture("gemma2", SafetensorsDType.F32, true, 1, 1e-3)]
[TestFixture("gemma3", SafetensorsDType.F32, true, 1, 1e-3)]
[TestFixture("phi3", SafetensorsDType.F32, false, 1, 1e-3)]
[TestFixture("mixtral", SafetensorsDType.F32, false, 2, 1e-3)]
[TestFixture("qwen2moe", SafetensorsDType.F32, false, 1, 1e-3)]
[TestFixture("qwen3moe", SafetensorsDType.BF16, true, 1, 5e-3)]
public class HfCheckpointDifferentialTests(string modelType, SafetensorsDType dtype, bool tied, int shards, double llamaCppTolerance)
{
    private string _dir = "";
    private string _hfDir = "";
    private string _ggufPath = "";
    private string _asStoredPath = "";

    private static readonly int[][] Prompts =
    [
        [1],
        [1, 403, 407, 261, 378],
        [1, 17, 300, 45, 99, 310, 511, 260, 7, 402, 388, 129, 64, 250, 333, 480, 21, 5, 290, 301, 44],
    ];

    [OneTimeSetUp]
    public void Setup()
    {
        _dir = TestData.TempDir();
        _hfDir = Path.Combine(_dir, "hf");
        HfTestCheckpoint.Write(_hfDir, Options(modelType) with { ModelType = modelType, DType = dtype, TieWordEmbeddings = tied, Shards = shards });
        _ggufPath = Path.Combine(_dir, "converted.gguf");
        _asStoredPath = Path.Combine(_dir, "as-stored.gguf");
        using var checkpoint = HfCheckpoint.Open(_hfDir);
        checkpoint.ConvertToGguf(_ggufPath);
        HfCheckpointGgufConverter.Write(checkpoint, _asStoredPath, QkRowOrder.AsStored, CancellationToken.None);
    }

    /// <summary>
    /// What each architecture's checkpoint has beyond llama's: qwen3 and gemma a head size of their own (32, the query
    /// width 256 against a hidden size of 128); gemma a window of 4 on its local layers, GELU-tanh, the attention scale
    /// of query_pre_attn_scalar (= head size, as the released models), gemma2 strong soft-caps, gemma3 six layers (one
    /// global) with RoPE bases 10⁶ (global) and 10⁴ (local).
    /// </summary>
    private static HfTestCheckpointOptions Options(string modelType) => modelType switch
    {
        "qwen3" => new HfTestCheckpointOptions { HeadDim = 32 },
        "gemma2" => new HfTestCheckpointOptions
        {
            HeadDim = 32, SlidingWindow = 4,
            ExtraConfig = new Dictionary<string, string>
            {
                ["hidden_act"] = "\"gelu_pytorch_tanh\"", ["hidden_activation"] = "\"gelu_pytorch_tanh\"", ["sliding_window"] = "4",
                ["query_pre_attn_scalar"] = "32", ["attn_logit_softcapping"] = "0.5", ["final_logit_softcapping"] = "2.0",
            },
        },
        "gemma3" => new HfTestCheckpointOptions
        {
            HeadDim = 32, SlidingWindow = 4, Layers = 6,
            ExtraConfig = new Dictionary<string, string>
            {
                ["hidden_act"] = "\"gelu_pytorch_tanh\"", ["hidden_activation"] = "\"gelu_pytorch_tanh\"", ["sliding_window"] = "4",
                ["sliding_window_pattern"] = "6", ["query_pre_attn_scalar"] = "32", ["rope_local_base_freq"] = "10000.0", ["rope_theta"] = "1000000.0",
                ["final_logit_softcapping"] = "null", ["attn_logit_softcapping"] = "null",
            },
        },
        // Phi-3: fused QKV and gate/up; LongRoPE from a 512-token original context to 2048 (short factors at this size).
        "phi3" => new HfTestCheckpointOptions
        {
            ExtraConfig = new Dictionary<string, string>
            {
                ["original_max_position_embeddings"] = "512",
                ["rope_scaling"] = """{"type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 3.1, 4.0, 5.5], "long_factor": [1.0, 1.5, 2.5, 4.0, 7.0, 11.0, 19.0, 30.0]}""",
            },
        },
        // Mixtures of experts: 4 experts, 2 per token; qwen's experts narrower than the dense width, qwen2moe's shared
        // expert wider; qwen3moe with its own head size and renormalised top-k weights.
        "mixtral" => new HfTestCheckpointOptions { Experts = 4 },
        "qwen2moe" => new HfTestCheckpointOptions { Experts = 4, ExpertIntermediate = 64, SharedExpertIntermediate = 192 },
        "qwen3moe" => new HfTestCheckpointOptions { Experts = 4, ExpertIntermediate = 64, HeadDim = 32 },
        _ => new HfTestCheckpointOptions(),
    };

    [OneTimeTearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);


    internal static float[] EngineLastLogits(LlamaModel model, int[] prompt)
    {
        using var pool = new WorkerPool(2);
        var kv = new ContiguousKvCache(model.Config, 64);
        var batch = new ModelBatch();
        batch.Add(0, prompt, 0, wantLogits: true);
        var logits = new float[model.Config.VocabSize];
        Array.Fill(logits, float.NaN);
        model.Forward(batch, kv, logits, pool);
        return logits;
    }

    [Test]
    public void ConvertedConfig_EqualsCheckpointConfig_ExceptRopeLayout()
    {
        using var checkpoint = HfCheckpoint.Open(_hfDir);
        using var gguf = GgufFile.Open(_ggufPath);
        var fromGguf = ModelConfig.FromGguf(gguf);
        // NOTE: llama.cpp runs qwen2 with NeoX RoPE on un-permuted rows, llama with adjacent pairs on permuted rows.
        var layout = modelType is "llama" or "mixtral" ? RopeLayout.Normal : RopeLayout.Neox;
        Assert.That(checkpoint.Config.RopeLayout, Is.EqualTo(RopeLayout.Neox));
        Assert.That(fromGguf.RopeLayout, Is.EqualTo(layout));
        // NOTE: the windows are a list (compared by reference in the record's equality): compared apart.
        Assert.That(fromGguf with { SlidingWindows = null }, Is.EqualTo(checkpoint.Config with { RopeLayout = layout, SlidingWindows = null }));
        Assert.That(fromGguf.SlidingWindows ?? [], Is.EqualTo(checkpoint.Config.SlidingWindows ?? []));
        Assert.That(checkpoint.Config.HasAttentionBias, Is.EqualTo(modelType is "qwen2" or "qwen2moe"));
        Assert.That(checkpoint.Config.IsMixtureOfExperts, Is.EqualTo(modelType.EndsWith("moe", StringComparison.Ordinal) || modelType == "mixtral"));
        Assert.That(checkpoint.TieWordEmbeddings, Is.EqualTo(tied));
        Assert.That(gguf.FindTensor("output.weight") is null, Is.EqualTo(tied));
        Assert.That(checkpoint.Shards, Has.Count.EqualTo(shards));
    }

    [Test]
    public void QkPermutation_MovesHalfRotationPairsToAdjacentPairs()
    {
        // 2 heads of 4 rows: HF rows (h, j, i) = h*4 + j*2 + i go to (h, i, j) = h*4 + 2i + j.
        float[] rows = [0, 1, 2, 3, 4, 5, 6, 7];
        Assert.That(HfCheckpointGgufConverter.PermuteRows(rows, 1, 2), Is.EqualTo(new float[] { 0, 2, 1, 3, 4, 6, 5, 7 }));
    }

    [Test]
    public void HfInPlace_ConvertedGguf_AndLlamaCpp_GiveTheSameLogits()
    {
        using var checkpoint = HfCheckpoint.Open(_hfDir);
        using var gguf = GgufFile.Open(_ggufPath);
        using var asStored = GgufFile.Open(_asStoredPath);
        var ggufConfig = ModelConfig.FromGguf(gguf);
        var engineGguf = new LlamaModel(gguf, ggufConfig);
        var engineNeox = new LlamaModel(asStored, checkpoint.Config);
        using var reference = LlamaCpp.Load(_ggufPath);

        foreach (var prompt in Prompts)
        {
            var hfInPlace = HfReferenceForward.LastLogits(checkpoint.Weights, checkpoint.Config, prompt);
            var referenceOnGguf = HfReferenceForward.LastLogits(new GgufWeightSource(gguf), ggufConfig, prompt);
            var ours = EngineLastLogits(engineGguf, prompt);
            var oursNeox = EngineLastLogits(engineNeox, prompt);
            var llamaCpp = reference.EvaluateLastLogits(prompt);

            double hfVsGguf = ReferenceCompare.RelativeL2(hfInPlace, ours);
            double refVsEngine = ReferenceCompare.RelativeL2(referenceOnGguf, ours);
            double neoxVsGguf = ReferenceCompare.RelativeL2(oursNeox, ours);
            double oursVsLlamaCpp = ReferenceCompare.RelativeL2(ours, llamaCpp);
            double hfVsLlamaCpp = ReferenceCompare.RelativeL2(hfInPlace, llamaCpp);
            TestContext.Out.WriteLine($"prompt {prompt.Length}: HF in place vs engine on GGUF {hfVsGguf:E2}, reference vs engine on GGUF {refVsEngine:E2}, " +
                $"engine Neox on HF rows vs engine on GGUF {neoxVsGguf:E2}, engine vs llama.cpp {oursVsLlamaCpp:E2}, HF in place vs llama.cpp {hfVsLlamaCpp:E2}");
            Assert.Multiple(() =>
            {
                Assert.That(hfVsGguf, Is.LessThan(1e-4), "HF checkpoint bound in place vs converted GGUF in our engine");
                Assert.That(refVsEngine, Is.LessThan(1e-4), "reference forward vs engine on the same GGUF");
                Assert.That(neoxVsGguf, Is.LessThan(1e-4), "engine: Neox on HF rows vs adjacent pairs on permuted rows");
                Assert.That(oursVsLlamaCpp, Is.LessThan(llamaCppTolerance), "engine on converted GGUF vs llama.cpp");
                Assert.That(hfVsLlamaCpp, Is.LessThan(llamaCppTolerance), "HF checkpoint in place vs llama.cpp");
            });
            // The logits are not degenerate: the prompt matters.
            Assert.That(TensorArgMax(ours), Is.EqualTo(TensorArgMax(llamaCpp)));
        }
    }

    [Test]
    public void WithoutThePermutation_LlamaCppDisagrees()
    {
        if (modelType != "llama") Assert.Ignore("only llama checkpoints are permuted");
        // The permutation is what makes the conversion right: the as-stored file under adjacent-pair RoPE is a different model.
        using var reference = LlamaCpp.Load(_asStoredPath);
        using var checkpoint = HfCheckpoint.Open(_hfDir);
        var prompt = Prompts[2];
        var wrong = reference.EvaluateLastLogits(prompt);
        var hf = HfReferenceForward.LastLogits(checkpoint.Weights, checkpoint.Config, prompt);
        Assert.That(ReferenceCompare.RelativeL2(wrong, hf), Is.GreaterThan(1e-2));
    }

    [Test]
    public void Tokenizer_FromTokenizerJson_MatchesStories260KAndLlamaCpp()
    {
        using var checkpoint = HfCheckpoint.Open(_hfDir);
        var fromJson = checkpoint.CreateTokenizer();
        using var stories = GgufFile.Open(TestData.Stories260K);
        var fromGguf = Inference.Tokenization.ModelTokenizer.FromGguf(stories);
        using var converted = LlamaCpp.Load(_ggufPath);
        Assert.That(fromJson.VocabularySize, Is.EqualTo(512));
        Assert.That(fromJson.BosId, Is.EqualTo(1));
        Assert.That(fromJson.EosId, Is.EqualTo(2));
        Assert.That(fromJson.AddBos, Is.True);
        Assert.That(checkpoint.EosTokenIds, Is.EqualTo(new[] { 2 }));
        Assert.That(checkpoint.ChatTemplate, Does.Contain("message['content']"));
        foreach (var text in new[] { "Once upon a time", "The little dog ran to the park. He was happy!", "  two  spaces", "日本 ü 🙂", "" })
        {
            var ids = fromJson.Encode(text, addSpecial: true);
            Assert.That(ids, Is.EqualTo(fromGguf.Encode(text, addSpecial: true)), $"'{text}' vs stories260K.gguf");
            Assert.That(ids, Is.EqualTo(converted.Tokenize(text, BosToken.Add)), $"'{text}' vs llama.cpp on the converted GGUF");
            Assert.That(fromJson.Decode(ids), Is.EqualTo(text));
        }
    }

    private static int TensorArgMax(float[] a) => System.Numerics.Tensors.TensorPrimitives.IndexOfMax(a);
}
