using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Quantization;

/// <summary>
/// Quantizes float rows into GGML blocks with the same arithmetic as ggml's reference quantizers
/// (<c>quantize_row_*_ref</c> in <c>ggml-quants.c</c>, which <c>llama-quantize</c> uses when it has no importance matrix),
/// so the bytes match llama.cpp's bit for bit.
/// </summary>
/// <remarks>
/// NOTE: bit-exactness hangs on evaluating every expression in single precision in ggml's order: <c>a*b*c</c> is
/// <c>(a*b)*c</c>, <c>w*l</c> converts the integer <c>l</c> to float first, no fused multiply-add (RyuJIT never contracts),
/// rounding through <see cref="NearestInt"/> (the <c>1.5·2²³</c> trick: halves to even) or truncation where ggml casts.
/// Scales are rounded to f16 to nearest-even, as ggml's <c>GGML_FP32_TO_FP16</c> does, and the K-quants then requantize
/// against the rounded scale. Block layouts:
/// <code>
/// Q4_0  f16 d | u8 qs[16]                       x = d·(q − 8),  value j low nibble of qs[j], j+16 the high nibble
/// Q4_1  f16 d | f16 m | u8 qs[16]               x = d·q + m
/// Q5_0  f16 d | u32 qh | u8 qs[16]              x = d·(q − 16), bit 4 of value j in qh bit j
/// Q5_1  f16 d | f16 m | u32 qh | u8 qs[16]      x = d·q + m
/// Q8_0  f16 d | i8 qs[32]                       x = d·q
/// Q4_K  f16 d | f16 dmin | u8 scales[12] | u8 qs[128]              8 × 32 values, 6-bit scale and min each
/// Q5_K  f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
/// Q6_K  u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d             16 × 16 values, x = d·scale·(q − 32)
/// </code>
/// </remarks>
public static class BlockQuantizer
{
    private const int QK = 256;
    private const float GroupMaxEps = 1e-15f;

    /// <summary>The types <see cref="QuantizeRow"/> writes.</summary>
    public static IReadOnlyList<GgmlType> SupportedTypes { get; } =
    [
        GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q8_0,
        GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K,
    ];

