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

    /// <summary>
    /// Kernels that read int8 quants convert them as signed: ILGPU 1.5.3 compiles <c>(sbyte)(byte)x</c> to an unsigned
    /// byte conversion in PTX (seen on an H100, where the Q8_0 row kernel turned codes -128..-1 into 128..255), a bug the
    /// CPU accelerator does not reproduce. The weight kernels read 16-bit words (no byte conversion at all); the Q8_0 K/V
    /// attention kernels load bytes zero-extended (<c>cvt.s32.u8</c>, right for the f16 scale's bytes) and sign-extend
    /// the codes in 32-bit integers (<c>xor 128</c>, <c>sub 128</c>) before converting them to float.
    /// </summary>
    [Test]
    public void QuantKernelsHaveNoUnsignedByteToFloatConversion()
    {
        using var compiler = new IlgpuPtxCompiler();
        var quantKernels = KernelCatalog.All.Where(k => k.Name.Contains("q8_0", StringComparison.OrdinalIgnoreCase)).ToList();
        Assert.That(quantKernels, Is.Not.Empty);
        foreach (var entry in quantKernels)
        {
            var ptx = compiler.Compile(entry, 9, 0);
            Assert.That(ptx, Does.Not.Contain("f32.u8"), entry.Name);
            if (entry.Name.StartsWith("paged_", StringComparison.Ordinal))
                Assert.That(ptx, Does.Match(@"xor\.b32\s+(%r\d+), %r\d+, 128;\s+sub\.s32\s+%r\d+, \1, 128;"), entry.Name);
            else if (!entry.Name.StartsWith("kv_write", StringComparison.Ordinal))
                Assert.That(ptx, Does.Not.Contain("s32.u8"), entry.Name);
        }
    }
}
