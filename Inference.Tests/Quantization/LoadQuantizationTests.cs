using Inference.Engine;
using Inference.Loading;
using Inference.Quantization;
using Inference.Tests.Models;
using Inference.Tests.Support;
using LLama.Native;

namespace Inference.Tests.Quantization;

/// <summary>
/// <see cref="EngineOptions.Quantization"/>: a float model quantized while loading runs exactly as the file llama.cpp's
/// quantizer makes of it (same weights, same kernels: bit-identical logits).
/// </summary>
[NonParallelizable]
public class LoadQuantizationTests
{
    private static string _dir = "";
    private static readonly int[] Prompt = [1, 403, 407, 261, 378, 17, 300, 45];

    [OneTimeSetUp]
    public void Setup() => _dir = TestData.TempDir();

    [OneTimeTearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static string F16Model()
    {
        string path = Path.Combine(_dir, "f16.gguf");
        if (!File.Exists(path))
        {
            SyntheticModel.Write(path, new SyntheticModelOptions
            {
                Dimension = 256, LayerCount = 3, HeadCount = 8, KvHeadCount = 2, FeedForwardLength = 512,
                TensorType = GgmlType.F16, Seed = 5, WeightScale = 0.08f, TokenizerDonorPath = TestData.Stories260K,
            });
        }
        return path;
    }

    private static async Task<float[]> Logits(string path, QuantizationPreset? quantization, List<float>? progress = null)
    {
        var reports = progress is null ? null : new SynchronousProgress(progress);
        await using var engine = await InferenceEngine.LoadAsync(path, new EngineOptions { Threads = 2, Device = Device.Cpu, Quantization = quantization }, reports);
        return await engine.GetLogitsAsync(Prompt);
    }

    private sealed class SynchronousProgress(List<float> values) : IProgress<float>
    {
        public void Report(float value)
        {
            lock (values) values.Add(value);
        }
    }

    [TestCase(QuantizationPreset.Q8_0)]
    [TestCase(QuantizationPreset.Q4_0)]
    [TestCase(QuantizationPreset.Q4_K_M)]
    [TestCase(QuantizationPreset.Q5_K_M)]
    [TestCase(QuantizationPreset.Q6_K)]
    [TestCase(QuantizationPreset.Q5_1)]
    [TestCase(QuantizationPreset.Q4_K_S)]
    public async Task QuantizedAtLoad_RunsLikeLlamaQuantizesFile(QuantizationPreset preset)
    {
        string f16 = F16Model();
        string quantized = Path.Combine(_dir, $"llama-{preset}.gguf");
        LlamaCpp.Quantize(f16, quantized, (LLamaFtype)(int)preset, quantizeOutputTensor: true);

        var progress = new List<float>();
        var atLoad = await Logits(f16, preset, progress);
        var fromFile = await Logits(quantized, null);
        var asStored = await Logits(f16, null);

        Assert.That(atLoad, Is.EqualTo(fromFile), "quantized at load vs llama-quantize's file");
        Assert.That(atLoad, Is.Not.EqualTo(asStored), "the weights did change");
        Assert.That(progress[^1], Is.EqualTo(1f));
        Assert.That(progress.Count(p => p > 0.5f && p < 1f), Is.GreaterThan(0), "quantization progress between 0.5 and 1");
    }

    private static string F16MoeModel(string architecture)
    {
        string path = Path.Combine(_dir, $"f16-{architecture}.gguf");
        if (!File.Exists(path))
        {
            SyntheticModel.Write(path, new SyntheticModelOptions
            {
                Architecture = architecture, Dimension = 256, LayerCount = 3, HeadCount = 8, KvHeadCount = 2, FeedForwardLength = 512,
                ExpertCount = 4, ExpertUsedCount = 2, ExpertFeedForwardLength = 256, SharedExpertFeedForwardLength = architecture == "qwen2moe" ? 256 : 0,
                TensorType = GgmlType.F16, Seed = 6, WeightScale = 0.08f, TokenizerDonorPath = TestData.Stories260K,
            });
        }
        return path;
    }

    /// <summary>Expert matrices are quantized at load too, each to the type llama.cpp's quantizer gives its stacked tensor.</summary>
    [TestCase("qwen2moe", QuantizationPreset.Q8_0)]
    [TestCase("qwen2moe", QuantizationPreset.Q4_K_M)]
    [TestCase("llama", QuantizationPreset.Q5_K_S)]
    public async Task MixtureOfExperts_QuantizedAtLoad_RunsLikeLlamaQuantizesFile(string architecture, QuantizationPreset preset)
    {
        string f16 = F16MoeModel(architecture);
        string quantized = Path.Combine(_dir, $"llama-{architecture}-{preset}.gguf");
        LlamaCpp.Quantize(f16, quantized, (LLamaFtype)(int)preset, quantizeOutputTensor: true);
        using (var file = GgufFile.Open(quantized))
            Assert.That(file.GetTensor("blk.0.ffn_down_exps.weight").Type, Is.Not.EqualTo(GgmlType.F16), "llama.cpp quantizes the experts");

        var atLoad = await Logits(f16, preset);
        var fromFile = await Logits(quantized, null);
        var asStored = await Logits(f16, null);
        Assert.That(atLoad, Is.EqualTo(fromFile), "quantized at load vs llama-quantize's file");
        Assert.That(atLoad, Is.Not.EqualTo(asStored), "the weights did change");
    }

    [Test]
    public async Task HuggingFaceFolder_QuantizedAtLoad_MatchesItsQuantizedGguf()
    {
        string hf = Path.Combine(_dir, "hf-bf16");
        HfTestCheckpoint.Write(hf, new HfTestCheckpointOptions { Hidden = 256, Intermediate = 512, Heads = 8, KvHeads = 2, DType = SafetensorsDType.BF16 });
        string gguf = Path.Combine(_dir, "hf-q4_k_m.gguf");
        await ModelQuantizer.QuantizeAsync(hf, gguf, QuantizationPreset.Q4_K_M);
        using (var file = GgufFile.Open(gguf))
            Assert.That(file.GetTensor("blk.0.attn_q.weight").Type, Is.EqualTo(GgmlType.Q4_K));

        var atLoad = await Logits(hf, QuantizationPreset.Q4_K_M);
        var fromFile = await Logits(gguf, null);
        // NOTE: the folder runs Q/K in half-rotation RoPE order, the GGUF in adjacent pairs (rows permuted, each row
        // quantized alike), so only the rounding of the rotation differs.
        double num = 0, den = 0;
        for (int i = 0; i < atLoad.Length; i++)
        {
            num += Math.Pow(atLoad[i] - fromFile[i], 2);
            den += Math.Pow(fromFile[i], 2);
        }
        Assert.That(Math.Sqrt(num / den), Is.LessThan(1e-5));
    }

    [Test]
    public void EveryPresetIsAcceptedAndAnUnknownOneRefused()
    {
        foreach (var preset in QuantizationPresets.All)
            Assert.That(new EngineOptions { Quantization = preset }.Quantization, Is.EqualTo(preset));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new EngineOptions { Quantization = (QuantizationPreset)99 });
    }
}
