using System.Buffers.Binary;
using Inference.Loading;

namespace Inference.Models;

/// <summary>Conversion of float-typed tensor data (F32, F16, BF16; little-endian) to float, for norms and biases.</summary>
internal static class WeightConversion
{
    /// <summary>Whether <paramref name="type"/> is one of the float types <see cref="ToFloats"/> reads.</summary>
    public static bool IsFloatType(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;

    /// <summary>Converts <c>dst.Length</c> values of <paramref name="type"/> from <paramref name="src"/>.</summary>
    public static void ToFloats(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < dst.Length; i++) dst[i] = BinaryPrimitives.ReadSingleLittleEndian(src[(4 * i)..]);
                break;
            case GgmlType.F16:
                for (int i = 0; i < dst.Length; i++) dst[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(src[(2 * i)..]);
                break;
            case GgmlType.BF16:
                for (int i = 0; i < dst.Length; i++) dst[i] = BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]) << 16);
                break;
            default:
                throw new NotSupportedException($"{type} is not a float type");
        }
    }
}
