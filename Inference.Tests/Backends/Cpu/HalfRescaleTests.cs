using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Tests.Backends.Cpu;

/// <summary>
/// F16 weights with subnormal halves are stored times a power of two (<see cref="HalfRescale"/>,
/// <see cref="WeightMatrix.HalfShift"/>) so that no kernel hands a subnormal float to the FPU; every product must keep the
/// bits of the weights as stored in the file.
/// </summary>
public unsafe class HalfRescaleTests
{
    /// <summary>Gaussian weights of σ <paramref name="sigma"/> as halves (trained weights' shape: a few are subnormal).</summary>
    private static ushort[] GaussianHalves(Random rng, int count, double sigma)
    {
        var h = new ushort[count];
        for (int i = 0; i < count; i++)
        {
            double g = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()) * sigma;
            h[i] = BitConverter.HalfToUInt16Bits((Half)g);
        }
        return h;
    }

    private static int Choose(ushort[] h) => Choose(h, out _);

    private static int Choose(ushort[] h, out bool finite)
    {
        fixed (ushort* p = h) return HalfRescale.Choose(p, h.Length, out finite);
    }

    [Test]
    public void The_shift_lifts_the_smallest_subnormal_to_a_normal_half([Values(1, 3, 512, 1023)] int smallest, [Values(37, 64)] int count)
    {
        var rng = new Random(smallest + count);
        var h = GaussianHalves(rng, count, 0.5);
        for (int i = 0; i < count; i++) if ((h[i] & 0x7C00) == 0) h[i] = 0x3C00;   // only the subnormals placed below
        h[5] = (ushort)(0x8000 | smallest);                     // a negative subnormal
        h[count - 1] = (ushort)Math.Min(1023, smallest + 7);    // one in the scalar tail
        h[7] = 0x0000;
        h[8] = 0x8000;                                          // zeros of both signs stay zeros
        int expected = 10 - System.Numerics.BitOperations.Log2((uint)smallest);
        Assert.That(Choose(h), Is.EqualTo(expected));
        var shifted = (ushort[])h.Clone();
        fixed (ushort* p = shifted) HalfRescale.Apply(p, count, expected);
        for (int i = 0; i < count; i++)
        {
            float before = Fp16.ToFloat(h[i]), after = Fp16.ToFloat(shifted[i]);
            Assert.That(after, Is.EqualTo(MathF.ScaleB(before, expected)), $"value {i} times 2^{expected}");
            Assert.That((shifted[i] & 0x7C00) != 0 || (shifted[i] & 0x3FF) == 0, $"value {i} normal or zero");
        }
        Assert.That(shifted[8], Is.EqualTo((ushort)0x8000), "negative zero kept");
    }

    [Test]
    public void No_shift_without_subnormals_with_infinities_or_when_the_range_is_too_wide()
    {
        var rng = new Random(5);
        var normal = GaussianHalves(rng, 100, 1.0);
        for (int i = 0; i < normal.Length; i++) if ((normal[i] & 0x7C00) == 0) normal[i] = 0x3C00;
        normal[3] = 0;
        Assert.That(Choose(normal), Is.EqualTo(0), "nothing to lift");

        var withInf = (ushort[])normal.Clone();
        withInf[10] = 0x0001;
        Assert.That(Choose(withInf), Is.EqualTo(10), "a subnormal of mantissa 1 needs 10");
        Assert.That(Choose(withInf, out bool finite), Is.EqualTo(10), "a subnormal of mantissa 1 needs 10");
        Assert.That(finite, Is.True);
        withInf[50] = 0x7C00;
        Assert.That(Choose(withInf, out finite), Is.EqualTo(0), "an infinity: left as stored");
        Assert.That(finite, Is.False, "an infinity");
        withInf[50] = 0x7E00;
        Assert.That(Choose(withInf), Is.EqualTo(0), "a NaN: left as stored");
        withInf[^1] = 0xFC00;   // in the scalar tail as well
        withInf[50] = 0x3C00;
        Assert.That(Choose(withInf, out finite), Is.EqualTo(0), "a tail infinity: left as stored");
        Assert.That(finite, Is.False, "an infinity in the tail");

        var wide = (ushort[])normal.Clone();
        wide[10] = 0x0001;
        wide[20] = BitConverter.HalfToUInt16Bits((Half)100f);   // 100 · 2^10 is no half
        Assert.That(Choose(wide), Is.EqualTo(0));
        wide[20] = BitConverter.HalfToUInt16Bits((Half)60f);    // 60 · 2^10 is
        Assert.That(Choose(wide), Is.EqualTo(10));
        Assert.Throws<ArgumentOutOfRangeException>(() => { fixed (ushort* p = wide) HalfRescale.Apply(p, wide.Length, 0); });
    }

    private static IEnumerable<string> Paths() => Enum.GetValues<KernelPath>().Where(KernelPaths.IsSupported).Select(p => p.ToString());

    /// <summary>
    /// Prepared (rescaled, in an arena or a copy of its own) and as stored, at every kernel path and batch size, the
    /// products have the same bits; batch rows have the batch-1 bits. 37 rows (8-row tiles, a 4-row tile and a row), 72
    /// columns (a scalar tail on the 16-column steps), activations up to 2^20 (above the unscaled re-bias limit of 2^16,
    /// below the rescaled one) and 2^27 (above both).
    /// </summary>
    [Test]
    public void Rescaled_weights_give_the_bits_of_the_stored_ones(
        [ValueSource(nameof(Paths))] string pathName, [Values(1, 2, 7)] int batch, [Values(1f, 1_000_000f, 1.5e8f)] float activationScale,
        [Values(false, true)] bool arena)
    {
        const int rows = 37, cols = 72;
        var path = Enum.Parse<KernelPath>(pathName);
        var rng = new Random(batch + (int)path * 7 + (arena ? 100 : 0));
        var halves = GaussianHalves(rng, rows * cols, 0.02);
        halves[3 * cols + 5] = 0x0001;   // the smallest subnormal: a shift of 10
        halves[36 * cols + 70] = 0x8203; // one in the last row's tail
        var bytes = new byte[halves.Length * 2];
        Buffer.BlockCopy(halves, 0, bytes, 0, bytes.Length);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        x[cols / 2] *= activationScale;
        var stored = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
        var rescaled = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
        var single = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
        using var pool = new WorkerPool(2);
        fixed (byte* pw = bytes)
        {
            var w = new WeightMatrix(GgmlType.F16, pw, rows, cols);
            var prepared = MatMul.PrepareInto(w, arena ? new WeightArena() : null);
            Assert.That(prepared.HalfShift, Is.EqualTo(10));
            Assert.That(prepared.FiniteHalves, Is.True);
            Assert.That(prepared.Data != pw, "rescaled in a copy, the stored rows untouched");
            Assert.That(new ReadOnlySpan<byte>(pw, bytes.Length).SequenceEqual(MemoryMarshalBytes(halves)), "stored rows unchanged");
            MatMul.Multiply(w, x, stored, batch, pool, path);
            MatMul.Multiply(prepared, x, rescaled, batch, pool, path);
            for (int b = 0; b < batch; b++)
                MatMul.Multiply(prepared, x.AsSpan(b * cols, cols), single.AsSpan(b * rows, rows), 1, pool, path);
        }
        Assert.That(stored, Has.None.NaN);
        Assert.That(rescaled, Is.EqualTo(stored), "rescaled against stored");
        Assert.That(single, Is.EqualTo(rescaled), "batch rows one at a time");
    }

    private static byte[] MemoryMarshalBytes(ushort[] h)
    {
        var b = new byte[h.Length * 2];
        Buffer.BlockCopy(h, 0, b, 0, b.Length);
        return b;
    }

    /// <summary>q/k/v products of rescaled matrices share their activations only when their shifts agree; either way the
    /// bits are each matrix's own product's.</summary>
    [Test]
    public void Shared_products_of_rescaled_matrices_give_each_matrix_bits([Values(1, 5)] int batch, [Values(false, true)] bool sameShift)
    {
        const int cols = 64;
        int[] rows = [24, 8, 8];
        var rng = new Random(batch + (sameShift ? 10 : 0));
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        using var pool = new WorkerPool(2);
        var buffers = new byte[3][];
        for (int m = 0; m < 3; m++)
        {
            var h = GaussianHalves(rng, rows[m] * cols, 0.02);
            for (int i = 0; i < h.Length; i++) if ((h[i] & 0x7C00) == 0) h[i] = 0x2000;   // no subnormal but the one placed next
            h[m] = (ushort)(sameShift || m == 0 ? 0x0001 : 0x0200);   // shifts 10, or 10 / 1 / 1
            buffers[m] = MemoryMarshalBytes(h);
        }
        var together = rows.Select(r => Enumerable.Repeat(float.NaN, batch * r).ToArray()).ToArray();
        var separate = rows.Select(r => Enumerable.Repeat(float.NaN, batch * r).ToArray()).ToArray();
        fixed (byte* p0 = buffers[0])
        fixed (byte* p1 = buffers[1])
        fixed (byte* p2 = buffers[2])
        {
            var arena = new WeightArena();
            var w = new[] { MatMul.PrepareInto(new WeightMatrix(GgmlType.F16, p0, rows[0], cols), arena),
                            MatMul.PrepareInto(new WeightMatrix(GgmlType.F16, p1, rows[1], cols), arena),
                            MatMul.PrepareInto(new WeightMatrix(GgmlType.F16, p2, rows[2], cols), arena) };
            Assert.That(w.Select(m => m.HalfShift), Is.EqualTo(sameShift ? new[] { 10, 10, 10 } : new[] { 10, 1, 1 }));
            MatMul.MultiplyShared(x, batch, pool, w[0], together[0], w[1], together[1], w[2], together[2]);
            for (int m = 0; m < 3; m++) MatMul.Multiply(w[m], x, separate[m], batch, pool);
        }
        for (int m = 0; m < 3; m++)
        {
            Assert.That(separate[m], Has.None.NaN);
            Assert.That(together[m], Is.EqualTo(separate[m]), $"matrix {m}");
        }
    }
}
