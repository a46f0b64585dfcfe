using Inference.Kernels.Reference;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Sampling;
using LLama.Native;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

/// <summary>Our forward pass against llama.cpp's on the same files: last-position logits and greedy text.</summary>
[NonParallelizable]
public class LlamaCppDifferentialTests
{
    private static string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = TestData.TempDir();

    [OneTimeTearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static readonly int[][] Prompts =
    [
        [1],
        [1, 403, 407, 261, 378],
        [1, 17, 300, 45, 99, 310, 511, 260, 7, 402, 388, 129, 64, 250, 333, 480, 21, 5, 290, 301, 44],
    ];

    private static string Model(int heads, int kvHeads, GgmlType type, OutputHead outputHead = OutputHead.Separate)
    {
        string path = Path.Combine(_dir, $"llama-{heads}-{kvHeads}-{type}{(outputHead == OutputHead.Separate ? "" : "-" + outputHead)}.gguf");
        if (!File.Exists(path))
        {
            SyntheticModel.Write(path, new SyntheticModelOptions
            {
                Dimension = 128,
                LayerCount = 2,
                HeadCount = heads,
                KvHeadCount = kvHeads,
                FeedForwardLength = 256,
                TensorType = type,
                Seed = heads * 31 + kvHeads,
                WeightScale = 0.08f,
                OutputHead = outputHead,
                TokenizerDonorPath = TestData.Stories260K,
            });
        }
        return path;
    }

    /// <summary>True when the F16 tensor <paramref name="name"/> of <paramref name="gguf"/> holds a subnormal half.</summary>
    internal static bool HasSubnormalHalves(GgufFile gguf, string name)
    {
        foreach (ushort h in System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(gguf.GetTensorBytes(gguf.GetTensor(name))))
            if ((h & 0x7C00) == 0 && (h & 0x3FF) != 0) return true;
        return false;
    }

    /// <summary>
    /// An F16 model whose output head is the embedding table: the prepared head holds subnormal halves rescaled by a power of
    /// two (WeightMatrix.HalfShift), and the embedding lookups read the same prepared rows, so both must scale back.
    /// </summary>
    [Test]
    public async Task TiedF16Head_LastLogits_MatchLlamaCpp()
    {
        string path = Model(8, 2, GgmlType.F16, OutputHead.TiedToEmbedding);
        using (var gguf = GgufFile.Open(path))
            Assert.That(HasSubnormalHalves(gguf, "token_embd.weight"), "the table holds subnormal halves");
        await AssertLastLogitsMatchAsync(path, "tied F16", 5e-3);
    }

    /// <summary>An F32 model (dims multiples of 256, as K-quants need) quantized by llama.cpp's own quantizer.</summary>
    private static string QuantizedModel(LLamaFtype ftype)
    {
        string f32 = Path.Combine(_dir, "llama-256-f32.gguf");
        if (!File.Exists(f32))
        {
            SyntheticModel.Write(f32, new SyntheticModelOptions
            {
                Dimension = 256,
                LayerCount = 2,
                HeadCount = 8,
                KvHeadCount = 2,
                FeedForwardLength = 512,
                TensorType = GgmlType.F32,
                Seed = 77,
                WeightScale = 0.08f,
                TokenizerDonorPath = TestData.Stories260K,
            });
        }
        string path = Path.Combine(_dir, $"llama-256-{ftype}.gguf");
        if (!File.Exists(path)) LlamaCpp.Quantize(f32, path, ftype);
        return path;
    }


    private static int Argmax(float[] a) => Array.IndexOf(a, a.Max());

    [TestCase(8, 8, GgmlType.F32, 1e-3)]
    [TestCase(8, 2, GgmlType.F32, 1e-3)]
    [TestCase(8, 1, GgmlType.F32, 1e-3)]
    [TestCase(8, 8, GgmlType.F16, 5e-3)]
    [TestCase(8, 2, GgmlType.F16, 5e-3)]
    [TestCase(8, 1, GgmlType.F16, 5e-3)]
    // NOTE: ggml's BF16 products round the activations to bf16 (8 significant bits) first; this engine multiplies the f32
    // activations exactly (measured 3.8-4.8e-3).
    [TestCase(8, 2, GgmlType.BF16, 1.5e-2)]
    // NOTE: Q8_0 activations are quantized exactly as llama.cpp does and the block products are exact integers; only
    // the f32 order of the per-block scaling differs (the packed kernel converts one int32 per block and row, ggml eight
    // partial lanes): measured 7–8e-8. The unpacked kernel (Q8_0Kernel) is bit-identical to ggml (GgmlMatMulTests). The
    // tolerance stays far below the ~1.5e-2 that an independent activation quantization gives (a single flipped
    // rounding decision spreads through the following layers).
    [TestCase(8, 8, GgmlType.Q8_0, 1e-5)]
    [TestCase(8, 2, GgmlType.Q8_0, 1e-5)]
    [TestCase(8, 1, GgmlType.Q8_0, 1e-5)]
    public async Task LastLogits_MatchLlamaCpp(int heads, int kvHeads, GgmlType type, double tolerance)
    {
        await AssertLastLogitsMatchAsync(Model(heads, kvHeads, type), $"{heads}/{kvHeads} {type}", tolerance);
    }

    /// <summary>
    /// A small F32 model of architecture <paramref name="arch"/> (see <see cref="SyntheticModelOptions.Architecture"/>):
    /// head size 32 (not dim / heads: the query width is 256 against a residual of 128), and for gemma a tied head, a
    /// window of 4 on the local layers, strong soft-caps (gemma2) and six layers so that one is global (gemma3).
    /// </summary>
    private static string ArchitectureModel(string arch, int heads, int kvHeads)
    {
        string path = Path.Combine(_dir, $"{arch}-{heads}-{kvHeads}.gguf");
        if (!File.Exists(path))
        {
            SyntheticModel.Write(path, new SyntheticModelOptions
            {
                Architecture = arch,
                Dimension = 128,
                // NOTE: llama.cpp's phi3 needs heads × head size = dim (its attention output is [dim, dim]).
                HeadDimension = arch == "phi3" ? 16 : 32,
                LayerCount = arch == "gemma3" ? 6 : 2,
                HeadCount = heads,
                KvHeadCount = kvHeads,
                FeedForwardLength = 256,
                TensorType = GgmlType.F32,
                Seed = heads * 37 + kvHeads,
                WeightScale = 0.08f,
                TokenizerDonorPath = TestData.Stories260K,
                OutputHead = arch.StartsWith("gemma", StringComparison.Ordinal) ? OutputHead.TiedToEmbedding : OutputHead.Separate,
                SlidingWindow = 4,
                AttentionLogitSoftCap = arch == "gemma2" ? 0.5f : 0f,
                FinalLogitSoftCap = arch == "gemma2" ? 2f : 0f,
                RopeFreqBase = arch == "gemma3" ? 1_000_000f : 10000f,
            });
        }
        return path;
    }

    // NOTE: F32 weights and f32 K/V on both sides: only the summation order differs. The engine is also checked against
    // the float64 reference forward pass (HfReferenceForward), written apart from the model graph. gemma: llama.cpp's CPU
    // GELU reads a table of f16 values at the f16-rounded input (GGML_GELU_FP16), which moves the logits by 2–5e-4
    // against an exact GELU; the reference with that rounding matches llama.cpp within 1e-4, the engine (exact GELU, as
    // transformers) matches the exact reference within 1e-5 and llama.cpp within the tolerance given here.
    [TestCase("qwen3", 8, 2, 1e-4)]
    [TestCase("qwen3", 8, 8, 1e-4)]
    [TestCase("gemma2", 8, 4, 1e-3)]
    [TestCase("gemma3", 8, 2, 1e-3)]
    [TestCase("gemma3", 4, 1, 1e-3)]
    [TestCase("phi3", 8, 2, 1e-4)]
    [TestCase("phi3", 8, 8, 1e-4)]
    public async Task Architecture_LastLogitsAndGreedy_MatchLlamaCppAndReference(string arch, int heads, int kvHeads, double tolerance)
    {
        string path = ArchitectureModel(arch, heads, kvHeads);
        string label = $"{arch} {heads}/{kvHeads}";
        AssertEngineMatchesReference(path, label, ggmlGelu: true);
        using (var gguf = GgufFile.Open(path))
        {
            var config = Inference.Models.ModelConfig.FromGguf(gguf);
            if (config.RopeScaling == Inference.Models.RopeScaling.LongRope)
            {
                // LongRoPE's long factors (a context window beyond the original one): the engine against the reference
                // with them, and they matter. llama.cpp uses the short ones at the test's context size, as the engine does.
                var longConfig = config.ForContextWindow(config.RopeOriginalContextLength + 1);
                Assert.That(longConfig.UseLongRopeFactors, Is.True);
                int[] prompt = Prompts[2];
                var expected = HfReferenceForward.LastLogits(new Inference.Models.GgufWeightSource(gguf), longConfig, prompt);
                var shortExpected = HfReferenceForward.LastLogits(new Inference.Models.GgufWeightSource(gguf), config, prompt);
                var actual = HfCheckpointDifferentialTests.EngineLastLogits(new Inference.Models.LlamaModel(gguf, longConfig), prompt);
                double err = ReferenceCompare.RelativeL2(actual, expected), apart = ReferenceCompare.RelativeL2(shortExpected, expected);
                TestContext.Out.WriteLine($"{arch} long factors: engine vs reference {err:E2}; short vs long {apart:E2}");
                Assert.That(err, Is.LessThan(1e-5));
                Assert.That(apart, Is.GreaterThan(1e-3));
            }
        }
        await AssertLastLogitsMatchAsync(path, label, tolerance);
        await AssertGreedyMatchesAsync(path);
    }

    /// <summary>
    /// On every prompt of <see cref="Prompts"/>: the engine against the float64 reference forward pass (≤ 1e-5), and that
    /// reference against llama.cpp (≤ 1e-4) — with ggml's f16-table GELU where <paramref name="ggmlGelu"/> asks for it
    /// (gemma; no effect on SiLU models).
    /// </summary>
    private static void AssertEngineMatchesReference(string path, string label, bool ggmlGelu)
    {
        using var gguf = GgufFile.Open(path);
        using var llamaCpp = LlamaCpp.Load(path);
        var config = Inference.Models.ModelConfig.FromGguf(gguf);
        var weights = new Inference.Models.GgufWeightSource(gguf);
        var model = new Inference.Models.LlamaModel(gguf, config);
        foreach (var prompt in Prompts)
        {
            var expected = HfReferenceForward.LastLogits(weights, config, prompt);
            var ggmlLike = ggmlGelu ? HfReferenceForward.LastLogits(weights, config, prompt, ggmlGelu: true) : expected;
            double err = ReferenceCompare.RelativeL2(HfCheckpointDifferentialTests.EngineLastLogits(model, prompt), expected);
            double refVsLlamaCpp = ReferenceCompare.RelativeL2(ggmlLike, llamaCpp.EvaluateLastLogits(prompt));
            TestContext.Out.WriteLine($"{label} prompt {prompt.Length}: engine vs float64 reference {err:E2}, reference{(ggmlGelu ? " (ggml's GELU)" : "")} vs llama.cpp {refVsLlamaCpp:E2}");
            Assert.That(err, Is.LessThan(1e-5), "engine vs float64 reference");
            Assert.That(refVsLlamaCpp, Is.LessThan(1e-4), "float64 reference vs llama.cpp");
        }
    }

    /// <summary>24 greedy tokens after the 5-token prompt (f32 K/V): the engine's equal llama.cpp's.</summary>
    private static async Task AssertGreedyMatchesAsync(string path)
    {
        using var reference = LlamaCpp.Load(path);
        await using var engine = await InferenceEngine.LoadAsync(path, new EngineOptions { Threads = 2, KvCache = new KvCacheOptions { DataType = KvCacheDataType.Float32 } });
        int[] prompt5 = Prompts[1];
        var greedy = reference.GenerateGreedy(prompt5, 24);
        var ours = await engine.CompleteAsync(prompt5, SamplingOptions.Greedy with { MaxTokens = 24, EndOfSequence = EndOfSequenceHandling.Ignore });
        Assert.That(ours.TokenIds, Is.EqualTo(greedy), "greedy tokens");
    }

    /// <summary>
    /// A small mixture-of-experts model: <paramref name="arch"/> is qwen2moe, qwen3moe or mixtral (a llama with experts);
    /// 4 experts (8 for mixtral), 2 per token; qwen's experts of 128 and qwen2moe's shared expert of 192 beside a dense
    /// width of 256; qwen3moe with a head size of 32 (and a tied head with 4 heads). <paramref name="dim"/> 256 for llama.cpp's K-quants.
    /// </summary>
    private static string MoeModel(string arch, int heads, int kvHeads, int dim = 128)
    {
        string path = Path.Combine(_dir, $"moe-{arch}-{heads}-{kvHeads}-{dim}.gguf");
        if (!File.Exists(path))
        {
            SyntheticModel.Write(path, new SyntheticModelOptions
            {
                Architecture = arch == "mixtral" ? "llama" : arch,
                Dimension = dim,
                HeadDimension = arch == "qwen3moe" ? 32 : dim / heads,
                LayerCount = 2,
                HeadCount = heads,
                KvHeadCount = kvHeads,
                FeedForwardLength = dim == 128 ? 256 : 512,
                ExpertCount = arch == "mixtral" ? 8 : 4,
                ExpertUsedCount = 2,
                ExpertFeedForwardLength = dim == 128 ? 128 : 256,
                SharedExpertFeedForwardLength = dim == 128 ? 192 : 512,
                TensorType = GgmlType.F32,
                Seed = heads * 41 + kvHeads + dim,
                WeightScale = 0.08f,
                TokenizerDonorPath = TestData.Stories260K,
                OutputHead = arch == "qwen3moe" && heads == 4 ? OutputHead.TiedToEmbedding : OutputHead.Separate,
            });
        }
        return path;
    }

    // NOTE: F32 weights and f32 K/V: only the summation order differs, and the routing picks the same experts on both
    // sides (the random routers' top-k are far from ties). The engine is also checked against the float64 reference.
    [TestCase("mixtral", 8, 2)]
    [TestCase("qwen2moe", 8, 8)]
    [TestCase("qwen2moe", 8, 2)]
    [TestCase("qwen3moe", 8, 2)]
    [TestCase("qwen3moe", 4, 1)]
    public async Task MixtureOfExperts_LastLogitsAndGreedy_MatchLlamaCppAndReference(string arch, int heads, int kvHeads)
    {
        string path = MoeModel(arch, heads, kvHeads);
        using (var gguf = GgufFile.Open(path))
        {
            var config = Inference.Models.ModelConfig.FromGguf(gguf);
            Assert.That(config.IsMixtureOfExperts, Is.True);
            Assert.That(config.ExpertWeightsNorm, Is.EqualTo(arch != "qwen2moe"));
        }
        AssertEngineMatchesReference(path, $"{arch} {heads}/{kvHeads}", ggmlGelu: false);
        await AssertLastLogitsMatchAsync(path, $"{arch} {heads}/{kvHeads}", 1e-4);
        await AssertGreedyMatchesAsync(path);
    }

    // Quantized experts, by llama.cpp's own quantizer from the F32 file (the router stays F32 there): Q8_0 (activations
    // quantized as llama.cpp does, block products exact) and the Q4_K_M mix (Q4_K/Q6_K experts, Q8_K activations).
    [TestCase("mixtral", LLamaFtype.MOSTLY_Q8_0, 1e-4)]
    [TestCase("qwen2moe", LLamaFtype.MOSTLY_Q8_0, 1e-4)]
    [TestCase("qwen3moe", LLamaFtype.MOSTLY_Q4_K_M, 3e-2)]
    [TestCase("qwen2moe", LLamaFtype.MOSTLY_Q4_K_M, 3e-2)]
    public Task MixtureOfExperts_Quantized_MatchLlamaCpp(string arch, LLamaFtype ftype, double tolerance)
    {
        string f32 = MoeModel(arch, 8, 2, dim: 256);
        string path = Path.Combine(_dir, $"moe-{arch}-{ftype}.gguf");
        if (!File.Exists(path)) LlamaCpp.Quantize(f32, path, ftype);
        using (var gguf = GgufFile.Open(path))
        {
            var types = gguf.Tensors.Where(t => t.Name.Contains("_exps", StringComparison.Ordinal)).GroupBy(t => t.Type).Select(g => $"{g.Key} ×{g.Count()}");
            TestContext.Out.WriteLine($"{arch} {ftype} experts: {string.Join(", ", types)}");
            Assert.That(gguf.Tensors.Where(t => t.Name.Contains("_exps", StringComparison.Ordinal)).All(t => t.Type != GgmlType.F32), Is.True);
        }
        return AssertLastLogitsMatchAsync(path, $"{arch} {ftype}", tolerance);
    }

    /// <summary>Last-position logits of every prompt in <see cref="Prompts"/>: relative L2 under the bound, same argmax.</summary>
    private static async Task AssertLastLogitsMatchAsync(string path, string label, double tolerance)
    {
        using var reference = LlamaCpp.Load(path);
        // K/V in f32 on both sides, so the comparison is of the arithmetic (llama.cpp's side is set in LlamaCpp.cs).
        var options = new EngineOptions { Threads = 2, KvCache = new KvCacheOptions { DataType = KvCacheDataType.Float32 } };
        await using var engine = await InferenceEngine.LoadAsync(path, options);
        foreach (var prompt in Prompts)
        {
            var expected = reference.EvaluateLastLogits(prompt);
            var actual = await engine.GetLogitsAsync(prompt);
            double err = ReferenceCompare.RelativeL2(actual, expected);
            TestContext.Out.WriteLine($"{label} prompt {prompt.Length}: relative L2 {err:E2}");
            Assert.That(err, Is.LessThan(tolerance), $"prompt of {prompt.Length} tokens");
            Assert.That(Argmax(actual), Is.EqualTo(Argmax(expected)), $"argmax, prompt of {prompt.Length} tokens");
        }
    }

    // NOTE: the activations are quantized exactly as llama.cpp does (Q8_0 for Q4_0, Q8_K for the Q4_K/Q5_K/Q6_K of the Q4_K_M
    // and Q5_K_M mixes); only the f32 summation order of the block products (and of attention) differs, and llama.cpp keeps this
    // model's output.weight in F32. Measured ~3e-7 where no activation rounding decision flips; one flipped decision
    // (a value within 1e-7 of a rounding boundary, here at the 21-token prompt) propagates to ~1e-2. The tolerance admits
    // that, and the argmax must still agree; Q8_0 above keeps its tight bound. Q5_K_M: 3.1e-7 and 4.4e-7 at the 1- and
    // 21-token prompts, 2.1e-2 at the 5-token one (one flipped decision; the same kernels run all three prompts).
    [TestCase(LLamaFtype.MOSTLY_Q4_0, 2e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q4_K_M, 2e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q5_K_M, 3e-2)]
    // The other types llama.cpp's quantizer writes, each file a mix: Q4_1, Q5_0, Q5_1 and IQ4_NL files (Q8_0 / Q8_1
    // activations), IQ4_XS and the Q2_K, Q3_K_S/M, Q4_K_S and Q5_K_S mixes (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; Q8_K activations).
    [TestCase(LLamaFtype.MOSTLY_Q4_1, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q5_0, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q5_1, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_IQ4_NL, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_IQ4_XS, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q2_K, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q3_K_S, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q3_K_M, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q4_K_S, 3e-2)]
    [TestCase(LLamaFtype.MOSTLY_Q5_K_S, 3e-2)]
    public Task LlamaCppQuantized_LastLogits_MatchLlamaCpp(LLamaFtype ftype, double tolerance)
    {
        string path = QuantizedModel(ftype);
        using (var gguf = GgufFile.Open(path))
        {
            var types = gguf.Tensors.GroupBy(t => t.Type).Select(g => $"{g.Key} ×{g.Count()}");
            TestContext.Out.WriteLine($"{ftype}: {string.Join(", ", types)}");
        }
        return AssertLastLogitsMatchAsync(path, ftype.ToString(), tolerance);
    }

    [Test]
    public async Task Stories260K_Greedy200_IdenticalToLlamaCpp()
    {
        using var reference = LlamaCpp.Load(TestData.Stories260K);
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 2 });
        foreach (var text in new[] { "", "Once upon a time" })
        {
            var prompt = engine.Tokenize(text);
            Assert.That(prompt, Is.EqualTo(reference.Tokenize(text, BosToken.Add)), "same prompt tokens");
            var expected = reference.GenerateGreedy(prompt, 200);
            var actual = await engine.CompleteAsync(prompt, SamplingOptions.Greedy with { MaxTokens = 200, EndOfSequence = EndOfSequenceHandling.Ignore });
            Assert.That(actual.TokenIds, Is.EqualTo(expected), $"prompt '{text}'");
        }
    }
}
