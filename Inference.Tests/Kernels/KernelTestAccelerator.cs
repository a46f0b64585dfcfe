using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;

namespace Inference.Tests.Kernels;

/// <summary>One ILGPU context with a CPU accelerator shared by the kernel tests (creating one costs ~0.5 s).</summary>
internal static class KernelTestAccelerator
{
    private static readonly Lazy<(Context Context, Accelerator Accelerator)> Instance = new(() =>
    {
        // NOTE: a small simulated device (16-thread groups): the CPU accelerator runs one OS thread per group thread
        // and every barrier costs thread switches, so GPU-sized 64-thread groups make the tests several times slower.
        var context = Context.Create(b => b.CPU(new CPUDevice(32, 2, 1)).EnableAlgorithms());
        return (context, context.CreateCPUAccelerator(0));
    });

    public static Accelerator Cpu => Instance.Value.Accelerator;
}
