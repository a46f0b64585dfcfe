using Inference.Kernels.Reference;
using Inference.Cuda;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Cuda;

/// <summary>
/// The differential checks of <see cref="DeviceForwardExecutorTests"/> on a real CUDA device, PTX attention and ILGPU
/// attention; skipped (ignored, with the probe's reason) where no CUDA device exists.
/// </summary>
[Category("Gpu")]
public class DeviceForwardExecutorGpuTests
{
    [TestCase(8, 8, 16, KvCacheDataType.Float32, CudaAttentionKernels.Ptx)]
    [TestCase(8, 2, 16, KvCacheDataType.Float16, CudaAttentionKernels.Ptx)]
    [TestCase(8, 1, 8, KvCacheDataType.Float16, CudaAttentionKernels.Ptx)]
    [TestCase(8, 2, 16, KvCacheDataType.Float32, CudaAttentionKernels.Ilgpu)]
    [TestCase(8, 8, 16, KvCacheDataType.Q8_0, CudaAttentionKernels.Ptx)]
    [TestCase(8, 2, 8, KvCacheDataType.Q8_0, CudaAttentionKernels.Ptx)]
    [TestCase(8, 1, 16, KvCacheDataType.Fp8E4M3, CudaAttentionKernels.Ptx)]
    [TestCase(8, 2, 16, KvCacheDataType.Fp8E4M3, CudaAttentionKernels.Ilgpu)]
    public void MixedBatches_MatchTheCpuPath(int heads, int kvHeads, int blockSize, KvCacheDataType kv, CudaAttentionKernels attention)
    {
        var backend = GpuTestBackend.RequireDevice();
        var errors = DeviceForwardExecutorTests.RunScenario(backend.Accelerator, DeviceForwardExecutorTests.Model(heads, kvHeads, GgmlType.F32, headDim: 64),
            blockSize, kv, attention);
        TestContext.Out.WriteLine($"{heads}/{kvHeads} block {blockSize} {kv} {attention}: max relative L2 {errors.Max():E2}");
        // the block formats: a K/V value the two executors compute a few ulps apart may fall on either side of a code
        // boundary (see DeviceForwardExecutorTests.MixedBatches_MatchTheCpuPath_BlockFormatKv)
        Assert.That(errors.Max(), Is.LessThan(KvBlockFormat.IsBlockFormat(kv) ? 1e-2 : 1e-3));
    }

    /// <summary>F16 weights: prefill steps of 16+ tokens run the tensor-core kernel (activations rounded to f16).</summary>
    [TestCase(8, 2, 16, KvCacheDataType.Float16)]
    [TestCase(8, 8, 16, KvCacheDataType.Float32)]
    public void MixedBatches_F16Weights_TensorCoreMatMul_MatchTheCpuPath(int heads, int kvHeads, int blockSize, KvCacheDataType kv)
    {
        var backend = GpuTestBackend.RequireDevice();
        var errors = DeviceForwardExecutorTests.RunScenario(backend.Accelerator, DeviceForwardExecutorTests.Model(heads, kvHeads, GgmlType.F16, headDim: 64),
            blockSize, kv, CudaAttentionKernels.Ptx);
        TestContext.Out.WriteLine($"F16 {heads}/{kvHeads} block {blockSize} {kv}: max relative L2 {errors.Max():E2}");
        Assert.That(errors.Max(), Is.LessThan(5e-3));
    }

