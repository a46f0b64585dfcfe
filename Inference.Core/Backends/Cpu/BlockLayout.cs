namespace Inference.Backends.Cpu;

/// <summary>The bytes of one GGML block, whatever holds them: a span on the host, a device view in a kernel.</summary>
internal interface IBlockBytes
{
    /// <summary>Byte <paramref name="index"/> of the block (0..255).</summary>
    int Byte(int index);
}

/// <summary>A block's bytes in a span (the host side of <see cref="BlockLayout"/>).</summary>
internal readonly ref struct SpanBytes(ReadOnlySpan<byte> bytes) : IBlockBytes
{
    private readonly ReadOnlySpan<byte> _bytes = bytes;

    public int Byte(int index) => _bytes[index];
}

/// <summary>
/// Where the codes and scales of each GGML block type sit (see <see cref="Dequantize"/> for the layouts): the one
/// description of the bit packing, read by the host dequantizers and packers through spans and by the ILGPU matrix
/// kernels through device views (<c>Inference.Kernels.Layer.MatMulKernels</c>), so the layouts are written once.
/// </summary>
/// <remarks>
/// Plain integer arithmetic only (no spans, tables or exceptions), so the same IL compiles for the CPU and as a GPU
/// kernel. Offsets are byte offsets into the block given as <c>bytes</c>.
/// </remarks>
internal static class BlockLayout
{
    /// <summary>
    /// The 16 values of an IQ4_NL / IQ4_XS code (ggml's <c>kvalues_iq4nl</c>: −127, −104, −83, −65, −49, −35, −22, −10,
    /// 1, 13, 25, 38, 53, 69, 89, 113), packed a signed byte each into two words so kernels need no table.
    /// </summary>
    public static int IQ4Value(int code)
    {
        const ulong low = 0xF6_EA_DD_CF_BF_AD_98_81UL;    // codes 0..7
        const ulong high = 0x71_59_45_35_26_19_0D_01UL;   // codes 8..15
        int b = (int)(((code < 8 ? low : high) >> (8 * (code & 7))) & 0xFF);
        return (b ^ 0x80) - 0x80;
    }

    /// <summary>
    /// The 4-bit code of value <paramref name="j"/> (0..31) of a 32-value block of nibbles at <paramref name="qs"/>
    /// (Q4_0, Q4_1, IQ4_NL, an IQ4_XS sub-block): the low nibble of byte j for j &lt; 16, else the high nibble of byte j − 16.
    /// </summary>
    public static int Nibble32<T>(T bytes, int qs, int j) where T : IBlockBytes, allows ref struct =>
        j < 16 ? bytes.Byte(qs + j) & 0xF : bytes.Byte(qs + j - 16) >> 4;

    /// <summary>The five-bit code of value <paramref name="j"/> (0..31) of a Q5_0 / Q5_1 block whose u32 qh starts at
    /// <paramref name="qh"/>, its nibbles 4 bytes later: the nibble of value j and bit j of qh above it.</summary>
    public static int Q5Code<T>(T bytes, int qh, int j) where T : IBlockBytes, allows ref struct =>
        Nibble32(bytes, qh + 4, j) | ((bytes.Byte(qh + (j >> 3)) >> (j & 7)) & 1) << 4;

    /// <summary>The 6-bit IQ4_XS scale of sub-block <paramref name="j"/> (0..7), used as ls − 32: the low nibble (even j)
    /// or high nibble (odd j) of scales_l[j / 2] (byte 4 on), and bits 2j, 2j + 1 of the u16 scales_h (byte 2) above it.</summary>
    public static int IQ4_XSScale<T>(T bytes, int j) where T : IBlockBytes, allows ref struct
    {
        int scalesH = bytes.Byte(2) | bytes.Byte(3) << 8;
        return ((bytes.Byte(4 + (j >> 1)) >> (4 * (j & 1))) & 0xF) | ((scalesH >> (2 * j)) & 3) << 4;
    }

