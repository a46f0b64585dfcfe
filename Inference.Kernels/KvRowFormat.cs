using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels;

/// <summary>How the attention kernels read one head's row of K or V (headDim values of one token) as stored in the cache.</summary>
/// <typeparam name="T">The cache's element: <see cref="float"/>, <see cref="ILGPU.Half"/>, or <see cref="byte"/> for the block formats.</typeparam>
/// <remarks>
/// A row is read in groups of <see cref="KvRowGroups.GroupValues"/> values: value d = <see cref="Scale"/>(d / 32) · <see cref="Code"/>(d).
/// The float types have no scale (1); the block formats (<see cref="Q8_0Kv"/>, <see cref="Fp8E4M3Kv"/>) store per 32
/// values an f16 scale and 32 one-byte codes, and every d · code is exact in f32, so a kernel reading the blocks computes
/// the same numbers as over the dequantized rows, with nothing widened into memory first.
/// </remarks>
public interface IKvRowFormat<T> where T : unmanaged
{
    /// <summary>Elements of <typeparamref name="T"/> one head's row of <paramref name="headDim"/> values takes.</summary>
    int RowLength(int headDim);

    /// <summary>The scale of values <c>32 · group … 32 · group + 31</c> of the row that starts at element <paramref name="row"/>.</summary>
    float Scale(ArrayView<T> cache, long row, int group);

    /// <summary>Value <paramref name="d"/> of the row that starts at element <paramref name="row"/>, before its group's scale.</summary>
    float Code(ArrayView<T> cache, long row, int d);
}

/// <summary>Constants of the 32-value groups of <see cref="IKvRowFormat{T}"/>.</summary>
public static class KvRowGroups
{
    /// <summary>Values per scale group (the block formats' block).</summary>
    public const int GroupValues = 32;

    /// <summary>Bytes per block of the block formats: an f16 scale and 32 one-byte codes.</summary>
    public const int BlockBytes = 34;

    /// <summary>Value <paramref name="d"/> of a row: its group's scale times its code (exact for every format).</summary>
    public static float Load<T, TFormat>(ArrayView<T> cache, long row, int d)
        where T : unmanaged
        where TFormat : struct, IKvRowFormat<T>
    {
        TFormat f = default;
        return f.Scale(cache, row, d >> 5) * f.Code(cache, row, d);
    }

    /// <summary>Refuses a head size a block format (bytes as the element) cannot store: whole blocks of 32 per head.</summary>
    internal static void CheckHeadDim<T>(AttentionShape shape) where T : unmanaged
    {
        if (typeof(T) == typeof(byte) && shape.HeadDim % GroupValues != 0)
            throw new ArgumentException($"a block-format KV cache needs a head size that is a multiple of {GroupValues}; got {shape.HeadDim}.", nameof(shape));
    }

    /// <summary>The f32 value of the f16 bits <paramref name="bits"/> (exact).</summary>
    internal static float HalfToFloat(int bits) => (float)Interop.IntAsFloat((ushort)bits);

    /// <summary>The scale of block <paramref name="group"/> of a block-format row starting at byte <paramref name="row"/>.</summary>
    internal static float BlockScale(ArrayView<byte> cache, long row, int group)
    {
        long at = row + (long)group * BlockBytes;
        return HalfToFloat(cache[at] | (cache[at + 1] << 8));
    }

    /// <summary>The code byte of value <paramref name="d"/> of a block-format row starting at byte <paramref name="row"/>.</summary>
    internal static int BlockCode(ArrayView<byte> cache, long row, int d) => cache[row + (long)(d >> 5) * BlockBytes + 2 + (d & 31)];

