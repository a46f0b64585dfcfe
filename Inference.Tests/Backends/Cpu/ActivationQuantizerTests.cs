using Inference.Backends.Cpu;

namespace Inference.Tests.Backends.Cpu;

public unsafe class ActivationQuantizerTests
{
    // NOTE: kernel paths travel as names because KernelPath is internal and test methods are public.
    private static IEnumerable<string> VectorPaths() =>
        Enum.GetValues<KernelPath>().Where(p => p != KernelPath.Scalar && KernelPaths.IsSupported(p)).Select(p => p.ToString());

    private static IEnumerable<string> AllPaths() =>
        Enum.GetValues<KernelPath>().Where(KernelPaths.IsSupported).Select(p => p.ToString());

    [TestCaseSource(nameof(AllPaths))]
    public void Q8_0_matches_the_reference_block_quantizer(string pathName)
    {
        var path = Enum.Parse<KernelPath>(pathName);
        var rng = new Random(11);
        const int cols = 32 * 40;
        var x = CpuTestHelpers.RandomFloats(rng, cols, 5f);
        x.AsSpan(64, 32).Clear(); // an all-zero block
        // A block with scale exactly 1 whose values sit on rounding ties (halves go to even, as ggml's x86 activation
        // quantizer's _mm256_round_ps does), and the largest floats below ties.
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

        Assert.That(q.AsSpan(96, 7).ToArray(), Is.EqualTo(new sbyte[] { 127, 80, -80, 0, -2, 0, 80 }));
        var refQ = new sbyte[32];
        for (int b = 0; b < cols / 32; b++)
        {
            float refD = ActivationQuantizer.Q8_0Block(x.AsSpan(32 * b, 32), refQ);
            Assert.That(d[b], Is.EqualTo(refD), $"scale of block {b}");
            Assert.That(q.AsSpan(32 * b, 32).ToArray(), Is.EqualTo(refQ), $"quants of block {b}");
            int s = 0;
            foreach (var v in refQ) s += v;
            Assert.That(sums[b], Is.EqualTo(-8 * s), $"offset term of block {b}");
        }
    }

    [TestCaseSource(nameof(AllPaths))]
    public void Q8_0_rounds_halves_to_even_and_the_scale_to_f16(string pathName)
    {
        // ggml's x86 activation quantizer: id = 127 / max|x| (exactly 1 here), _mm256_round_ps to nearest even, and the
        // scale stored as f16. The weight quantizer (quantize_row_q8_0_ref) would give 3, 4, -3, -4 for the ties.
        var path = Enum.Parse<KernelPath>(pathName);
        var x = new float[64];
        for (int j = 0; j < 32; j++) x[j] = (j % 7) - 3.25f;
        x[0] = 127f;
        x[1] = 2.5f;
        x[2] = 3.5f;
        x[3] = -2.5f;
        x[4] = -3.5f;
        var rng = new Random(3);
        for (int j = 32; j < 64; j++) x[j] = (float)(rng.NextDouble() - 0.5) * 0.3f;
        x[40] = 0.1734567f; // the block maximum; 0.1734567 / 127 is not an f16 value
        var q = new sbyte[64];
        var d = new float[2];
        var sums = new int[2];
        d.AsSpan().Fill(float.NaN);
        fixed (float* px = x)
        fixed (sbyte* pq = q)
        fixed (float* pd = d)
        fixed (int* ps = sums)
            ActivationQuantizer.RowQ8_0(px, 64, 1, pq, pd, ps, path);

        Assert.That(q[..5], Is.EqualTo(new sbyte[] { 127, 2, 4, -2, -4 }));
        Assert.That(d[0], Is.EqualTo(1f));
        float amax = 0;
        for (int j = 32; j < 64; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        Assert.That(d[1], Is.EqualTo((float)(Half)(amax / 127)));
        Assert.That(d[1], Is.Not.EqualTo(amax / 127), "the scale is rounded");
        Assert.That(q[40], Is.EqualTo(127));
    }

    [TestCase(1f / 3, 0.333251953125)]                // 0x3555
    [TestCase(0.1f, 0.0999755859375)]                 // 0x2E66
    [TestCase(1f + 1f / 2048, 1.0)]                   // a tie rounds to the even mantissa
    [TestCase(1f + 3f / 2048, 1.001953125)]           // a tie rounds to the even mantissa (up)
    [TestCase(1e-6f, 17 * 5.9604644775390625e-8)]    // subnormal f16: multiples of 2^-24
    [TestCase(-65519f, -65504.0)]                     // largest finite f16
    public void RoundToHalf_rounds_to_the_nearest_f16(float value, double expected) =>
        Assert.That(ActivationQuantizer.RoundToHalf(value), Is.EqualTo((float)expected));

    /// <summary>The rounding on the float's bits (<see cref="ActivationQuantizer.RoundToHalf"/> = <see cref="Fp16.Round"/>,
    /// and <see cref="Fp16.FromFloat"/>) against the runtime's <see cref="Half"/> conversion: every sign and exponent with
    /// the low 13 mantissa bits at and around the tie (and random upper bits), then random floats.</summary>
    [Test]
    public void RoundToHalf_matches_the_runtime_conversion_at_every_exponent()
    {
        var rng = new Random(29);
        uint[] lows = [0, 1, 0xFFE, 0xFFF, 0x1000, 0x1001, 0x1FFF];
        int mismatches = 0;
        string first = "";
        void Check(uint bits)
        {
            float v = BitConverter.UInt32BitsToSingle(bits);
            float expected = (float)(Half)v, actual = ActivationQuantizer.RoundToHalf(v);
            bool same = float.IsNaN(expected) ? float.IsNaN(actual) : BitConverter.SingleToUInt32Bits(actual) == BitConverter.SingleToUInt32Bits(expected);
            if (!same && mismatches++ == 0) first = $"0x{bits:X8}: {actual} instead of {expected}";
            ushort expectedBits = BitConverter.HalfToUInt16Bits((Half)v), actualBits = Fp16.FromFloat(v);
            bool sameBits = float.IsNaN(expected) ? (actualBits & 0x7C00) == 0x7C00 && (actualBits & 0x3FF) != 0 : actualBits == expectedBits;
            if (!sameBits && mismatches++ == 0) first = $"0x{bits:X8}: f16 bits 0x{actualBits:X4} instead of 0x{expectedBits:X4}";
        }
        for (uint top = 0; top < 512; top++)          // sign and exponent
        for (int m = 0; m < 64; m++)
        {
            uint upper = m < 2 ? (m == 0 ? 0u : 0x3FFu) : (uint)rng.Next(1 << 10);   // the ten mantissa bits kept
            foreach (uint low in lows) Check((top << 23) | (upper << 13) | low);
        }
        for (int i = 0; i < 1_000_000; i++) Check((uint)rng.NextInt64(1L << 32));
        Assert.That(mismatches, Is.Zero, first);
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