    /// <summary>Writes <paramref name="src"/> (one or more whole blocks) as <paramref name="type"/> into <paramref name="dst"/>.</summary>
    /// <param name="type">One of <see cref="SupportedTypes"/>.</param>
    /// <param name="src">Values; the length must be a multiple of the type's block size.</param>
    /// <param name="dst">Exactly <see cref="GgmlTypeInfo.RowBytes"/> bytes for <paramref name="src"/>'s length, or more.</param>
    /// <exception cref="NotSupportedException">The type has no quantizer here.</exception>
    /// <exception cref="ArgumentException">The lengths do not fit the block geometry.</exception>
    public static void QuantizeRow(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        if (!GgmlTypeInfo.TryGetBlock(type, out int blockElements, out int blockBytes))
            throw new NotSupportedException($"quantization to {type} is not supported");
        if (src.Length % blockElements != 0)
            throw new ArgumentException($"{src.Length} values are not a whole number of {type} blocks of {blockElements}", nameof(src));
        if (dst.Length < (long)src.Length / blockElements * blockBytes)
            throw new ArgumentException($"{type} needs {src.Length / blockElements * blockBytes} bytes for {src.Length} values, got {dst.Length}", nameof(dst));
        int blocks = src.Length / blockElements;
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(dst[(4 * i)..], src[i]);
                break;
            case GgmlType.F16:
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * i)..], Fp16.FromFloat(src[i]));
                break;
            case GgmlType.BF16:
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * i)..], ToBFloat16(src[i]));
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < blocks; b++) Q4_0(src.Slice(b * 32, 32), dst.Slice(b * 18, 18));
                break;
            case GgmlType.Q4_1:
                for (int b = 0; b < blocks; b++) Q4_1(src.Slice(b * 32, 32), dst.Slice(b * 20, 20));
                break;
            case GgmlType.Q5_0:
                for (int b = 0; b < blocks; b++) Q5_0(src.Slice(b * 32, 32), dst.Slice(b * 22, 22));
                break;
            case GgmlType.Q5_1:
                for (int b = 0; b < blocks; b++) Q5_1(src.Slice(b * 32, 32), dst.Slice(b * 24, 24));
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < blocks; b++) Q8_0(src.Slice(b * 32, 32), dst.Slice(b * 34, 34));
                break;
            case GgmlType.Q4_K:
                for (int b = 0; b < blocks; b++) Q45_K(src.Slice(b * QK, QK), dst.Slice(b * 144, 144), fiveBits: false);
                break;
            case GgmlType.Q5_K:
                for (int b = 0; b < blocks; b++) Q45_K(src.Slice(b * QK, QK), dst.Slice(b * 176, 176), fiveBits: true);
                break;
            case GgmlType.Q6_K:
                for (int b = 0; b < blocks; b++) Q6_K(src.Slice(b * QK, QK), dst.Slice(b * 210, 210));
                break;
            default:
                throw new NotSupportedException($"quantization to {type} is not supported");
        }
    }

    /// <summary>Round to nearest, halves to even, as ggml's <c>nearest_int</c> computes it (valid for |x| &lt; 2²²).</summary>
    internal static int NearestInt(float x)
    {
        float v = x + 12582912f;
        return (BitConverter.SingleToInt32Bits(v) & 0x007fffff) - 0x00400000;
    }

    /// <summary>bfloat16 bits of <paramref name="x"/>: nearest, ties to even; a NaN stays a quiet NaN (ggml's <c>ggml_compute_fp32_to_bf16</c>).</summary>
    internal static ushort ToBFloat16(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        if ((bits & 0x7fffffff) > 0x7f800000) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    }

    private static void WriteHalf(Span<byte> dst, float value) => BinaryPrimitives.WriteUInt16LittleEndian(dst, Fp16.FromFloat(value));

    private static float ReadHalf(ReadOnlySpan<byte> src) => (float)BinaryPrimitives.ReadHalfLittleEndian(src);

    // ---- 32-value blocks -------------------------------------------------------------------------------------------

    private static void Q8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        for (int j = 0; j < 32; j++) y[2 + j] = unchecked((byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero));
    }

    /// <summary>The value of largest magnitude, sign kept (the first of equal magnitudes).</summary>
    private static float SignedAbsMax(ReadOnlySpan<float> x)
    {
        float amax = 0, max = 0;
        for (int j = 0; j < x.Length; j++)
        {
            float a = MathF.Abs(x[j]);
            if (amax < a)
            {
                amax = a;
                max = x[j];
            }
        }
        return max;
    }

    private static (float Min, float Max) MinMax(ReadOnlySpan<float> x)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        for (int j = 0; j < x.Length; j++)
        {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        return (min, max);
    }

    private static void Q4_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float d = SignedAbsMax(x) / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        for (int j = 0; j < 16; j++)
        {
            // NOTE: ggml truncates through (int8_t); the sums stay within [0.5, 16.5], so (int) is the same.
            int q0 = Math.Min(15, (int)(x[j] * id + 8.5f));
            int q1 = Math.Min(15, (int)(x[j + 16] * id + 8.5f));
            y[2 + j] = (byte)(q0 | (q1 << 4));
        }
    }

    private static void Q4_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        var (min, max) = MinMax(x);
        float d = (max - min) / 15;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        WriteHalf(y[2..], min);
        for (int j = 0; j < 16; j++)
        {
            int q0 = Math.Min(15, (int)((x[j] - min) * id + 0.5f));
            int q1 = Math.Min(15, (int)((x[j + 16] - min) * id + 0.5f));
            y[4 + j] = (byte)(q0 | (q1 << 4));
        }
    }

    private static void Q5_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float d = SignedAbsMax(x) / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        uint qh = 0;
        for (int j = 0; j < 16; j++)
        {
            int q0 = Math.Min(31, (int)(x[j] * id + 16.5f));
            int q1 = Math.Min(31, (int)(x[j + 16] * id + 16.5f));
            y[6 + j] = (byte)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint)((q0 & 0x10) >> 4) << j;
            qh |= (uint)((q1 & 0x10) >> 4) << (j + 16);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y[2..], qh);
    }

    private static void Q5_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        var (min, max) = MinMax(x);
        float d = (max - min) / 31;
        float id = d != 0 ? 1.0f / d : 0.0f;
        WriteHalf(y, d);
        WriteHalf(y[2..], min);
        uint qh = 0;
        for (int j = 0; j < 16; j++)
        {
            // NOTE: ggml converts to uint8_t without a clamp; the sums stay below 32.
            int q0 = (byte)(int)((x[j] - min) * id + 0.5f);
            int q1 = (byte)(int)((x[j + 16] - min) * id + 0.5f);
            y[8 + j] = (byte)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint)((q0 & 0x10) >> 4) << j;
            qh |= (uint)((q1 & 0x10) >> 4) << (j + 16);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y[4..], qh);
    }

    // ---- K-quants (256-value super-blocks) -------------------------------------------------------------------------

    /// <summary>Q4_K (<paramref name="fiveBits"/> false) or Q5_K: per 32 values an asymmetric fit (scale and min), both
    /// then quantized to 6 bits against the super-block's largest.</summary>
    private static void Q45_K(ReadOnlySpan<float> x, Span<byte> y, bool fiveBits)
    {
        int nmax = fiveBits ? 31 : 15;
        Span<byte> l = stackalloc byte[QK];
        Span<byte> laux = stackalloc byte[32];
        Span<float> weights = stackalloc float[32];
        Span<float> mins = stackalloc float[8];
        Span<float> scales = stackalloc float[8];
        float rmin = fiveBits ? -0.5f : -1f;
        int nstep = fiveBits ? 15 : 20;
        if (KQuantSearch.IsAccelerated)
        {
            KQuantSearch.Qkx2x8(x[..QK], nmax, rmin, 0.1f, nstep, scales, mins, l);
        }
        else
        {
            for (int j = 0; j < 8; j++)
            {
                var xs = x.Slice(32 * j, 32);
                Qkx2Weights(xs, weights);
                scales[j] = MakeQkx2Quants(xs, nmax, weights, l.Slice(32 * j, 32), out mins[j], laux, rmin, 0.1f, nstep);
            }
        }
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++)
        {
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }

        var sc = y.Slice(4, 12);
        sc.Clear();
        float invScale = maxScale > 0 ? 63f / maxScale : 0f;
        float invMin = maxMin > 0 ? 63f / maxMin : 0f;
        for (int j = 0; j < 8; j++)
        {
            // NOTE: ggml stores the rounded value in a uint8_t before the clamp (a negative scale wraps, then clamps to 63).
            byte ls = Math.Min((byte)63, unchecked((byte)NearestInt(invScale * scales[j])));
            byte lm = Math.Min((byte)63, unchecked((byte)NearestInt(invMin * mins[j])));
            if (j < 4)
            {
                sc[j] = ls;
                sc[j + 4] = lm;
            }
            else
            {
                sc[j + 4] = (byte)((ls & 0xF) | ((lm & 0xF) << 4));
                sc[j - 4] |= (byte)((ls >> 4) << 6);
                sc[j] |= (byte)((lm >> 4) << 6);
            }
        }
        WriteHalf(y, maxScale / 63f);
        WriteHalf(y[2..], maxMin / 63f);
        float dAll = ReadHalf(y), dminAll = ReadHalf(y[2..]);
        for (int j = 0; j < 8; j++)
        {
            ScaleMinK4(j, sc, out byte s, out byte m);
            float d = dAll * s;
            if (d == 0) continue; // keeps the fit's codes, as ggml does
            float dm = dminAll * m;
            int i = 0;
            if (KQuantSearch.IsAccelerated)
            {
                var vd = Vector256.Create(d);
                var vdm = Vector256.Create(dm);
                var hi = Vector256.Create(nmax);
                for (; i < 32; i += 8)
                {
                    var q = Vector256.Max(Vector256<int>.Zero, Vector256.Min(hi, KQuantSearch.NearestInt((Vector256.Create(x.Slice(32 * j + i, 8)) + vdm) / vd)));
                    Vector256.Narrow(Vector256.Narrow(q, q), Vector256<short>.Zero).AsByte().GetLower().GetLower().CopyTo(l.Slice(32 * j + i, 8));
                }
            }
            for (; i < 32; i++)
                l[32 * j + i] = (byte)Math.Clamp(NearestInt((x[32 * j + i] + dm) / d), 0, nmax);
        }

        if (!fiveBits)
        {
            var q = y.Slice(16, 128);
            for (int j = 0, o = 0; j < QK; j += 64, o += 32)
                for (int i = 0; i < 32; i++) q[o + i] = (byte)(l[j + i] | (l[j + i + 32] << 4));
            return;
        }
        var qh = y.Slice(16, 32);
        var ql = y.Slice(48, 128);
        qh.Clear();
        byte m1 = 1, m2 = 2;
        for (int n = 0, o = 0; n < QK; n += 64, o += 32)
        {
            for (int j = 0; j < 32; j++)
            {
                int l1 = l[n + j];
                if (l1 > 15)
                {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                int l2 = l[n + j + 32];
                if (l2 > 15)
                {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[o + j] = (byte)(l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }

    /// <summary>Q4_K's and Q5_K's weights for the fit of one sub-block: <c>√(mean x²) + |x|</c>.</summary>
    internal static void Qkx2Weights(ReadOnlySpan<float> xs, Span<float> weights)
    {
        float sumX2 = 0;
        for (int i = 0; i < xs.Length; i++) sumX2 += xs[i] * xs[i];
        float avX = MathF.Sqrt(sumX2 / xs.Length);
        for (int i = 0; i < xs.Length; i++) weights[i] = avX + MathF.Abs(xs[i]);
    }

    /// <summary>Scale and min of sub-block <paramref name="j"/> from the packed 12 scale bytes (ggml's <c>get_scale_min_k4</c>).</summary>
    internal static void ScaleMinK4(int j, ReadOnlySpan<byte> q, out byte d, out byte m)
    {
        if (j < 4)
        {
            d = (byte)(q[j] & 63);
            m = (byte)(q[j + 4] & 63);
        }
        else
        {
            d = (byte)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            m = (byte)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }

    /// <summary>
    /// ggml's <c>make_qkx2_quants</c>: codes <paramref name="l"/> in [0, nmax] and a scale (returned) and min
    /// (<paramref name="theMin"/>, positive, subtracted) minimizing the weighted squared error, trying
    /// <paramref name="nstep"/> + 1 inverse scales from <c>(rmin + nmax) / range</c> in steps of <paramref name="rdelta"/>.
    /// </summary>
    /// <remarks>The plain reference of <see cref="KQuantSearch.Qkx2x8"/>.</remarks>
    internal static float MakeQkx2Quants(ReadOnlySpan<float> x, int nmax, ReadOnlySpan<float> weights, Span<byte> l,
        out float theMin, Span<byte> laux, float rmin, float rdelta, int nstep)
    {
        int n = x.Length;
        float min = x[0], max = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max == min)
        {
            l[..n].Clear();
            theMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int q = NearestInt(iscale * (x[i] - min));
            l[i] = (byte)Math.Max(0, Math.Min(nmax, q));
            float diff = scale * l[i] + min - x[i];
            bestError += weights[i] * (diff * diff);
        }
        for (int step = 0; step <= nstep; step++)
        {
            iscale = (rmin + rdelta * step + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXl = 0;
            for (int i = 0; i < n; i++)
            {
                int q = Math.Max(0, Math.Min(nmax, NearestInt(iscale * (x[i] - min))));
                laux[i] = (byte)q;
                float w = weights[i];
                sumL += w * q;
                sumL2 += w * q * q;
                sumXl += w * q * x[i];
            }
            float det = sumW * sumL2 - sumL * sumL;
            if (det > 0)
            {
                float thisScale = (sumW * sumXl - sumX * sumL) / det;
                float thisMin = (sumL2 * sumX - sumL * sumXl) / det;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXl / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * laux[i] + thisMin - x[i];
                    curError += weights[i] * (diff * diff);
                }
                if (curError < bestError)
                {
                    laux[..n].CopyTo(l);
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    private static void Q6_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<sbyte> l = stackalloc sbyte[QK];
        Span<float> scales = stackalloc float[16];
        float maxScale = 0, maxAbsScale = 0;
        if (KQuantSearch.IsAccelerated)
        {
            KQuantSearch.Qx8(x[..128], scales[..8], l[..128]);
            KQuantSearch.Qx8(x.Slice(128, 128), scales[8..], l[128..]);
        }
        else
        {
            for (int ib = 0; ib < 16; ib++) scales[ib] = MakeQxQuants(x.Slice(16 * ib, 16), 32, l.Slice(16 * ib, 16));
        }
        for (int ib = 0; ib < 16; ib++)
        {
            float scale = scales[ib];
            float absScale = MathF.Abs(scale);
            if (absScale > maxAbsScale)
            {
                maxAbsScale = absScale;
                maxScale = scale;
            }
        }
        var ql = y[..128];
        var qh = y.Slice(128, 64);
        var sc = y.Slice(192, 16);
        if (maxAbsScale < GroupMaxEps)
        {
            y[..210].Clear();
            return;
        }
        float iscale = -128f / maxScale;
        WriteHalf(y[208..], 1 / iscale);
        for (int ib = 0; ib < 16; ib++) sc[ib] = unchecked((byte)(sbyte)Math.Min(127, NearestInt(iscale * scales[ib])));
        float dAll = ReadHalf(y[208..]);
        for (int j = 0; j < 16; j++)
        {
            float d = dAll * (sbyte)sc[j];
            if (d == 0) continue;
            int i = 0;
            if (KQuantSearch.IsAccelerated)
            {
                var vd = Vector256.Create(d);
                for (; i < 16; i += 8)
                {
                    var q = Vector256.Max(Vector256.Create(-32), Vector256.Min(Vector256.Create(31), KQuantSearch.NearestInt(Vector256.Create(x.Slice(16 * j + i, 8)) / vd)))
                        + Vector256.Create(32);
                    Vector256.Narrow(Vector256.Narrow(q, q), Vector256<short>.Zero).GetLower().GetLower().CopyTo(l.Slice(16 * j + i, 8));
                }
            }
            for (; i < 16; i++)
                l[16 * j + i] = (sbyte)(Math.Clamp(NearestInt(x[16 * j + i] / d), -32, 31) + 32);
        }
        for (int j = 0, o = 0, h = 0; j < QK; j += 128, o += 64, h += 32)
        {
            for (int i = 0; i < 32; i++)
            {
                int q1 = l[j + i] & 0xF, q2 = l[j + i + 32] & 0xF, q3 = l[j + i + 64] & 0xF, q4 = l[j + i + 96] & 0xF;
                ql[o + i] = (byte)(q1 | (q3 << 4));
                ql[o + i + 32] = (byte)(q2 | (q4 << 4));
                qh[h + i] = (byte)((l[j + i] >> 4) | ((l[j + i + 32] >> 4) << 2) | ((l[j + i + 64] >> 4) << 4) | ((l[j + i + 96] >> 4) << 6));
            }
        }
    }

    /// <summary>
    /// ggml's <c>make_qx_quants</c> with <c>rmse_type</c> 1 and no importance weights (weights x²): symmetric codes
    /// <paramref name="l"/> in [0, 2·nmax) (offset nmax) and the least-squares scale, trying 18 inverse scales around
    /// <c>−nmax / max</c>.
    /// </summary>
    /// <remarks>The plain reference of <see cref="KQuantSearch.Qx8"/>.</remarks>
    internal static float MakeQxQuants(ReadOnlySpan<float> x, int nmax, Span<sbyte> l)
    {
        int n = x.Length;
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax)
            {
                amax = ax;
                max = x[i];
            }
        }
        if (amax < GroupMaxEps)
        {
            l[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int q = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
            l[i] = (sbyte)(q + nmax);
            float w = x[i] * x[i];
            sumlx += w * x[i] * q;
            suml2 += w * q * q;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int q = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
                float w = x[i] * x[i];
                sumlx += w * x[i] * q;
                suml2 += w * q * q;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; i++) l[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i]))));
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }
}
