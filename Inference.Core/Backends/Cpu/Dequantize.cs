using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>Plain dequantization of GGML blocks to float (the reference the fast kernels are tested against).</summary>
/// <remarks>
/// Block layouts follow ggml (<c>ggml-common.h</c>), all little-endian:
/// <code>
/// Q8_0  34 B / 32:  f16 d | i8 qs[32]                      x = d·q
/// Q4_0  18 B / 32:  f16 d | u8 qs[16]                      x[j] = d·((qs[j] &amp; 15) − 8), x[j+16] = d·((qs[j] >> 4) − 8)
/// Q4_1  20 B / 32:  f16 d | f16 m | u8 qs[16]              x = d·q + m, q as Q4_0's without the offset
/// Q5_0  22 B / 32:  f16 d | u32 qh | u8 qs[16]             x[j] = d·(q − 16), bit j of qh above the nibble of value j
/// Q5_1  24 B / 32:  f16 d | f16 m | u32 qh | u8 qs[16]     x = d·q + m, q as Q5_0's without the offset
/// IQ4_NL 18 B / 32: f16 d | u8 qs[16]                      x = d·T[q], T the 16-entry table <see cref="IQ4Values"/>
/// Q2_K  84 B / 256: u8 scales[16] | u8 qs[64] | f16 d | f16 dmin
///                   16 sub-blocks of 16, 4-bit scale sc (low nibble) and min m (high): x = d·sc·q − dmin·m, q 2-bit
/// Q3_K 110 B / 256: u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d
///                   16 sub-blocks of 16, 6-bit scale sc: x = d·(sc − 32)·(q − 4·(1 − h)), q 2-bit, h from hmask
/// IQ4_XS 136 B / 256: f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128]
///                   8 sub-blocks of 32, 6-bit scale ls: x = d·(ls − 32)·T[q]
/// Q4_K 144 B / 256: f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
/// Q5_K 176 B / 256: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
///                   8 sub-blocks of 32 with 6-bit scale sc and min m: x = d·sc·q − dmin·m
/// Q6_K 210 B / 256: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
///                   16 sub-blocks of 16 with 8-bit signed scale: x = d·sc·(q − 32), q 6-bit
/// Q8_K 292 B / 256: f32 d | i8 qs[256] | i16 bsums[16]       x = d·q (activations only)
/// </code>
/// </remarks>
public static class Dequantize
{
    /// <summary>Dequantizes one row of <paramref name="type"/> values into <paramref name="dst"/>.</summary>
    /// <param name="type">Element type of <paramref name="src"/>.</param>
    /// <param name="src">At least the bytes of <c>dst.Length</c> elements (a whole number of blocks).</param>
    /// <param name="dst">Receives the values; its length must be a multiple of the type's block size.</param>
    /// <exception cref="NotSupportedException">The type has no dequantizer.</exception>
    /// <exception cref="ArgumentException">The lengths do not fit the block geometry.</exception>
    public static void Row(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        if (!GgmlTypeInfo.TryGetBlock(type, out int blockElements, out int blockBytes))
            throw new NotSupportedException($"dequantization of {type} is not supported");
        if (dst.Length % blockElements != 0)
            throw new ArgumentException($"length {dst.Length} is not a multiple of the {type} block size {blockElements}", nameof(dst));
        if (src.Length < (long)dst.Length / blockElements * blockBytes)
            throw new ArgumentException($"{src.Length} bytes hold fewer than {dst.Length} {type} values", nameof(src));
        switch (type)
        {
            case GgmlType.F32:
                MemoryMarshal.Cast<byte, float>(src)[..dst.Length].CopyTo(dst);
                break;
            case GgmlType.F16:
                for (int i = 0; i < dst.Length; i++) dst[i] = Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]));
                break;
            case GgmlType.BF16:
                for (int i = 0; i < dst.Length; i++)
                    dst[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]) << 16);
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < dst.Length / 32; b++) Q8_0Block(src.Slice(b * 34, 34), dst.Slice(b * 32, 32));
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < dst.Length / 32; b++) Q4_0Block(src.Slice(b * 18, 18), dst.Slice(b * 32, 32));
                break;
            case GgmlType.Q4_K:
                for (int b = 0; b < dst.Length / 256; b++) Q4_KBlock(src.Slice(b * 144, 144), dst.Slice(b * 256, 256));
                break;
            case GgmlType.Q5_K:
                for (int b = 0; b < dst.Length / 256; b++) Q5_KBlock(src.Slice(b * 176, 176), dst.Slice(b * 256, 256));
                break;
            case GgmlType.Q6_K:
                for (int b = 0; b < dst.Length / 256; b++) Q6_KBlock(src.Slice(b * 210, 210), dst.Slice(b * 256, 256));
                break;
            case GgmlType.Q4_1:
                for (int b = 0; b < dst.Length / 32; b++) Q4_1Block(src.Slice(b * 20, 20), dst.Slice(b * 32, 32));
                break;
            case GgmlType.Q5_0:
                for (int b = 0; b < dst.Length / 32; b++) Q5Block(src.Slice(b * 22, 22), withMin: false, dst.Slice(b * 32, 32));
                break;
            case GgmlType.Q5_1:
                for (int b = 0; b < dst.Length / 32; b++) Q5Block(src.Slice(b * 24, 24), withMin: true, dst.Slice(b * 32, 32));
                break;
            case GgmlType.IQ4_NL:
                for (int b = 0; b < dst.Length / 32; b++) IQ4_NLBlock(src.Slice(b * 18, 18), dst.Slice(b * 32, 32));
                break;
            case GgmlType.Q2_K:
                for (int b = 0; b < dst.Length / 256; b++) Q2_KBlock(src.Slice(b * 84, 84), dst.Slice(b * 256, 256));
                break;
            case GgmlType.Q3_K:
                for (int b = 0; b < dst.Length / 256; b++) Q3_KBlock(src.Slice(b * 110, 110), dst.Slice(b * 256, 256));
                break;
            case GgmlType.IQ4_XS:
                for (int b = 0; b < dst.Length / 256; b++) IQ4_XSBlock(src.Slice(b * 136, 136), dst.Slice(b * 256, 256));
                break;
            case GgmlType.Q8_K:
                for (int b = 0; b < dst.Length / 256; b++)
                {
                    var block = src.Slice(b * 292, 292);
                    float d = BinaryPrimitives.ReadSingleLittleEndian(block);
                    for (int j = 0; j < 256; j++) dst[b * 256 + j] = d * (sbyte)block[4 + j];
                }
                break;
            default:
                throw new NotSupportedException($"dequantization of {type} is not supported");
        }
    }

    private static float ReadHalf(ReadOnlySpan<byte> src, int offset) => Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(src[offset..]));

    private static void Q8_0Block(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = ReadHalf(b, 0);
        for (int j = 0; j < 32; j++) y[j] = d * (sbyte)b[2 + j];
    }

    private static void Q4_0Block(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = ReadHalf(b, 0);
        for (int j = 0; j < 32; j++) y[j] = d * (BlockLayout.Nibble32(new SpanBytes(b), 2, j) - 8);
    }

    /// <summary>The 16 values a 4-bit IQ4_NL / IQ4_XS code stands for (ggml's <c>kvalues_iq4nl</c>), in code order.</summary>
    internal static ReadOnlySpan<sbyte> IQ4Values => [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

    private static void Q4_1Block(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = ReadHalf(b, 0), m = ReadHalf(b, 2);
        for (int j = 0; j < 32; j++) y[j] = BlockLayout.Nibble32(new SpanBytes(b), 4, j) * d + m;
    }

    /// <summary>The five-bit code of value <paramref name="j"/> (0..31) of a Q5_0 / Q5_1 block whose qh starts at
    /// <paramref name="qhOffset"/>: the nibble of value j (low nibbles are values 0..15) and bit j of qh above it.</summary>
    internal static int Q5Code(ReadOnlySpan<byte> block, int qhOffset, int j) => BlockLayout.Q5Code(new SpanBytes(block), qhOffset, j);

    private static void Q5Block(ReadOnlySpan<byte> b, bool withMin, Span<float> y)
    {
        float d = ReadHalf(b, 0);
        if (withMin)
        {
            float m = ReadHalf(b, 2);
            for (int j = 0; j < 32; j++) y[j] = Q5Code(b, 4, j) * d + m;
        }
        else
        {
            for (int j = 0; j < 32; j++) y[j] = (Q5Code(b, 2, j) - 16) * d;
        }
    }

    private static void IQ4_NLBlock(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = ReadHalf(b, 0);
        for (int j = 0; j < 32; j++) y[j] = d * IQ4Values[BlockLayout.Nibble32(new SpanBytes(b), 2, j)];
    }

    /// <summary>The 6-bit scale (0..63, used as ls − 32) of IQ4_XS sub-block <paramref name="j"/> (0..7): the low nibble
    /// (even j) or high nibble (odd j) of scales_l[j / 2], and bits 2j, 2j + 1 of scales_h above it.</summary>
    internal static int IQ4_XSScale(ReadOnlySpan<byte> block, int j) => BlockLayout.IQ4_XSScale(new SpanBytes(block), j);

    private static void IQ4_XSBlock(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = ReadHalf(b, 0);
        for (int j = 0; j < 8; j++)
        {
            float dl = d * (IQ4_XSScale(b, j) - 32);
            for (int l = 0; l < 32; l++) y[32 * j + l] = dl * IQ4Values[BlockLayout.Nibble32(new SpanBytes(b), 8 + 16 * j, l)];
        }
    }

    /// <summary>
    /// The 2-bit code of element 128n + 32·j + l (j &lt; 4, l &lt; 32) of a Q2_K or Q3_K block: bits 2j, 2j + 1 of
    /// qs[32n + l]; the element belongs to sub-block 8n + 2j + l / 16.
    /// </summary>
    internal static int K2Code(ReadOnlySpan<byte> qs, int n, int j, int l) => BlockLayout.K2Code(new SpanBytes(qs), 0, n, j, l);

    private static void Q2_KBlock(ReadOnlySpan<byte> b, Span<float> y)
    {
        var scales = b[..16];
        var qs = b.Slice(16, 64);
        float d = ReadHalf(b, 80), dmin = ReadHalf(b, 82);
        for (int i = 0; i < 256; i++)
        {
            int n = i / 128, j = i % 128 / 32, l = i % 32, sub = i / 16;
            float dl = d * (scales[sub] & 0xF), ml = dmin * (scales[sub] >> 4);
            y[i] = dl * K2Code(qs, n, j, l) - ml;
        }
    }

    /// <summary>
    /// The 6-bit scale (0..63, used as sc − 32) of Q3_K sub-block <paramref name="j"/> (0..15) from its 12 packed bytes:
    /// the low nibble (j &lt; 8) or high nibble (j ≥ 8) of byte j mod 8, and bits 2·(j / 4) and 2·(j / 4) + 1 of byte
    /// 8 + j mod 4 above it (ggml's <c>kmask1</c> / <c>kmask2</c> unpacking).
    /// </summary>
    internal static int Q3_KScale(ReadOnlySpan<byte> scales, int j) => BlockLayout.Q3_KScale(new SpanBytes(scales), 0, j);

    private static void Q3_KBlock(ReadOnlySpan<byte> b, Span<float> y)
    {
        var hmask = b[..32];
        var qs = b.Slice(32, 64);
        var scales = b.Slice(96, 12);
        float d = ReadHalf(b, 108);
        for (int i = 0; i < 256; i++)
        {
            int n = i / 128, j = i % 128 / 32, l = i % 32;
            float dl = d * (Q3_KScale(scales, i / 16) - 32);
            int high = (hmask[l] >> (4 * n + j)) & 1;
            y[i] = dl * (K2Code(qs, n, j, l) - (high != 0 ? 0 : 4));
        }
    }

    /// <summary>
    /// The 6-bit scale and min of Q4_K sub-block <paramref name="j"/> (0..7) from the 12 packed bytes (ggml's
    /// <c>get_scale_min_k4</c>): sub-blocks 0..3 use the low 6 bits of bytes j and j+4; sub-blocks 4..7 take their low
    /// 4 bits from byte j+4 (scale: low nibble, min: high nibble) and their high 2 bits from the top bits of bytes j−4 and j.
    /// </summary>
    internal static void ScaleMinK4(int j, ReadOnlySpan<byte> scales, out int scale, out int min) =>
        BlockLayout.ScaleMinK4(new SpanBytes(scales), 0, j, out scale, out min);

    private static void Q4_KBlock(ReadOnlySpan<byte> b, Span<float> y) => K4Block(b, 16, -1, y);

    /// <summary>
    /// Q5_K (ggml's <c>dequantize_row_q5_K</c>): Q4_K's scales, mins and nibbles, and a fifth code bit per value from qh:
    /// the top bits of sub-blocks 2k and 2k + 1 are bits 2k and 2k + 1 of qh[l].
    /// </summary>
    private static void Q5_KBlock(ReadOnlySpan<byte> b, Span<float> y) => K4Block(b, 48, 16, y);

    /// <summary>Q4_K (<paramref name="qh"/> negative) or Q5_K: d and dmin at 0 and 2, the packed scales and mins at 4,
    /// codes from <see cref="BlockLayout.K4Code"/>.</summary>
    private static void K4Block(ReadOnlySpan<byte> b, int qs, int qh, Span<float> y)
    {
        float d = ReadHalf(b, 0);
        float dmin = ReadHalf(b, 2);
        for (int sub = 0; sub < 8; sub++)
        {
            BlockLayout.ScaleMinK4(new SpanBytes(b), 4, sub, out int sc, out int m);
            float ds = d * sc, ms = dmin * m;
            for (int l = 0; l < 32; l++) y[32 * sub + l] = ds * BlockLayout.K4Code(new SpanBytes(b), qs, qh, 32 * sub + l) - ms;
        }
    }

    /// <summary>
    /// The 6-bit code (0..63) of element 128n + 32·quarter + pos (pos &lt; 32) of a Q6_K block: the low nibble (quarters
    /// 0, 1) or high nibble (2, 3) of ql[64n + 32·(quarter mod 2) + pos], with bits 2·quarter, 2·quarter + 1 of
    /// qh[32n + pos] above it.
    /// </summary>
    internal static int Q6_KCode(ReadOnlySpan<byte> block, int n, int quarter, int pos) => BlockLayout.Q6_KCode(new SpanBytes(block), n, quarter, pos);

    private static void Q6_KBlock(ReadOnlySpan<byte> b, Span<float> y)
    {
        var sc = MemoryMarshal.Cast<byte, sbyte>(b.Slice(192, 16));
        float d = ReadHalf(b, 208);
        // Two halves of 128 weights; each uses 64 bytes of ql, 32 of qh (Q6_KCode) and 8 scales.
        for (int n = 0; n < 2; n++)
        {
            var s = sc.Slice(8 * n, 8);
            var o = y.Slice(128 * n, 128);
            for (int l = 0; l < 32; l++)
            {
                int isub = l / 16;
                int q1 = Q6_KCode(b, n, 0, l) - 32;
                int q2 = Q6_KCode(b, n, 1, l) - 32;
                int q3 = Q6_KCode(b, n, 2, l) - 32;
                int q4 = Q6_KCode(b, n, 3, l) - 32;
                o[l] = d * s[isub] * q1;
                o[l + 32] = d * s[isub + 2] * q2;
                o[l + 64] = d * s[isub + 4] * q3;
                o[l + 96] = d * s[isub + 6] * q4;
            }
        }
    }
}