    /// <summary>
    /// Mixture-of-experts (Mixtral-style llama, qwen2moe, qwen3moe) and gemma2's soft-capping on CUDA; PTX is asked for,
    /// gemma2's capped scores and local layers run the ILGPU attention kernels.
    /// </summary>
    [TestCase("llama", 6)]
    [TestCase("qwen2moe", 6)]
    [TestCase("qwen3moe", 6)]
    [TestCase("gemma2", 0)]
    public void Architectures_MatchTheCpuPath(string architecture, int experts)
    {
        var backend = GpuTestBackend.RequireDevice();
        var errors = DeviceForwardExecutorTests.RunScenario(backend.Accelerator,
            DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32, headDim: 64, architecture: architecture, experts: experts), 16, KvCacheDataType.Float32, CudaAttentionKernels.Ptx);
        TestContext.Out.WriteLine($"{architecture}: max relative L2 {errors.Max():E2}");
        Assert.That(errors.Max(), Is.LessThan(1e-3));
    }

    /// <summary>
    /// Decode steps captured as CUDA graphs and replayed against eager steps on one device (the scenario of
    /// <see cref="DeviceDecodeGraphTests"/>): the PTX attention merges another number of partitions in a captured step,
    /// so the logits agree within 1e-4 rather than bit for bit; no capture may fail.
    /// </summary>
    [TestCase(CudaAttentionKernels.Ptx)]
    [TestCase(CudaAttentionKernels.Ilgpu)]
    public void DecodeGraphs_ReplayMatchesEagerDecode(CudaAttentionKernels attention)
    {
        var backend = GpuTestBackend.RequireDevice();
        using var pair = new DeviceDecodeGraphTests.DecodePair(backend.Accelerator, DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32, headDim: 64), 16,
            attention: attention, tolerance: 1e-4);
        pair.Prefill([.. Enumerable.Range(1, 17).Select(id => ((long)id, 3 + id * 5 % 29))]);
        var all = Enumerable.Range(1, 17).Select(i => (long)i).ToArray();
        foreach (int count in new[] { 1, 3, 5, 17, 17, 3, 1, 17 })
        {
            pair.Decode(all[..count]);
            Assert.That(pair.Padded.LastDecodeBucket, Is.GreaterThanOrEqualTo(count));
        }
        for (int step = 0; step < 20; step++) pair.Decode(all);
        Assert.That(pair.Padded.DeviceName, Does.Contain("as CUDA graphs").And.Not.Contain("capture failed"));
    }

    /// <summary>
    /// The fused decode-step kernels against the same executor with fusion off on CUDA: the same greedy tokens, logits
    /// within 1e-6 relative L2 (the arithmetic and its order are the same; ptxas may contract a multiply-add differently
    /// in the fused kernels).
    /// </summary>
    [TestCase("llama", GgmlType.F16, KvCacheDataType.Float16, CudaAttentionKernels.Ptx)]
    [TestCase("qwen2", GgmlType.Q8_0, KvCacheDataType.Float32, CudaAttentionKernels.Ptx)]
    [TestCase("gemma2", GgmlType.F32, KvCacheDataType.Float16, CudaAttentionKernels.Ilgpu)]
    public void FusedSteps_MatchTheUnfusedSteps(string architecture, GgmlType type, KvCacheDataType kv, CudaAttentionKernels attention)
    {
        var backend = GpuTestBackend.RequireDevice();
        DeviceFusedStepTests.CompareFusedWithUnfused(backend.Accelerator, architecture, type, kv, 8, 2, 64, attention, 1e-6);
    }

    [Test]
    public async Task Stories260K_Greedy64_EqualsTheCpuEngine()
    {
        GpuTestBackend.RequireDevice();
        var sampling = SamplingOptions.Greedy with { MaxTokens = 64, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using var cpu = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        await using var gpu = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cuda });
        Assert.That(gpu.Device, Is.EqualTo(Device.Cuda));
        var expected = await cpu.CompleteAsync("Once upon a time", sampling);
        var actual = await gpu.CompleteAsync("Once upon a time", sampling);
        Assert.That(actual.TokenIds, Is.EqualTo(expected.TokenIds));
    }

    [TestCase(CudaAttentionKernels.Ptx)]
    [TestCase(CudaAttentionKernels.Ilgpu)]
    public async Task Engine_Logits_MatchTheCpuEngine(CudaAttentionKernels attention)
    {
        GpuTestBackend.RequireDevice();
        string model = DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32, headDim: 64);
        await using var cpu = await InferenceEngine.LoadAsync(model, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        await using var gpu = await InferenceEngine.LoadAsync(model, new EngineOptions { MaxNumBatchedTokens = 16 }.UseCuda(new CudaOptions { Attention = attention }));
        Assert.That(gpu.DeviceName, Does.Contain(attention == CudaAttentionKernels.Ptx ? "PTX" : "ILGPU"));
        var rng = new Random(5);
        var prompt = Enumerable.Range(0, 45).Select(_ => 1 + rng.Next(cpu.Config.VocabSize - 1)).ToArray();
        var expected = await cpu.GetLogitsAsync(prompt);
        var actual = await gpu.GetLogitsAsync(prompt);   // three chunks of 16: prefill over cached blocks
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-3));
    }

    [Test]
    public async Task Engine_ConcurrentRequests_EachEqualsItsCpuOutput()
    {
        GpuTestBackend.RequireDevice();
        string[] prompts = ["Once upon a time", "Lily and Ben", "The cat", "One day, a little girl named Sue went to the park"];
        var sampling = SamplingOptions.Greedy with { MaxTokens = 32, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using var cpu = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        await using var gpu = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cuda, MaxNumBatchedTokens = 8 });
        var expected = new List<int[]>();
        foreach (var p in prompts) expected.Add([.. (await cpu.CompleteAsync(p, sampling)).TokenIds]);
        var actual = await Task.WhenAll(prompts.Select(p => gpu.CompleteAsync(p, sampling)));
        for (int i = 0; i < prompts.Length; i++) Assert.That(actual[i].TokenIds, Is.EqualTo(expected[i]), prompts[i]);
    }
}
