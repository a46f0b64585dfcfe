using ILGPU;
using Inference.Backends.Cpu;

namespace Inference.Kernels.Layer;

/// <summary>
/// Dequantization of Q8_0 and block-type weight rows to f16 on the device, for the tensor-core matrix product of many
/// rows (the matrix, a slab of rows at a time, is widened once and multiplied as F16).
/// </summary>
/// <remarks>
/// <para>
/// Bit for bit what the host gives when it uploads such a matrix as F16: <see cref="Dequantize.Row"/>'s f32 value,
/// computed in the same order (<c>code · scale</c>, or <c>code · scale + min</c> for the types with a min), rounded to
/// the nearest f16, ties to even. The rounding to f16 is integer arithmetic (<see cref="HalfBits"/>), the same on every
/// accelerator: ILGPU's CPU accelerator converts to f16 in software, up to one ulp away from round-to-nearest-even.
/// </para>
/// <para>
/// NOTE: ILGPU emits <c>mul.f32</c> / <c>add.f32</c> without a rounding mode, which ptxas may contract into one
/// <c>fma</c> (one rounding instead of the host's two); for the types with a min the product passes through an integer
/// XOR with a kernel argument that is always zero, which keeps it rounded to f32 before the add.
/// </para>
/// </remarks>
public static partial class MatMulKernels
{
    /// <summary>
    /// <c>output[r, c] = f16(W[r, c])</c>. Implicitly grouped over <c>(cols / 8, rows)</c>: one thread per slot of 8
    /// weights, writing 4 words of 2 halves.
    /// </summary>
    /// <typeparam name="TBlock">The block type.</typeparam>
    /// <param name="index">(slot, row).</param>
    /// <param name="words">The raw block bytes viewed as 16-bit words, <c>[rows, cols / blockElements, blockBytes / 2]</c>.</param>
    /// <param name="output">f16 bits in pairs (low half first), <c>[rows, cols / 2]</c>.</param>
    /// <param name="cols">Row width, a multiple of the block's elements.</param>
    /// <param name="zero">Always 0 (see the remarks).</param>
    internal static void DequantizeToHalf<TBlock>(Index2D index, ArrayView<ushort> words, ArrayView<uint> output, int cols, int zero)
        where TBlock : struct, IWeightBlock
    {
        TBlock f = default;
        int parts = f.Elements / BlockSlotElements;
        long block = ((long)index.Y * (cols / f.Elements) + index.X / parts) * (f.Bytes / 2);
        var b = new DeviceBlockBytes(words, block);
        int e = index.X % parts * BlockSlotElements;
        var a = f.Scale(b, e);
        long o = ((long)index.Y * cols + (long)index.X * BlockSlotElements) >> 1;
        for (int i = 0; i < BlockSlotElements / 2; i++)
        {
            uint lo = HalfBits(Value(f, a, f.Code(b, e + 2 * i), zero));
            uint hi = HalfBits(Value(f, a, f.Code(b, e + 2 * i + 1), zero));
            output[o + i] = lo | hi << 16;
        }
    }

    /// <summary>One weight as <see cref="Dequantize.Row"/> computes it.</summary>
    private static float Value<TBlock>(TBlock f, Affine a, int code, int zero)
        where TBlock : struct, IWeightBlock
    {
        float p = code * a.Mul;
        if (!f.HasMin) return p;
        return Interop.IntAsFloat(Interop.FloatAsInt(p) ^ (uint)zero) + a.Add;
    }

    /// <summary>
    /// The f16 bits nearest to <paramref name="value"/>, ties to even (as <see cref="System.Half"/>'s conversion):
    /// overflow to infinity from 65520 on, subnormal results rounded in the same way, NaN kept quiet with its sign and
    /// the top bits of its payload.
    /// </summary>
    /// <param name="value">Any f32.</param>
    public static uint HalfBits(float value)
    {
        uint x = Interop.FloatAsInt(value);
        uint sign = (x >> 16) & 0x8000u;
        uint a = x & 0x7FFFFFFFu;
        if (a > 0x7F800000u) return sign | 0x7E00u | ((a >> 13) & 0x3FFu);
        if (a >= 0x477FF000u) return sign | 0x7C00u;                    // 65520 and above (and infinity)
        if (a >= 0x38800000u)
        {
            // normal: rebias the exponent (127 - 15), then round the 13 dropped bits to nearest even
            uint r = a - 0x38000000u;
            return sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13);
        }
        if (a <= 0x33000000u) return sign;                              // at most 2^-25: zero (2^-25 itself a tie to even)
        // subnormal: value = m · 2^(e - 150) = q · 2^-24 with q = m >> (126 - e), rounded to nearest even
        int shift = 126 - (int)(a >> 23);
        uint m = (a & 0x7FFFFFu) | 0x800000u;
        uint q = m >> shift;
        uint rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (q & 1u) != 0)) q++;
        return sign | q;
    }

    /// <summary>Q8_0 as a block type (for the dequantizer; the row kernels multiply Q8_0 with <see cref="MatMulQ8_0"/>).</summary>
    internal readonly struct Q8_0Block : IWeightBlock
    {
        public int Elements => 32;
        public int Bytes => 34;
        public bool HasMin => false;
        public Affine Scale(DeviceBlockBytes b, int e) => new(b.Half(0), 0f);
        public int Code(DeviceBlockBytes b, int e) => (b.Byte(2 + e) ^ 0x80) - 0x80;
    }
}
