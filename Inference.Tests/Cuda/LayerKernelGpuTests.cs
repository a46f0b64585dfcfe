using Inference.Cuda.Diagnostics;

namespace Inference.Tests.Cuda;

/// <summary>The ILGPU layer kernels on a CUDA device against the references. Skipped where no CUDA device exists.</summary>
[Category("Gpu")]
public class LayerKernelGpuTests
{
    private static IEnumerable<string> Names => LayerSelfCheck.Names;

    [TestCaseSource(nameof(Names))]
    public void IlgpuMatchesReference(string name)
    {
        var backend = GpuTestBackend.RequireDevice();
        var r = LayerSelfCheck.Run(backend, name);
        Assert.That(r.Passed, Is.True, $"{r.Case}: max abs error {r.MaxAbsError}; {r.Detail}");
    }
}

/// <summary>The GPU layer checks themselves, on the CPU accelerator: explicit only, they take minutes there.</summary>
public class LayerSelfCheckOnCpuTests
{
    private static IEnumerable<string> Names => LayerSelfCheck.Names;

    [Explicit("GPU-sized inputs; slow on the CPU accelerator")]
    [TestCaseSource(nameof(Names))]
    public void ChecksPassOnTheCpuAccelerator(string name)
    {
        var r = LayerSelfCheck.Run(Inference.Tests.Kernels.KernelTestAccelerator.Cpu, name);
        Assert.That(r.Passed, Is.True, $"{r.Case}: max abs error {r.MaxAbsError}; {r.Detail}");
    }
}
