using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q2_K weights repacked eight rows at a time (the <see cref="PackedQ6_K"/> layout and kernel,
/// <see cref="PackedK16{TCodes}"/>): four 2-bit codes per byte, one from each quarter of a quarter-block, so one load
/// and seven masks and shifts give a step's four code vectors for eight rows, and the 4-bit scales and mins are
/// widened once per sub-block for eight rows.
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, super-block s (256 columns):  704 bytes (672 as GGUF rows)
///    [   0,   32)  d of the 8 rows as f32
///    [  32,   64)  dmin of the 8 rows as f32
///    [  64,  192)  p = 0..7: rows 0..7 × (b[2p], b[2p + 1]), the GGUF scale bytes of sub-blocks 2p and 2p + 1
///                  (scale in the low nibble, min in the high nibble)
///    [ 192,  704)  n = 0..1, half = 0..1: 128 bytes, k = 0..3: rows 0..7 × 4 bytes (32 B per k), byte e of a row
///                  holding the codes c0..c3 of the four quarters at column 128n + 32·quarter + 16·half + 4k + e:
///                  c0 + 4·c1 + 16·c2 + 64·c3
///
///  lane j of y[b, 8g + j] += d_x·(d_j·Σ_sub sc_j,sub·Σ_c q·q_x  −  dmin_j·Σ_sub m_j,sub·bsums[sub])
///                                     └───── int32, exact ─────┘        └───── int32, exact ─────┘
/// </code>
/// The integer sums are those of <see cref="Q2_KKernel"/> (ggml's <c>vec_dot_q2_K_q8_K</c>), so results differ from it
/// by f32 rounding only. Rows after the last whole group keep the GGUF layout and go through <see cref="Q2_KKernel"/>.
/// </remarks>
internal readonly unsafe struct PackedQ2_K : IPackedKernel
{
    public static GgmlType Type => GgmlType.Q2_K;

    public static int PackedBlockBytes => PackedK16<Q2_KPlanes>.PackedBlock;

    public static int ActivationBlock => 256;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q2_KKernel>(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int block) => PackedK16<Q2_KPlanes>.PackBlock(dst, w, g, block);

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa =>
        PackedK16<Q2_KPlanes>.Tile<TTile, TIsa>(a, group, g, b);
}

/// <summary>Q2_K's plane (<see cref="PackedQ2_K"/>).</summary>
internal readonly unsafe struct Q2_KPlanes : IK16Codes
{
    public static int BlockBytes => 84;
    public static int Planes => 1;
    public static bool Mins => true;
    public static int OffsetShift => 0;
    public static bool FourStepShorts => true; // 8 · 127 · 3 = 3,048

    public static void Header(byte* src, float* d, int j, Span<byte> subBlockBytes)
    {
        d[j] = Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(src + 80, 2)));
        d[8 + j] = Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(src + 82, 2)));
        new ReadOnlySpan<byte>(src, 16).CopyTo(subBlockBytes);
    }

    public static int Code(ReadOnlySpan<byte> block, int n, int quarter, int pos) => Dequantize.K2Code(block.Slice(16, 64), n, quarter, pos);

    public static void Encode(byte* plane, int c0, int c1, int c2, int c3) => plane[0] = (byte)(c0 | c1 << 2 | c2 << 4 | c3 << 6);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AllCodes(byte* p, out Vector256<byte> c0, out Vector256<byte> c1, out Vector256<byte> c2, out Vector256<byte> c3)
    {
        var three = Vector256.Create((byte)3);
        var v = Vector256.Load(p).AsUInt16();
        c0 = v.AsByte() & three;
        c1 = Avx2.ShiftRightLogical(v, 2).AsByte() & three;
        c2 = Avx2.ShiftRightLogical(v, 4).AsByte() & three;
        c3 = Avx2.ShiftRightLogical(v, 6).AsByte() & three;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Codes(byte* p, int a, out Vector256<byte> cl, out Vector256<byte> ch)
    {
        var three = Vector256.Create((byte)3);
        var v = Vector256.Load(p).AsUInt16();
        cl = (a == 0 ? v : Avx2.ShiftRightLogical(v, 2)).AsByte() & three;
        ch = (a == 0 ? Avx2.ShiftRightLogical(v, 4) : Avx2.ShiftRightLogical(v, 6)).AsByte() & three;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ScaleShorts(byte* pairs) => Avx2.ConvertToVector256Int16(pairs) & Vector256.Create((short)0x0F);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> BsumFactors(byte* pairs) => Avx2.ShiftRightLogical(Avx2.ConvertToVector256Int16(pairs), 4);
}
