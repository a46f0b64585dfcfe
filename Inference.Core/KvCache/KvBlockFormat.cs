using System.Buffers.Binary;
using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Quantization;

namespace Inference.KvCache;

/// <summary>
/// Bytes, quantization and plain dequantization of the K/V element types (<see cref="KvCacheDataType"/>), including the
/// two 34-byte block formats <see cref="KvCacheDataType.Q8_0"/> and <see cref="KvCacheDataType.Fp8E4M3"/>.
/// </summary>
/// <remarks>
/// <code>
///   block (34 bytes) = f16 d | 32 codes      value i = d · code(i)
///   Q8_0:    code = signed byte (−127…127),   d = max|x| / 127 (ggml's quantize_row_q8_0: round half away from zero, 1/d unrounded)
///   Fp8E4M3: code = e4m3 byte (±448 at most), d = max|x| / 448 rounded to f16; x / d rounded to nearest e4m3, ties to even
/// </code>
/// A head's row of headDim values is headDim / 32 consecutive blocks, so a token's K (or V) is kvHeads such rows and the
/// row of one head starts at a whole block: the same addressing as the float types with 34/32 bytes per value.
/// </remarks>
public static class KvBlockFormat
{
    /// <summary>Values per block of the block formats.</summary>
    public const int BlockValues = 32;

    /// <summary>Bytes per block of the block formats (f16 scale and 32 one-byte codes).</summary>
    public const int BlockBytes = 34;

    /// <summary>Largest finite FP8 E4M3 value.</summary>
    public const float Fp8Max = 448f;

    /// <summary>Whether <paramref name="type"/> stores 34-byte blocks of 32 values.</summary>
    public static bool IsBlockFormat(KvCacheDataType type) => type is KvCacheDataType.Q8_0 or KvCacheDataType.Fp8E4M3;