    /// <summary>
    /// The 2-bit code of element 128n + 32·j + l (j &lt; 4, l &lt; 32) of a Q2_K or Q3_K block whose qs start at
    /// <paramref name="qs"/>: bits 2j, 2j + 1 of qs[32n + l]; the element belongs to sub-block 8n + 2j + l / 16.
    /// </summary>
    public static int K2Code<T>(T bytes, int qs, int n, int j, int l) where T : IBlockBytes, allows ref struct =>
        (bytes.Byte(qs + 32 * n + l) >> (2 * j)) & 3;

    /// <summary>
    /// The 6-bit scale (0..63, used as sc − 32) of Q3_K sub-block <paramref name="j"/> (0..15) from the 12 packed bytes at
    /// <paramref name="scales"/>: the low nibble (j &lt; 8) or high nibble (j ≥ 8) of byte j mod 8, and bits 2·(j / 4) and
    /// 2·(j / 4) + 1 of byte 8 + j mod 4 above it (ggml's <c>kmask1</c> / <c>kmask2</c> unpacking).
    /// </summary>
    public static int Q3_KScale<T>(T bytes, int scales, int j) where T : IBlockBytes, allows ref struct
    {
        int low = j < 8 ? bytes.Byte(scales + j) & 0xF : bytes.Byte(scales + j - 8) >> 4;
        int high = (bytes.Byte(scales + 8 + (j & 3)) >> (2 * (j >> 2))) & 3;
        return low | high << 4;
    }

    /// <summary>
    /// The 6-bit scale and min of Q4_K / Q5_K sub-block <paramref name="j"/> (0..7) from the 12 packed bytes at
    /// <paramref name="scales"/> (ggml's <c>get_scale_min_k4</c>): sub-blocks 0..3 use the low 6 bits of bytes j and j+4;
    /// sub-blocks 4..7 take their low 4 bits from byte j+4 (scale: low nibble, min: high nibble) and their high 2 bits from
    /// the top bits of bytes j−4 and j.
    /// </summary>
    public static void ScaleMinK4<T>(T bytes, int scales, int j, out int scale, out int min) where T : IBlockBytes, allows ref struct
    {
        if (j < 4)
        {
            scale = bytes.Byte(scales + j) & 63;
            min = bytes.Byte(scales + j + 4) & 63;
        }
        else
        {
            int b = bytes.Byte(scales + j + 4);
            scale = (b & 0xF) | ((bytes.Byte(scales + j - 4) >> 6) << 4);
            min = (b >> 4) | ((bytes.Byte(scales + j) >> 6) << 4);
        }
    }

    /// <summary>
    /// The 4-bit (Q4_K) or 5-bit (Q5_K) code of element <paramref name="i"/> (0..255) of a K-quant block with nibbles at
    /// <paramref name="qs"/> and, for Q5_K, the fifth bits at <paramref name="qh"/> (negative: none). Each 32 bytes of qs
    /// hold 64 values: low nibbles are sub-block 2k, high nibbles sub-block 2k + 1; the top bit of sub-block s is bit s of qh[i mod 32].
    /// </summary>
    public static int K4Code<T>(T bytes, int qs, int qh, int i) where T : IBlockBytes, allows ref struct
    {
        int sub = i >> 5, l = i & 31;
        int code = (bytes.Byte(qs + 32 * (sub >> 1) + l) >> (4 * (sub & 1))) & 0xF;
        return qh < 0 ? code : code | ((bytes.Byte(qh + l) >> sub) & 1) << 4;
    }

    /// <summary>
    /// The 6-bit code (0..63) of element 128n + 32·quarter + pos (pos &lt; 32) of a Q6_K block: the low nibble (quarters
    /// 0, 1) or high nibble (2, 3) of ql[64n + 32·(quarter mod 2) + pos], with bits 2·quarter, 2·quarter + 1 of
    /// qh[32n + pos] (byte 128 on) above it. Its scale is the signed byte 192 + 8n + 2·quarter + pos / 16.
    /// </summary>
    public static int Q6_KCode<T>(T bytes, int n, int quarter, int pos) where T : IBlockBytes, allows ref struct
    {
        int low = bytes.Byte(64 * n + 32 * (quarter & 1) + pos);
        return (quarter < 2 ? low & 15 : low >> 4) | ((bytes.Byte(128 + 32 * n + pos) >> (2 * quarter)) & 3) << 4;
    }
}
