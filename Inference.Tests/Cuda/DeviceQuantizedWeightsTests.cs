using Inference.Cuda;
using Inference.Cuda.Runner;
using Inference.Engine;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;
using Inference.Quantization;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Cuda;

/// <summary>
/// Quantized models on the device executor with the weights kept in their GGUF types (dequantized in registers by the
/// block row kernels): a random-weight model quantized with llama.cpp's recipes (Q4_K_M: Q4_K with Q6_K for V, FFN down
/// and the output; Q5_K_M; Q4_0; Q5_1) against the CPU path, on ILGPU's CPU accelerator.
/// </summary>
public class DeviceQuantizedWeightsTests
{
    private static readonly Dictionary<QuantizationPreset, string> Models = new();

    /// <summary>The GQA model of <see cref="DeviceForwardExecutorTests"/> widened to dim 256 and ffn 512 (whole K-quant
    /// super-blocks), quantized with <paramref name="preset"/>; written once per preset for the whole run.</summary>
    internal static string Model(QuantizationPreset preset)
    {
        lock (Models)
        {
            if (Models.TryGetValue(preset, out var path)) return path;
            string f32 = Path.Combine(TestData.TempDir(), "device-quantized-f32.gguf");
            if (!File.Exists(f32))
            {
                SyntheticModel.Write(f32, new SyntheticModelOptions
                {
                    TokenizerDonorPath = TestData.Stories260K, Dimension = 256, HeadCount = 8, KvHeadCount = 2, LayerCount = 2,
                    FeedForwardLength = 512, TensorType = GgmlType.F32, Seed = 26, WeightScale = 0.08f,
                });
            }
            path = Path.Combine(TestData.TempDir(), $"device-quantized-{preset}.gguf");
            ModelQuantizer.QuantizeAsync(f32, path, preset).GetAwaiter().GetResult();
            Models[preset] = path;
            return path;
        }
    }

    /// <summary>
    /// Relative L2 bound of the logits against the CPU path. NOTE: the CPU path quantizes the activations as ggml does
    /// (Q8_0 per 32 values for the 32-blocks, Q8_K per 256 for the K-quants) while the device keeps them in f32, the
    /// difference the Q8_0 weight tests bound by 5e-2 (measured 1.2e-2 to 1.9e-2 there). Measured here: Q4_0 and Q5_1
    /// 2.1e-2 to 3.6e-2; Q4_K_M and Q5_K_M, whose activations share one scale per 256 values, 2.8e-2 to 5.3e-2, hence
    /// 8e-2 for them. The block layouts themselves are checked to 1e-5 by the kernel tests
    /// (<c>MatMulKernelTests.BlockKernels_MatchTheFloat64Reference_AndAreBatchInvariant</c>); a misread layout gives O(1).
    /// </summary>
    private static double Bound(QuantizationPreset preset) => preset is QuantizationPreset.Q4_0 or QuantizationPreset.Q5_1 ? 5e-2 : 8e-2;

    /// <summary>Mixed prefill/decode batches against the CPU path, within <see cref="Bound"/>.</summary>
    [TestCase(QuantizationPreset.Q4_K_M, new[] { GgmlType.Q4_K, GgmlType.Q6_K })]
    [TestCase(QuantizationPreset.Q5_K_M, new[] { GgmlType.Q5_K, GgmlType.Q6_K })]
    [TestCase(QuantizationPreset.Q4_0, new[] { GgmlType.Q4_0 })]
    [TestCase(QuantizationPreset.Q5_1, new[] { GgmlType.Q5_1 })]
    public void MixedBatches_MatchTheCpuPath(QuantizationPreset preset, GgmlType[] kept)
    {
        string path = Model(preset);
        using (var gguf = GgufFile.Open(path))
        {
            var types = gguf.Tensors.Select(t => t.Type).ToHashSet();
            Assert.That(types, Is.SupersetOf(kept), "the preset's types are in the file");
        }
        var errors = DeviceForwardExecutorTests.RunScenario(DeviceTestAccelerator.Cpu, path, 8, KvCacheDataType.Float32, CudaAttentionKernels.Ilgpu);
        TestContext.Out.WriteLine($"{preset}: relative L2 per step {string.Join(", ", errors.Select(e => e.ToString("E2")))}");
        Assert.That(errors.Max(), Is.LessThan(Bound(preset)));
    }

