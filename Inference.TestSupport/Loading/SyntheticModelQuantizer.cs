using Inference.Quantization;

namespace Inference.Loading;

/// <summary>Encodes float rows as F32, F16 or Q8_0 bytes for <see cref="SyntheticModel"/>.</summary>
internal static class SyntheticModelQuantizer
{
    /// <summary>Bytes one row of <paramref name="length"/> values takes in <paramref name="type"/>.</summary>
    public static int RowBytes(GgmlType type, int length) => checked((int)GgmlTypeInfo.RowBytes(type, length));

    /// <summary>Encodes <paramref name="src"/> as <paramref name="type"/> into <paramref name="dst"/> (<see cref="RowBytes"/> long),
    /// with ggml's reference arithmetic (<see cref="BlockQuantizer"/>).</summary>
    public static void EncodeRow(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst) => BlockQuantizer.QuantizeRow(type, src, dst);
}
