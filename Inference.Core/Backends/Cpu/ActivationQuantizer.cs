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
/// <para/>
/// NOTE: Q8_0 follows ggml's x86 <c>quantize_row_q8_0</c> and <c>quantize_mat_q8_0</c> (the activation quantizers
/// llama.cpp's CPU backend runs before <c>vec_dot_q8_0_q8_0</c>, the llamafile <c>tinyBLAS_Q0</c> tiles and the repacked
/// Q4_0 kernels) to the bit: id = 127 / max|x|, q = round(x·id) with halves to even, and the scale d = max|x| / 127
/// rounded to f16 because ggml stores it in the block's f16 field. The rounding matters for parity, not accuracy: an
/// unrounded scale moves each product by up to 2^-11 relative, which flips rounding decisions of the next layer's
/// quantization, and that grew to 1.7e-2 relative L2 in the logits of a two-layer Q8_0 model (0 with the rounding and
/// <see cref="Q8_0Kernel"/>'s summation order). Q8_K follows <c>quantize_row_q8_K_ref</c>; Q4_K_M models quantized by
/// llama.cpp agree with it to 3e-7 in the logits.
/// </remarks>
internal static unsafe class ActivationQuantizer
{
    // NOTE: the vector paths use AVX min/max rather than Vector256.Max, whose NaN and −0 handling costs extra
    // instructions; activations are finite.

    /// <summary>
    /// Q8_0 as <see cref="Q8_0Block"/> for each 32 values, the f16-rounded scales into <paramref name="d"/> (as floats)
    /// and <paramref name="offsets"/> = −8·Σq per block (the term Q4_0's code offset contributes to a block dot product).
    /// </summary>
    public static void RowQ8_0(float* x, int cols, int stride, sbyte* q, float* d, int* offsets, KernelPath path) =>
        RowQ8_0(x, cols, stride, q, d, offsets, path, q8_1: false);

    /// <summary>
    /// Q8_1 (ggml's x86 <c>quantize_row_q8_1</c>, the activations of <c>vec_dot_q4_1_q8_1</c> and <c>vec_dot_q5_1_q8_1</c>):
    /// the quants and f16-rounded scales of <see cref="RowQ8_0(float*, int, int, sbyte*, float*, int*, KernelPath)"/>, and
    /// per block s = (max|x| / 127)·Σq rounded to f16 (the unrounded scale, as ggml computes it), stored as float bits in
    /// <paramref name="sums"/>.
    /// </summary>
    public static void RowQ8_1(float* x, int cols, int stride, sbyte* q, float* d, int* sums, KernelPath path) =>
        RowQ8_0(x, cols, stride, q, d, sums, path, q8_1: true);

    private static void RowQ8_0(float* x, int cols, int stride, sbyte* q, float* d, int* offsets, KernelPath path, bool q8_1)
    {
        int nb = cols / 32;
        if (path == KernelPath.Scalar)
        {
            for (int b = 0; b < nb; b++)
            {
                var qs = new Span<sbyte>(q + 32L * b * stride, 32);
                var xb = new ReadOnlySpan<float>(x + 32 * b, 32);
                d[(long)b * stride] = Q8_0Block(xb, qs);
                int s = 0;
                for (int j = 0; j < 32; j++) s += qs[j];
                offsets[(long)b * stride] = q8_1 ? BitConverter.SingleToInt32Bits(Q8_1Sum(xb, s)) : -8 * s;
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
            var id = Vector256.Create(amax != 0 ? 127f / amax : 0.0f);
            var i0 = Avx.ConvertToVector256Int32(v0 * id);
            var i1 = Avx.ConvertToVector256Int32(v1 * id);
            var i2 = Avx.ConvertToVector256Int32(v2 * id);
            var i3 = Avx.ConvertToVector256Int32(v3 * id);
            Vector256.Narrow(Vector256.Narrow(i0, i1), Vector256.Narrow(i2, i3)).Store(q + 32L * b * stride);
            d[(long)b * stride] = RoundToHalf(amax / 127);
            int sum = Vector256.Sum((i0 + i1) + (i2 + i3));
            offsets[(long)b * stride] = q8_1 ? BitConverter.SingleToInt32Bits(RoundToHalf(amax / 127 * sum)) : -8 * sum;
        }
    }

    /// <summary>The s of a Q8_1 activation block whose quants sum to <paramref name="sum"/>: (max|x| / 127)·Σq rounded to f16.</summary>
    public static float Q8_1Sum(ReadOnlySpan<float> x, int sum)
    {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        return RoundToHalf(amax / 127 * sum);
    }

    /// <summary>
    /// The reference Q8_0 activation block: with m = max|x|, id = 127 / m (0 when m = 0), q = round(x·id) (halves to
    /// even); returns d = m / 127 rounded to the nearest f16 (ties to even), as a float.
    /// </summary>
    /// <remarks>Differs from the weight quantizer <see cref="Quantize.Q8_0Block"/> (ggml's <c>quantize_row_q8_0_ref</c>:
    /// id = 1 / d, halves away from zero) exactly as ggml's x86 activation path differs from its reference.</remarks>
    public static float Q8_0Block(ReadOnlySpan<float> x, Span<sbyte> q)
    {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        float id = amax != 0 ? 127f / amax : 0.0f;
        for (int j = 0; j < 32; j++) q[j] = (sbyte)MathF.Round(x[j] * id, MidpointRounding.ToEven);
        return RoundToHalf(amax / 127);
    }

    /// <summary>The float value of <paramref name="value"/> rounded to the nearest f16 (ties to even), as F16C's
    /// <c>vcvtps2ph</c> with rounding mode 0 does (<see cref="Fp16.Round"/>).</summary>
    /// <remarks>NOTE: the runtime's <see cref="Half"/> conversion here cost about 170 ns per call inside the quantizer's
    /// vector loop (Xeon, family 6 model 207): 5.8 µs of the 6.1 µs that quantizing 1,024 activations to Q8_0 took, about a
    /// tenth of a Q8_0 decode step.</remarks>
    public static float RoundToHalf(float value) => Fp16.Round(value);

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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float HorizontalMax(Vector256<float> v)
    {
        var m = Sse.Max(v.GetLower(), v.GetUpper());
        m = Sse.Max(m, Vector128.Shuffle(m, Vector128.Create(2, 3, 0, 1)));
        m = Sse.Max(m, Vector128.Shuffle(m, Vector128.Create(1, 0, 3, 2)));
        return m.ToScalar();
    }
}