    /// <summary>The device holds the file's tensor bytes: every matrix uploaded in its stored type, so the executor's
    /// weight bytes equal what the KV pool's memory rule subtracts (<see cref="LlamaModel.WeightBytes"/>).</summary>
    [Test]
    public void Q4_K_M_WeightBytes_AreTheFilesTensorBytes()
    {
        using var gguf = GgufFile.Open(Model(QuantizationPreset.Q4_K_M));
        var config = ModelConfig.FromGguf(gguf);
        var model = new LlamaModel(gguf, config);
        var kvOptions = new KvCacheOptions { BlockSize = 8, PoolBytes = 1, PrefixCaching = PrefixCachingMode.Disabled };
        var manager = new KvCacheManager(8, kvOptions);
        var ctx = new ForwardExecutorContext(model, manager, kvOptions, 8, 64, 16, 2, 1);
        using var device = new DeviceForwardExecutor(DeviceTestAccelerator.Cpu, ctx, CudaAttentionKernels.Ilgpu, owner: null);
        long matrixBytes = 0;
        foreach (var t in gguf.Tensors)
        {
            if (t.Dimensions.Length < 2) continue;
            Assert.That(DeviceMatrix.DeviceType(t.Type), Is.EqualTo(t.Type), $"{t.Name} ({t.Type}) is kept as stored");
            matrixBytes += t.ByteCount;
        }
        Assert.That(device.WeightBytes, Is.EqualTo(model.WeightBytes));
        Assert.That(device.WeightBytes, Is.GreaterThan(matrixBytes), "vectors come on top of the matrices");
        Assert.That(device.WeightBytes - matrixBytes, Is.LessThan(64 * 1024), "only the norm vectors (as f32) besides the matrices");
    }

    /// <summary>
    /// Greedy decoding of the Q4_K_M model on the device executor equals the CPU engine's tokens, and the prompt's last
    /// logits agree within <see cref="Bound"/>.
    /// </summary>
    [Test]
    public async Task Q4_K_M_Greedy_EqualsTheCpuEngine()
    {
        string path = Model(QuantizationPreset.Q4_K_M);
        var sampling = SamplingOptions.Greedy with { MaxTokens = 16, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using var cpu = await InferenceEngine.LoadAsync(path, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        await using var device = await InferenceEngine.LoadAsync(path, new EngineOptions { Threads = 2 }.UseAccelerator(DeviceTestAccelerator.Cpu, CudaAttentionKernels.Ilgpu));
        Assert.That(device.DeviceName, Does.StartWith("ILGPU CPU accelerator"));
        var rng = new Random(26);
        var prompt = Enumerable.Range(0, 12).Select(_ => 1 + rng.Next(cpu.Config.VocabSize - 1)).ToArray();
        var deviceLogits = await device.GetLogitsAsync(prompt);
        var cpuLogits = await cpu.GetLogitsAsync(prompt);
        double error = ReferenceCompare.RelativeL2(deviceLogits, cpuLogits);
        var expected = await cpu.CompleteAsync(prompt, sampling);
        var actual = await device.CompleteAsync(prompt, sampling);
        TestContext.Out.WriteLine($"Q4_K_M: last logits relative L2 {error:E2}; greedy {string.Join(",", actual.TokenIds)} vs {string.Join(",", expected.TokenIds)}");
        Assert.That(error, Is.LessThan(Bound(QuantizationPreset.Q4_K_M)));
        Assert.That(actual.TokenIds, Has.Count.EqualTo(16));
        Assert.That(actual.TokenIds, Is.EqualTo(expected.TokenIds));
    }
}
