using Inference.Kernels;
using Inference.Kernels.Ptx;

namespace Inference.Tests.Kernels;

/// <summary>Every catalogued kernel compiles to PTX without a GPU (what scripts/check-ptx.sh assembles).</summary>
public class KernelCatalogTests
{
    [Test]
    public void EveryKernelCompilesToPtx()
    {
        using var compiler = new IlgpuPtxCompiler();
        Assert.That(KernelCatalog.All.Select(k => k.Name), Is.Unique);
        foreach (var entry in KernelCatalog.All)
        {
            var ptx = compiler.Compile(entry, 8, 0);
            Assert.That(ptx, Does.Contain(".visible .entry"), entry.Name);
            Assert.That(ptx, Does.Contain(".target sm_"), entry.Name);
        }
    }
}