    /// <summary>
    /// f16 bits of <paramref name="x"/>, nearest, ties to even (as <see cref="System.Half"/>'s conversion), in integer
    /// arithmetic so every accelerator gives the same bits (ILGPU's CPU accelerator converts in software otherwise).
    /// </summary>
    public static int FloatToHalfBits(float x)
    {
        uint b = Interop.FloatAsInt(x);
        int sign = (int)((b >> 16) & 0x8000);
        uint a = b & 0x7FFFFFFF;
        if (a > 0x7F800000) return sign | 0x7E00;                 // NaN
        if (a >= 0x477FF000) return sign | 0x7C00;                // ≥ 65520 (and ∞): ∞
        if (a >= 0x38800000)                                      // normal f16 (≥ 2^-14)
        {
            uint r = a - 0x38000000;                              // exponent re-biased from 127 to 15
            r += 0xFFF + ((r >> 13) & 1);
            return sign | (int)(r >> 13);
        }
        if (a <= 0x33000000) return sign;                         // ≤ 2^-25: 0 (2^-25 itself ties to even 0)
        int shift = 126 - (int)(a >> 23);                         // 14 … 24: value in units of 2^-24 is m >> shift
        uint m = (a & 0x7FFFFF) | 0x800000;
        uint q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1) != 0)) q++;
        return sign | (int)q;
    }

    /// <summary>Writes f16 bits little-endian at byte <paramref name="at"/>.</summary>
    internal static void WriteHalf(ArrayView<byte> cache, long at, int bits)
    {
        cache[at] = (byte)(bits & 0xFF);
        cache[at + 1] = (byte)(bits >> 8);
    }

    /// <summary>Largest magnitude of 32 values from <paramref name="src"/>.</summary>
    internal static float AbsMax(ArrayView<float> x, long src)
    {
        float amax = 0f;
        for (int i = 0; i < GroupValues; i++) amax = XMath.Max(amax, XMath.Abs(x[src + i]));
        return amax;
    }
}

/// <summary>Writes 32 values as one block of a block format (a KV write kernel's inner step).</summary>
public interface IKvBlockQuantizer
{
    /// <summary>Quantizes <c>x[src … src + 31]</c> into the 34 bytes at <c>cache[dst]</c>.</summary>
    void Quantize(ArrayView<float> x, long src, ArrayView<byte> cache, long dst);
}

/// <summary>f32 rows: the values as stored, no scale.</summary>
public readonly partial struct F32Element : IKvRowFormat<float>
{
    /// <inheritdoc />
    public int RowLength(int headDim) => headDim;

    /// <inheritdoc />
    public float Scale(ArrayView<float> cache, long row, int group) => 1f;

    /// <inheritdoc />
    public float Code(ArrayView<float> cache, long row, int d) => cache[row + d];
}

/// <summary>f16 rows: the values as stored, no scale.</summary>
public readonly partial struct F16Element : IKvRowFormat<ILGPU.Half>
{
    /// <inheritdoc />
    public int RowLength(int headDim) => headDim;

    /// <inheritdoc />
    public float Scale(ArrayView<ILGPU.Half> cache, long row, int group) => 1f;

    /// <inheritdoc />
    public float Code(ArrayView<ILGPU.Half> cache, long row, int d) => cache[row + d];
}

/// <summary>
/// ggml's Q8_0 blocks (Inference.Core's <c>KvBlockFormat</c>): per 32 values an f16 d = max|x| / 127 and 32 signed bytes
/// round(x / d), halves away from zero, with 1 / d unrounded, bit for bit as the CPU writes them.
/// </summary>
public readonly struct Q8_0Kv : IKvRowFormat<byte>, IKvBlockQuantizer
{
    /// <inheritdoc />
    public int RowLength(int headDim) => headDim / KvRowGroups.GroupValues * KvRowGroups.BlockBytes;

    /// <inheritdoc />
    public float Scale(ArrayView<byte> cache, long row, int group) => KvRowGroups.BlockScale(cache, row, group);

    // NOTE: sign-extended in 32-bit integer arithmetic: ILGPU 1.5.3 compiles (sbyte)(byte)x to PTX as an unsigned
    // byte conversion (see MatMulKernels).
    /// <inheritdoc />
    public float Code(ArrayView<byte> cache, long row, int d) => (KvRowGroups.BlockCode(cache, row, d) ^ 0x80) - 0x80;

    /// <inheritdoc />
    public void Quantize(ArrayView<float> x, long src, ArrayView<byte> cache, long dst)
    {
        float d = KvRowGroups.AbsMax(x, src) / 127f;
        float id = d != 0f ? 1f / d : 0f;
        KvRowGroups.WriteHalf(cache, dst, KvRowGroups.FloatToHalfBits(d));
        for (int i = 0; i < KvRowGroups.GroupValues; i++)
        {
            // round half away from zero: v − trunc(v) is exact
            float v = x[src + i] * id;
            int q = (int)v;
            float frac = v - q;
            if (frac >= 0.5f) q++;
            else if (frac <= -0.5f) q--;
            cache[dst + 2 + i] = (byte)(q & 0xFF);
        }
    }
}

