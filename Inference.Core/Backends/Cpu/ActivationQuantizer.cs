using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Quantizes float activation rows for the integer kernels, into a kernel-friendly split layout rather than ggml block
/// bytes: quants, one float scale per block, and per-block quant sums.
/// </summary>
/// <remarks>
/// Blocks of one row are <c>stride</c> blocks apart so that a batch can be stored block-interleaved,
/// <c>[block, batch, values]</c>: the kernels then find the same block of consecutive batch rows at fixed small offsets.
/// </remarks>
/// <remarks>
/// NOTE: the scales stay f32 (ggml rounds the Q8_0 scale to f16): the kernels never need the byte format, and the
/// unrounded scale removes one error term. Quants match the reference block quantizers exactly, ties included
/// (Q8_0 rounds halves away from zero, Q8_K to even).
/// </remarks>
internal static unsafe class ActivationQuantizer
{
    // NOTE: the vector paths use AVX min/max rather than Vector256.Max, whose NaN and −0 handling costs extra
    // instructions; activations are finite.

    /// <summary>Q8_0: per 32 values d = max|x| / 127, q = round(x / d), and <paramref name="offsets"/> = −8·Σq per block
    /// (the term Q4_0's code offset contributes to a block dot product).</summary>
    public static void RowQ8_0(float* x, int cols, int stride, sbyte* q, float* d, int* offsets, KernelPath path)
    {
        int nb = cols / 32;
        if (path == KernelPath.Scalar)
        {
            for (int b = 0; b < nb; b++)
            {
                var qs = new Span<sbyte>(q + 32L * b * stride, 32);
                d[(long)b * stride] = Quantize.Q8_0Block(new ReadOnlySpan<float>(x + 32 * b, 32), qs);
                int s = 0;
                for (int j = 0; j < 32; j++) s += qs[j];
                offsets[(long)b * stride] = -8 * s;
            }
            return;
        }
        for (int b = 0; b < nb; b++)
        {
            float* xb = x + 32 * b;
            var v0 = Vector256.Load(xb);
            var v1 = Vector256.Load(xb + 8);
            var v2 = Vector256.Load(xb + 16);
            var v3 = Vector256.Load(xb + 24);
            var m = Avx.Max(Avx.Max(Vector256.Abs(v0), Vector256.Abs(v1)), Avx.Max(Vector256.Abs(v2), Vector256.Abs(v3)));
            float amax = HorizontalMax(m);
            float scale = amax / 127;
            var id = Vector256.Create(scale != 0 ? 1.0f / scale : 0.0f);
            var i0 = RoundHalfAwayFromZero(v0 * id);
            var i1 = RoundHalfAwayFromZero(v1 * id);
            var i2 = RoundHalfAwayFromZero(v2 * id);
            var i3 = RoundHalfAwayFromZero(v3 * id);
            Vector256.Narrow(Vector256.Narrow(i0, i1), Vector256.Narrow(i2, i3)).Store(q + 32L * b * stride);
            d[(long)b * stride] = scale;
            offsets[(long)b * stride] = -8 * Vector256.Sum((i0 + i1) + (i2 + i3));
        }
    }

    /// <summary>
    /// Q8_K: per 256 values the value m of largest magnitude gives d = m / −127, q = min(127, round(x / d)),
    /// <paramref name="bsums"/> = Σq per 16 values.
    /// </summary>
    public static void RowQ8_K(float* x, int cols, int stride, sbyte* q, float* d, short* bsums, KernelPath path)
    {
        int nb = cols / 256;
        if (path == KernelPath.Scalar)
        {
            for (int b = 0; b < nb; b++)
                d[(long)b * stride] = Quantize.Q8_KBlock(new ReadOnlySpan<float>(x + 256 * b, 256), new Span<sbyte>(q + 256L * b * stride, 256),
                    new Span<short>(bsums + 16L * b * stride, 16));
            return;
        }
        for (int b = 0; b < nb; b++)
        {
            float* xb = x + 256 * b;
            sbyte* qb = q + 256L * b * stride;
            short* sb = bsums + 16L * b * stride;
            var vmax = Vector256.Load(xb);
            var vmin = vmax;
            for (int j = 8; j < 256; j += 8)
            {
                var v = Vector256.Load(xb + j);
                vmax = Avx.Max(vmax, v);
                vmin = Avx.Min(vmin, v);
            }
            float hi = HorizontalMax(vmax), lo = -HorizontalMax(-vmin);
            float max = hi >= -lo ? hi : lo;
            if (max == 0)
            {
                new Span<sbyte>(qb, 256).Clear();
                new Span<short>(sb, 16).Clear();
                d[(long)b * stride] = 0;
                continue;
            }
            float iscale = -127f / max;
            var vs = Vector256.Create(iscale);
            var limit = Vector256.Create(127);
            for (int j = 0; j < 256; j += 32)
            {
                var i0 = Vector256.Min(Avx.ConvertToVector256Int32(Vector256.Load(xb + j) * vs), limit);
                var i1 = Vector256.Min(Avx.ConvertToVector256Int32(Vector256.Load(xb + j + 8) * vs), limit);
                var i2 = Vector256.Min(Avx.ConvertToVector256Int32(Vector256.Load(xb + j + 16) * vs), limit);
                var i3 = Vector256.Min(Avx.ConvertToVector256Int32(Vector256.Load(xb + j + 24) * vs), limit);
                Vector256.Narrow(Vector256.Narrow(i0, i1), Vector256.Narrow(i2, i3)).Store(qb + j);
                sb[j / 16] = (short)Vector256.Sum(i0 + i1);
                sb[j / 16 + 1] = (short)Vector256.Sum(i2 + i3);
            }
            d[(long)b * stride] = 1 / iscale;
        }
    }

    /// <summary>
    /// round() as C's <c>roundf</c>: truncating x + copysign(0.49999997, x) is exact for every float (the largest float
    /// below one half never rounds a non-tie up, and rounds an exact tie up through the addition's own rounding).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> RoundHalfAwayFromZero(Vector256<float> p)
    {
        var half = (p.AsUInt32() & Vector256.Create(0x80000000u)) | Vector256.Create(0x3EFFFFFFu);
        return Avx.ConvertToVector256Int32WithTruncation(p + half.AsSingle());
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float HorizontalMax(Vector256<float> v)
    {
        var m = Sse.Max(v.GetLower(), v.GetUpper());
        m = Sse.Max(m, Vector128.Shuffle(m, Vector128.Create(2, 3, 0, 1)));
        m = Sse.Max(m, Vector128.Shuffle(m, Vector128.Create(1, 0, 3, 2)));
        return m.ToScalar();
    }
}
