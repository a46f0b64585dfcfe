using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Reference quantizers that write GGML blocks (the same arithmetic as ggml's <c>quantize_row_*_ref</c>): used to write
/// test models and, through their block cores, to quantize activations for the integer matmul kernels.
/// </summary>
/// <remarks>See <see cref="Dequantize"/> for the block layouts. Q8_K is <c>f32 d | i8 qs[256] | i16 bsums[16]</c>
/// (292 bytes), bsums being the sums of each 16 consecutive quants.</remarks>
public static class Quantize
{
    /// <summary>Writes <paramref name="src"/> as <paramref name="type"/> into <paramref name="dst"/>.</summary>
    /// <param name="type">F32, F16, BF16, Q8_0, Q4_0 or Q8_K.</param>
    /// <param name="src">Values; the length must be a multiple of the type's block size.</param>
    /// <param name="dst">At least <see cref="GgmlTypeInfo.RowBytes"/> bytes.</param>
    /// <exception cref="NotSupportedException">The type has no quantizer here.</exception>
    /// <exception cref="ArgumentException">The lengths do not fit the block geometry.</exception>
    public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        switch (type)
        {
            case GgmlType.F32:
                Check(type, src, dst);
                MemoryMarshal.AsBytes(src).CopyTo(dst);
                break;
            case GgmlType.F16:
                Check(type, src, dst);
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(dst[(2 * i)..], (Half)src[i]);
                break;
            case GgmlType.BF16:
                Check(type, src, dst);
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * i)..], ToBFloat16(src[i]));
                break;
            case GgmlType.Q8_0: RowQ8_0(src, dst); break;
            case GgmlType.Q4_0: RowQ4_0(src, dst); break;
            case GgmlType.Q8_K: RowQ8_K(src, dst); break;
            default: throw new NotSupportedException($"quantization to {type} is not supported");
        }
    }

    /// <summary>Q8_0: per 32 values d = max|x| / 127, q = round(x / d) (halves away from zero), d stored as f16.</summary>
    /// <param name="src">Values, a multiple of 32.</param>
    /// <param name="dst">34 bytes per 32 values.</param>
    public static void RowQ8_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        Check(GgmlType.Q8_0, src, dst);
        for (int b = 0; b < src.Length / 32; b++)
        {
            var block = dst.Slice(b * 34, 34);
            float d = Q8_0Block(src.Slice(b * 32, 32), MemoryMarshal.Cast<byte, sbyte>(block.Slice(2, 32)));
            BinaryPrimitives.WriteHalfLittleEndian(block, (Half)d);
        }
    }

    /// <summary>
    /// Q4_0: per 32 values the value m of largest magnitude (sign kept) gives d = m / −8 and
    /// q = min(15, trunc(x / d + 8.5)); d stored as f16, values j and j+16 share byte j (low and high nibble).
    /// </summary>
    /// <param name="src">Values, a multiple of 32.</param>
    /// <param name="dst">18 bytes per 32 values.</param>
    public static void RowQ4_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        Check(GgmlType.Q4_0, src, dst);
        for (int b = 0; b < src.Length / 32; b++)
        {
            var x = src.Slice(b * 32, 32);
            var block = dst.Slice(b * 18, 18);
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++)
            {
                float a = MathF.Abs(x[j]);
                if (amax < a)
                {
                    amax = a;
                    max = x[j];
                }
            }
            float d = max / -8;
            float id = d != 0 ? 1.0f / d : 0.0f;
            BinaryPrimitives.WriteHalfLittleEndian(block, (Half)d);
            for (int j = 0; j < 16; j++)
            {
                int q0 = Math.Min(15, (int)(sbyte)(x[j] * id + 8.5f));
                int q1 = Math.Min(15, (int)(sbyte)(x[j + 16] * id + 8.5f));
                block[2 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    /// <summary>
    /// Q8_K: per 256 values the value m of largest magnitude (sign kept) gives d = m / −127 stored as f32,
    /// q = min(127, round(x / d)) (halves to even), plus the 16 sums of each 16 consecutive quants.
    /// </summary>
    /// <param name="src">Values, a multiple of 256.</param>
    /// <param name="dst">292 bytes per 256 values.</param>
    public static void RowQ8_K(ReadOnlySpan<float> src, Span<byte> dst)
    {
        Check(GgmlType.Q8_K, src, dst);
        Span<short> bsums = stackalloc short[16];
        for (int b = 0; b < src.Length / 256; b++)
        {
            var block = dst.Slice(b * 292, 292);
            float d = Q8_KBlock(src.Slice(b * 256, 256), MemoryMarshal.Cast<byte, sbyte>(block.Slice(4, 256)), bsums);
            BinaryPrimitives.WriteSingleLittleEndian(block, d);
            for (int j = 0; j < 16; j++) BinaryPrimitives.WriteInt16LittleEndian(block[(260 + 2 * j)..], bsums[j]);
        }
    }

    /// <summary>Quantizes 32 values to Q8_0 quants <paramref name="q"/> and returns the (unrounded) scale.</summary>
    internal static float Q8_0Block(ReadOnlySpan<float> x, Span<sbyte> q)
    {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) q[j] = (sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
        return d;
    }

    /// <summary>Quantizes 256 values to Q8_K quants <paramref name="q"/> and 16 <paramref name="bsums"/>; returns d.</summary>
    internal static float Q8_KBlock(ReadOnlySpan<float> x, Span<sbyte> q, Span<short> bsums)
    {
        float amax = 0, max = 0;
        for (int j = 0; j < 256; j++)
        {
            float a = MathF.Abs(x[j]);
            if (amax < a)
            {
                amax = a;
                max = x[j];
            }
        }
        if (amax == 0)
        {
            q[..256].Clear();
            bsums[..16].Clear();
            return 0;
        }
        float iscale = -127f / max;
        for (int j = 0; j < 256; j++) q[j] = (sbyte)Math.Min(127, (int)MathF.Round(iscale * x[j], MidpointRounding.ToEven));
        for (int j = 0; j < 16; j++)
        {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += q[16 * j + i];
            bsums[j] = (short)sum;
        }
        return 1 / iscale;
    }

    /// <summary>Rounds a float to bfloat16 bits (nearest, ties to even; NaN stays a quiet NaN).</summary>
    internal static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    private static void Check(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        int blockElements = GgmlTypeInfo.BlockElements(type);
        if (src.Length % blockElements != 0)
            throw new ArgumentException($"length {src.Length} is not a multiple of the {type} block size {blockElements}", nameof(src));
        if (dst.Length < GgmlTypeInfo.RowBytes(type, src.Length))
            throw new ArgumentException($"{dst.Length} bytes cannot hold {src.Length} {type} values", nameof(dst));
    }
}
