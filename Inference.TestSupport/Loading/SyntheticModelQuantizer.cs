using System.Buffers.Binary;

namespace Inference.Loading;

/// <summary>Encodes float rows as F32, F16 or Q8_0 bytes for <see cref="SyntheticModel"/>.</summary>
internal static class SyntheticModelQuantizer
{
    /// <summary>Bytes one row of <paramref name="length"/> values takes in <paramref name="type"/>.</summary>
    public static int RowBytes(GgmlType type, int length) => checked((int)GgmlTypeInfo.RowBytes(type, length));

    /// <summary>Encodes <paramref name="src"/> as <paramref name="type"/> into <paramref name="dst"/> (<see cref="RowBytes"/> long).</summary>
    public static void EncodeRow(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(dst[(4 * i)..], src[i]);
                break;
            case GgmlType.F16:
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(dst[(2 * i)..], (Half)src[i]);
                break;
            case GgmlType.Q8_0:
                QuantizeRowQ8_0(src, dst);
                break;
            default:
                throw new NotSupportedException($"{type} is not supported");
        }
    }

    /// <summary>
    /// Q8_0 as ggml's reference quantizer computes it: per block of 32 values, <c>d = max|x| / 127</c> stored as f16, then
    /// <c>q = round(x / d)</c> (half away from zero) as int8, where the division is a multiplication by the f32 <c>1 / d</c>.
    /// </summary>
    public static void QuantizeRowQ8_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        const int blockElements = 32, blockBytes = 34;
        if (src.Length % blockElements != 0) throw new ArgumentException("row length must be a multiple of 32", nameof(src));
        for (int b = 0; b < src.Length / blockElements; b++)
        {
            var x = src.Slice(b * blockElements, blockElements);
            var y = dst.Slice(b * blockBytes, blockBytes);
            float amax = 0f;
            foreach (var v in x) amax = MathF.Max(amax, MathF.Abs(v));
            float d = amax / 127f;
            float id = d != 0f ? 1f / d : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(y, (Half)d);
            for (int j = 0; j < blockElements; j++)
                y[2 + j] = unchecked((byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero));
        }
    }
}