/// <summary>
/// FP8 E4M3 blocks (Inference.Core's <c>KvBlockFormat</c>): per 32 values an f16 d = max|x| / 448 and 32 e4m3fn codes of
/// x / d (nearest, ties to even, saturating at ±448), bit for bit as the CPU writes them.
/// </summary>
public readonly struct Fp8E4M3Kv : IKvRowFormat<byte>, IKvBlockQuantizer
{
    /// <inheritdoc />
    public int RowLength(int headDim) => headDim / KvRowGroups.GroupValues * KvRowGroups.BlockBytes;

    /// <inheritdoc />
    public float Scale(ArrayView<byte> cache, long row, int group) => KvRowGroups.BlockScale(cache, row, group);

    /// <inheritdoc />
    public float Code(ArrayView<byte> cache, long row, int d) => FromE4M3(KvRowGroups.BlockCode(cache, row, d));

    /// <inheritdoc />
    public void Quantize(ArrayView<float> x, long src, ArrayView<byte> cache, long dst)
    {
        float amax = KvRowGroups.AbsMax(x, src);
        int bits = KvRowGroups.FloatToHalfBits(XMath.Min(amax / 448f, 65504f));
        KvRowGroups.WriteHalf(cache, dst, bits);
        float d = KvRowGroups.HalfToFloat(bits);
        for (int i = 0; i < KvRowGroups.GroupValues; i++)
            cache[dst + 2 + i] = d == 0f ? (byte)0 : (byte)ToE4M3(x[src + i] / d);
    }

    /// <summary>
    /// The value of an e4m3fn code (0x7F and 0xFF are NaN): normals built from their bits, subnormals as m · 2^-9, so no
    /// f32 subnormal is involved on any device.
    /// </summary>
    public static float FromE4M3(int code)
    {
        int e = (code >> 3) & 0xF, m = code & 7;
        float a = e == 0 ? m * (1f / 512f) : Interop.IntAsFloat((uint)(((e + 120) << 23) | (m << 20)));
        if ((code & 0x7F) == 0x7F) a = float.NaN;
        return (code & 0x80) != 0 ? -a : a;
    }

    /// <summary>The e4m3fn code nearest to <paramref name="x"/>, ties to even, ±448 beyond, NaN → 0x7F (integer arithmetic).</summary>
    public static int ToE4M3(float x)
    {
        uint b = Interop.FloatAsInt(x);
        int sign = (int)((b >> 24) & 0x80);
        uint a = b & 0x7FFFFFFF;
        if (a > 0x7F800000) return 0x7F;                          // NaN
        if (a >= 0x43E00000) return sign | 0x7E;                  // ≥ 448 (and ∞): 448
        int e = (int)(a >> 23) - 127;
        if (e >= -6)
        {
            uint mant = a & 0x7FFFFF;
            uint keep = mant >> 20, rem = mant & 0xFFFFF;
            if (rem > 0x80000 || (rem == 0x80000 && (keep & 1) != 0)) keep++;
            return sign | XMath.Min(((e + 7) << 3) + (int)keep, 0x7E);   // a carry moves into the exponent
        }
        if (e < -10) return sign;                                 // below 2^-10: under half the smallest step 2^-9
        int shift = 14 - e;                                       // 21 … 24: value in units of 2^-9 is m >> shift
        uint m24 = (a & 0x7FFFFF) | 0x800000;
        uint q = m24 >> shift, r = m24 & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (r > half || (r == half && (q & 1) != 0)) q++;
        return sign | (int)q;
    }
}
