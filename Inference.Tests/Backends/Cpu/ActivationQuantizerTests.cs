using Inference.Backends.Cpu;

namespace Inference.Tests.Backends.Cpu;

public unsafe class ActivationQuantizerTests
{
    // NOTE: kernel paths travel as names because KernelPath is internal and test methods are public.
    private static IEnumerable<string> VectorPaths() =>
        Enum.GetValues<KernelPath>().Where(p => p != KernelPath.Scalar && KernelPaths.IsSupported(p)).Select(p => p.ToString());

    [TestCaseSource(nameof(VectorPaths))]
    public void Vector_Q8_0_matches_the_reference_block_quantizer(string pathName)
    {
        var path = Enum.Parse<KernelPath>(pathName);
        var rng = new Random(11);
        const int cols = 32 * 40;
        var x = CpuTestHelpers.RandomFloats(rng, cols, 5f);
        x.AsSpan(64, 32).Clear(); // an all-zero block
        // A block with scale exactly 1 whose values sit on rounding ties (halves go away from zero, as roundf does),
        // and the largest floats below ties.
        x.AsSpan(96, 32).Clear();
        x[96] = 127f;
        x[97] = 80.5f;
        x[98] = -80.5f;
        x[99] = 0.5f;
        x[100] = -2.5f;
        x[101] = MathF.BitDecrement(0.5f);
        x[102] = MathF.BitDecrement(80.5f);
        var q = new sbyte[cols];
        var d = new float[cols / 32];
        var sums = new int[cols / 32];
        q.AsSpan().Fill(99);
        d.AsSpan().Fill(float.NaN);
        fixed (float* px = x)
        fixed (sbyte* pq = q)
        fixed (float* pd = d)
        fixed (int* ps = sums)
            ActivationQuantizer.RowQ8_0(px, cols, 1, pq, pd, ps, path);

        Assert.That(q.AsSpan(96, 7).ToArray(), Is.EqualTo(new sbyte[] { 127, 81, -81, 1, -3, 0, 80 }));
        var refQ = new sbyte[32];
        for (int b = 0; b < cols / 32; b++)
        {
            float refD = Quantize.Q8_0Block(x.AsSpan(32 * b, 32), refQ);
            Assert.That(d[b], Is.EqualTo(refD), $"scale of block {b}");
            Assert.That(q.AsSpan(32 * b, 32).ToArray(), Is.EqualTo(refQ), $"quants of block {b}");
            int s = 0;
            foreach (var v in refQ) s += v;
            Assert.That(sums[b], Is.EqualTo(-8 * s), $"offset term of block {b}");
        }
    }

    [TestCaseSource(nameof(VectorPaths))]
    public void Vector_Q8_K_matches_the_reference_block_quantizer(string pathName)
    {
        var path = Enum.Parse<KernelPath>(pathName);
        var rng = new Random(12);
        const int cols = 256 * 4;
        var x = CpuTestHelpers.RandomFloats(rng, cols, 5f);
        x[600] = -40f; // negative extreme in block 2
        x.AsSpan(768, 256).Clear(); // block 3 all zero
        var q = new sbyte[cols];
        var d = new float[cols / 256];
        var bsums = new short[cols / 16];
        q.AsSpan().Fill(99);
        bsums.AsSpan().Fill(-1);
        fixed (float* px = x)
        fixed (sbyte* pq = q)
        fixed (float* pd = d)
        fixed (short* pb = bsums)
            ActivationQuantizer.RowQ8_K(px, cols, 1, pq, pd, pb, path);

        var refQ = new sbyte[256];
        var refB = new short[16];
        for (int b = 0; b < cols / 256; b++)
        {
            float refD = Quantize.Q8_KBlock(x.AsSpan(256 * b, 256), refQ, refB);
            Assert.That(d[b], Is.EqualTo(refD), $"scale of block {b}");
            Assert.That(q.AsSpan(256 * b, 256).ToArray(), Is.EqualTo(refQ), $"quants of block {b}");
            Assert.That(bsums.AsSpan(16 * b, 16).ToArray(), Is.EqualTo(refB), $"sums of block {b}");
        }
    }
}
