namespace Inference.Loading;

/// <summary>Tensor element types of the GGML/GGUF format (the numeric values are the on-disk codes).</summary>
public enum GgmlType : uint
{
    /// <summary>32-bit float.</summary>
    F32 = 0,
    /// <summary>IEEE half.</summary>
    F16 = 1,
    /// <summary>32 weights: f16 scale + 16 bytes of 4-bit values (offset 8).</summary>
    Q4_0 = 2,
    /// <summary>32 weights: f16 scale, f16 min, 16 bytes of 4-bit values.</summary>
    Q4_1 = 3,
    /// <summary>32 weights: f16 scale, 4 bytes of fifth bits, 16 bytes of low nibbles (offset 16).</summary>
    Q5_0 = 6,
    /// <summary>32 weights: f16 scale, f16 min, 4 bytes of fifth bits, 16 bytes of low nibbles.</summary>
    Q5_1 = 7,
    /// <summary>32 weights: f16 scale + 32 signed bytes.</summary>
    Q8_0 = 8,
    /// <summary>32 weights: f32 scale, f32 sum, 32 signed bytes.</summary>
    Q8_1 = 9,
    /// <summary>K-quant, 2-bit: 256 weights in 16 sub-blocks with 4-bit scales and mins.</summary>
    Q2_K = 10,
    /// <summary>K-quant, 3-bit: 256 weights in 16 sub-blocks with 6-bit signed scales.</summary>
    Q3_K = 11,
    /// <summary>K-quant, 4-bit: 256 weights in 8 sub-blocks with 6-bit scales and mins.</summary>
    Q4_K = 12,
    /// <summary>K-quant, 5-bit.</summary>
    Q5_K = 13,
    /// <summary>K-quant, 6-bit: 256 weights in 16 sub-blocks with 8-bit scales.</summary>
    Q6_K = 14,
    /// <summary>K-quant intermediate, 8-bit.</summary>
    Q8_K = 15,
    /// <summary>32 weights: f16 scale + 16 bytes of 4-bit indices into a fixed non-linear table.</summary>
    IQ4_NL = 20,
    /// <summary>256 weights: IQ4_NL's table in 8 sub-blocks of 32 with 6-bit scales.</summary>
    IQ4_XS = 23,
    /// <summary>8-bit integer.</summary>
    I8 = 24,
    /// <summary>16-bit integer.</summary>
    I16 = 25,
    /// <summary>32-bit integer.</summary>
    I32 = 26,
    /// <summary>64-bit integer.</summary>
    I64 = 27,
    /// <summary>64-bit float.</summary>
    F64 = 28,
    /// <summary>bfloat16.</summary>
    BF16 = 30,
}

/// <summary>Block geometry of each <see cref="GgmlType"/>.</summary>
public static class GgmlTypeInfo
{
    /// <summary>Returns (elements per block, bytes per block) or false when the type code is unknown.</summary>
    public static bool TryGetBlock(GgmlType type, out int blockElements, out int blockBytes)
    {
        (blockElements, blockBytes) = type switch
        {
            GgmlType.F32 => (1, 4),
            GgmlType.F16 => (1, 2),
            GgmlType.BF16 => (1, 2),
            GgmlType.Q4_0 => (32, 18),
            GgmlType.Q4_1 => (32, 20),
            GgmlType.Q5_0 => (32, 22),
            GgmlType.Q5_1 => (32, 24),
            GgmlType.Q8_0 => (32, 34),
            GgmlType.Q8_1 => (32, 36),
            GgmlType.Q2_K => (256, 84),
            GgmlType.Q3_K => (256, 110),
            GgmlType.Q4_K => (256, 144),
            GgmlType.Q5_K => (256, 176),
            GgmlType.Q6_K => (256, 210),
            GgmlType.Q8_K => (256, 292),
            GgmlType.IQ4_NL => (32, 18),
            GgmlType.IQ4_XS => (256, 136),
            GgmlType.I8 => (1, 1),
            GgmlType.I16 => (1, 2),
            GgmlType.I32 => (1, 4),
            GgmlType.I64 => (1, 8),
            GgmlType.F64 => (1, 8),
            _ => (0, 0),
        };
        return blockElements != 0;
    }

    /// <summary>Elements per block of <paramref name="type"/>.</summary>
    public static int BlockElements(GgmlType type) =>
        TryGetBlock(type, out var e, out _) ? e : throw new ArgumentOutOfRangeException(nameof(type), type, "unknown GGML type");

    /// <summary>Bytes per block of <paramref name="type"/>.</summary>
    public static int BlockBytes(GgmlType type) =>
        TryGetBlock(type, out _, out var b) ? b : throw new ArgumentOutOfRangeException(nameof(type), type, "unknown GGML type");

    /// <summary>Bytes taken by one row of <paramref name="elements"/> values (a whole number of blocks).</summary>
    public static long RowBytes(GgmlType type, long elements) => elements / BlockElements(type) * BlockBytes(type);
}