    /// <summary>Bytes of <paramref name="values"/> values of <paramref name="type"/> (a multiple of 32 for the block formats).</summary>
    public static long ByteCount(KvCacheDataType type, long values) => type switch
    {
        KvCacheDataType.Float32 => 4 * values,
        KvCacheDataType.Float16 => 2 * values,
        KvCacheDataType.Q8_0 or KvCacheDataType.Fp8E4M3 => values / BlockValues * BlockBytes,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "Unknown KV cache data type."),
    };

    /// <summary>Bytes of one head's row of <paramref name="headDim"/> values.</summary>
    public static int RowBytes(KvCacheDataType type, int headDim) => checked((int)ByteCount(type, headDim));

    /// <summary>The command-line and log name: f32, f16, q8_0, fp8_e4m3.</summary>
    public static string Name(KvCacheDataType type) => type switch
    {
        KvCacheDataType.Float32 => "f32",
        KvCacheDataType.Float16 => "f16",
        KvCacheDataType.Q8_0 => "q8_0",
        KvCacheDataType.Fp8E4M3 => "fp8_e4m3",
        _ => type.ToString(),
    };

    /// <summary>Refuses a head size the type cannot store: the block formats need whole blocks per head.</summary>
    /// <exception cref="NotSupportedException"><paramref name="type"/> is a block format and <paramref name="headDim"/> is not a multiple of 32.</exception>
    public static void CheckHeadDim(KvCacheDataType type, int headDim)
    {
        if (IsBlockFormat(type) && headDim % BlockValues != 0)
            throw new NotSupportedException($"A {Name(type)} KV cache needs a head size that is a multiple of {BlockValues}; this model's is {headDim} (use --kv-cache-dtype f16 or f32).");
    }

    /// <summary>Stores <paramref name="src"/> (whole heads) as <paramref name="type"/> into <paramref name="dst"/> (<see cref="ByteCount"/> bytes).</summary>
    public static void Quantize(KvCacheDataType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        switch (type)
        {
            case KvCacheDataType.Q8_0:
                BlockQuantizer.QuantizeRow(GgmlType.Q8_0, src, dst);
                break;
            case KvCacheDataType.Fp8E4M3:
                if (src.Length % BlockValues != 0 || dst.Length < ByteCount(type, src.Length))
                    throw new ArgumentException($"{src.Length} values do not fill whole {Name(type)} blocks of {dst.Length} bytes.", nameof(src));
                for (int b = 0; b < src.Length / BlockValues; b++)
                    QuantizeFp8Block(src.Slice(b * BlockValues, BlockValues), dst.Slice(b * BlockBytes, BlockBytes));
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "Not a block format.");
        }
    }

    /// <summary>The values <paramref name="src"/> (whole blocks of <paramref name="type"/>) stand for, exactly (each d · code is exact in float).</summary>
    public static void Dequantize(KvCacheDataType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        if (!IsBlockFormat(type)) throw new ArgumentOutOfRangeException(nameof(type), type, "Not a block format.");
        int blocks = dst.Length / BlockValues;
        if (dst.Length % BlockValues != 0 || src.Length < blocks * BlockBytes)
            throw new ArgumentException($"{dst.Length} values are not whole blocks of the {src.Length} bytes given.", nameof(dst));
        bool q8 = type == KvCacheDataType.Q8_0;
        for (int b = 0; b < blocks; b++)
        {
            var block = src.Slice(b * BlockBytes, BlockBytes);
            float d = (float)BinaryPrimitives.ReadHalfLittleEndian(block);
            var values = dst.Slice(b * BlockValues, BlockValues);
            if (q8) for (int i = 0; i < BlockValues; i++) values[i] = d * (sbyte)block[2 + i];
            else for (int i = 0; i < BlockValues; i++) values[i] = d * FromE4M3(block[2 + i]);
        }
    }

    private static void QuantizeFp8Block(ReadOnlySpan<float> x, Span<byte> block)
    {
        float amax = 0;
        foreach (float v in x) amax = MathF.Max(amax, MathF.Abs(v));
        // NOTE: the scale as stored (f16) divides, so the codes fit the scale the reader multiplies by; a block whose
        // largest value exceeds 448 · 65504 saturates at the largest f16 scale.
        ushort d = Fp16.FromFloat(MathF.Min(amax / Fp8Max, (float)Half.MaxValue));
        BinaryPrimitives.WriteUInt16LittleEndian(block, d);
        float df = Fp16.ToFloat(d);
        for (int i = 0; i < BlockValues; i++) block[2 + i] = df == 0 ? (byte)0 : ToE4M3(x[i] / df);
    }

    /// <summary>
    /// The FP8 E4M3 (e4m3fn) code nearest to <paramref name="x"/>, ties to even; magnitudes above 448 saturate to 448
    /// (the format has no infinity), NaN gives the NaN code 0x7F.
    /// </summary>
    public static byte ToE4M3(float x)
    {
        if (float.IsNaN(x)) return 0x7F;
        byte sign = float.IsNegative(x) ? (byte)0x80 : (byte)0;
        double a = Math.Abs((double)x);
        if (a >= Fp8Max) return (byte)(sign | 0x7E);
        const double MinNormal = 1.0 / 64; // 2^-6
        if (a < MinNormal)
        {
            // Subnormals, steps of 2^-9; rounding up to 8 steps gives the smallest normal's code 0x08.
            return (byte)(sign | (int)Math.Round(a * 512, MidpointRounding.ToEven));
        }
        int e = Math.ILogB(a);                                     // −6 … 8
        int m = (int)Math.Round((Math.ScaleB(a, -e) - 1) * 8, MidpointRounding.ToEven); // 0 … 8 (8 carries into the exponent)
        int bits = ((e + 7) << 3) + m;
        return (byte)(sign | Math.Min(bits, 0x7E));
    }

    /// <summary>The value of the FP8 E4M3 (e4m3fn) code <paramref name="code"/> (0x7F and 0xFF are NaN).</summary>
    public static float FromE4M3(byte code)
    {
        int e = (code >> 3) & 0xF, m = code & 7;
        float a = e == 15 && m == 7 ? float.NaN : e == 0 ? MathF.ScaleB(m, -9) : MathF.ScaleB(8 + m, e - 10);
        return (code & 0x80) != 0 ? -a : a;
    }
}
