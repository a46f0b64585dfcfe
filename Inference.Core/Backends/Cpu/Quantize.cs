using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Inference.Loading;
using Inference.Quantization;

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
    /// <param name="type">Q8_K, or a weight type <see cref="BlockQuantizer"/> writes (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).</param>
    /// <param name="src">Values; the length must be a multiple of the type's block size.</param>
    /// <param name="dst">At least <see cref="GgmlTypeInfo.RowBytes"/> bytes.</param>
    /// <exception cref="NotSupportedException">The type has no quantizer here.</exception>
    /// <exception cref="ArgumentException">The lengths do not fit the block geometry.</exception>
    public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        if (type == GgmlType.Q8_K) RowQ8_K(src, dst);
        else BlockQuantizer.QuantizeRow(type, src, dst);
    }

    /// <summary>Q8_0: per 32 values d = max|x| / 127, q = round(x / d) (halves away from zero), d stored as f16.</summary>
    /// <param name="src">Values, a multiple of 32.</param>
    /// <param name="dst">34 bytes per 32 values.</param>
    public static void RowQ8_0(ReadOnlySpan<float> src, Span<byte> dst) => BlockQuantizer.QuantizeRow(GgmlType.Q8_0, src, dst);

    /// <summary>
    /// Q4_0: per 32 values the value m of largest magnitude (sign kept) gives d = m / −8 and
    /// q = min(15, trunc(x / d + 8.5)); d stored as f16, values j and j+16 share byte j (low and high nibble).
    /// </summary>
    /// <param name="src">Values, a multiple of 32.</param>
    /// <param name="dst">18 bytes per 32 values.</param>
    public static void RowQ4_0(ReadOnlySpan<float> src, Span<byte> dst) => BlockQuantizer.QuantizeRow(GgmlType.Q4_0, src, dst);

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
    internal static ushort ToBFloat16(float value) => BlockQuantizer.ToBFloat16(value);

    private static void Check(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        int blockElements = GgmlTypeInfo.BlockElements(type);
        if (src.Length % blockElements != 0)
            throw new ArgumentException($"length {src.Length} is not a multiple of the {type} block size {blockElements}", nameof(src));
        if (dst.Length < GgmlTypeInfo.RowBytes(type, src.Length))
            throw new ArgumentException($"{dst.Length} bytes cannot hold {src.Length} {type} values", nameof(dst));
    }
}
