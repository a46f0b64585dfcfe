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
    public void MixedBatches_MatchTheCpuPath(int heads, int kvHeads, int blockSize, KvCacheDataType kv, CudaAttentionKernels attention)
    {
        var backend = GpuTestBackend.RequireDevice();
        var errors = DeviceForwardExecutorTests.RunScenario(backend.Accelerator, DeviceForwardExecutorTests.Model(heads, kvHeads, GgmlType.F32, headDim: 64),
            blockSize, kv, attention);
        TestContext.Out.WriteLine($"{heads}/{kvHeads} block {blockSize} {kv} {attention}: max relative L2 {errors.Max():E2}");
        Assert.That(errors.Max(), Is.LessThan(1e-3));
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
}
