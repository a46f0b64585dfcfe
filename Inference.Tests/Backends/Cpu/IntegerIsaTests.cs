using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Backends.Cpu;

namespace Inference.Tests.Backends.Cpu;

public class IntegerIsaTests
{
    /// <summary><c>vpdpbusd</c> by its definition: each int lane plus its four unsigned·signed byte products, wrapping.</summary>
    private static int[] Vpdpbusd(int[] acc, byte[] u, sbyte[] s)
    {
        var r = new int[8];
        for (int lane = 0; lane < 8; lane++)
        {
            int sum = acc[lane];
            for (int k = 0; k < 4; k++) sum = unchecked(sum + u[4 * lane + k] * s[4 * lane + k]);
            r[lane] = sum;
        }
        return r;
    }

    [Test]
    public void Emulated_vpdpbusd_is_exact_for_any_bytes()
    {
        if (!Avx2.IsSupported) Assert.Ignore("needs AVX2");
        var rng = new Random(41);
        for (int trial = 0; trial < 20_000; trial++)
        {
            var u = new byte[32];
            var s = new sbyte[32];
            var acc = new int[8];
            rng.NextBytes(u);
            for (int i = 0; i < 32; i++) s[i] = (sbyte)rng.Next(-128, 128);
            for (int i = 0; i < 8; i++) acc[i] = rng.Next(int.MinValue, int.MaxValue);
            // Every tenth trial at the extremes, where vpmaddubsw alone would saturate.
            if (trial % 10 == 0)
                for (int i = 0; i < 32; i++) (u[i], s[i]) = (255, (sbyte)(rng.Next(2) == 0 ? -128 : 127));
            var expected = Vpdpbusd(acc, u, s);
            var emulated = EmulatedVnni.Dot(Vector256.Create(acc), Vector256.Create(u), Vector256.Create(s));
            Assert.That(Enumerable.Range(0, 8).Select(i => emulated.GetElement(i)).ToArray(), Is.EqualTo(expected), $"trial {trial}");
            if (AvxVnni.IsSupported)
            {
                var real = WithVnni.Dot(Vector256.Create(acc), Vector256.Create(u), Vector256.Create(s));
                Assert.That(real, Is.EqualTo(emulated), $"trial {trial}: the instruction itself");
            }
        }
    }

    [Test]
    public void Kernel_paths_choose_their_integer_steps()
    {
        Assert.That(KernelPaths.Steps(KernelPath.Scalar), Is.EqualTo(IntegerSteps.Madd));
        Assert.That(KernelPaths.Steps(KernelPath.Vector256), Is.EqualTo(IntegerSteps.Madd));
        Assert.That(KernelPaths.Steps(KernelPath.Vector256VnniEmulated), Is.EqualTo(IntegerSteps.EmulatedVnni));
        Assert.That(KernelPaths.Steps(KernelPath.Vector256Vnni), Is.EqualTo(AvxVnni.IsSupported ? IntegerSteps.Vnni : IntegerSteps.Madd));
        Assert.That(KernelPaths.Best, Is.Not.EqualTo(KernelPath.Vector256VnniEmulated), "the emulation is for tests");
    }
}
