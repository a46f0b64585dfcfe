using System.Buffers.Binary;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Tests.Backends.Cpu;

/// <summary>Random weights and activations for the CPU kernel tests.</summary>
internal static class CpuTestHelpers
{
    /// <summary>Random values in [−scale, scale) with a few larger outliers, never all zero.</summary>
    public static float[] RandomFloats(Random rng, int count, float scale = 1f)
    {
        var v = new float[count];
        for (int i = 0; i < count; i++)
        {
            v[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
            if (rng.Next(64) == 0) v[i] *= 4;
        }
        return v;
    }

    /// <summary>Bytes of a [rows, cols] weight matrix of <paramref name="type"/> with random contents.</summary>
    /// <remarks>Float and 32-block types are quantized from random floats with the reference quantizers; K-quant
    /// blocks are random bytes with small positive f16 super-block scales.</remarks>
    public static byte[] RandomWeights(Random rng, GgmlType type, int rows, int cols)
    {
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var bytes = new byte[rows * rowBytes];
        switch (type)
        {
            case GgmlType.Q4_K or GgmlType.Q5_K:
                int blockBytes = (int)GgmlTypeInfo.RowBytes(type, 256);
                rng.NextBytes(bytes);
                for (int b = 0; b < bytes.Length / blockBytes; b++)
                {
                    BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(b * blockBytes), (Half)(0.001 + rng.NextDouble() * 0.01));
                    BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(b * blockBytes + 2), (Half)(0.001 + rng.NextDouble() * 0.01));
                }
                break;
            case GgmlType.Q6_K:
                rng.NextBytes(bytes);
                for (int b = 0; b < bytes.Length / 210; b++)
                    BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(b * 210 + 208), (Half)(0.0005 + rng.NextDouble() * 0.002));
                break;
            case GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.IQ4_NL or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.IQ4_XS:
                // Random codes, high bits and sub-block scales; small f16 scales (and mins of either sign).
                int bb = GgmlTypeInfo.BlockBytes(type);
                rng.NextBytes(bytes);
                var (dAt, minAt) = type switch
                {
                    GgmlType.Q4_1 or GgmlType.Q5_1 => (0, 2),
                    GgmlType.Q2_K => (80, 82),
                    GgmlType.Q3_K => (108, -1),
                    _ => (0, -1),
                };
                for (int b = 0; b < bytes.Length / bb; b++)
                {
                    BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(b * bb + dAt), (Half)(0.001 + rng.NextDouble() * 0.01));
                    if (minAt >= 0)
                        BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(b * bb + minAt), (Half)((rng.NextDouble() * 2 - 1) * 0.05));
                }
                break;
            default:
                for (int r = 0; r < rows; r++)
                    Quantize.Row(type, RandomFloats(rng, cols), bytes.AsSpan((int)(r * rowBytes), (int)rowBytes));
                break;
        }
        return bytes;
    }

    /// <summary>The f16 bits of <paramref name="value"/>.</summary>
    public static ushort HalfBits(float value) => BitConverter.HalfToUInt16Bits((Half)value);
}
