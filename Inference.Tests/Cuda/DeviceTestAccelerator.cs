using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;

namespace Inference.Tests.Cuda;

/// <summary>The ILGPU CPU accelerator the device executor's tests run on (one per test run).</summary>
internal static class DeviceTestAccelerator
{
    private static readonly Lazy<(Context Context, Accelerator Accelerator)> Instance = new(() =>
    {
        // NOTE: groups of up to 8 threads: enough for 8 query heads per KV head in the prefill attention kernel, few
        // enough that the CPU accelerator's barriers stay cheap (the layer kernels run one-thread groups here).
        var context = Context.Create(b => b.CPU(new CPUDevice(4, 2, 1)).EnableAlgorithms());
        return (context, context.CreateCPUAccelerator(0, CPUAcceleratorMode.Parallel));
    });

    public static Accelerator Cpu => Instance.Value.Accelerator;
}
