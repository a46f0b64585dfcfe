using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q3_K weights repacked eight rows at a time (the <see cref="PackedQ6_K"/> layout and kernel,
/// <see cref="PackedK16{TCodes}"/>): each value's two low bits and high bit combined at load into one code 0..7 held
/// in a nibble, the 6-bit scales unpacked to signed bytes, so a step's four code vectors are two loads and six
/// masks and shifts away (the GGUF layout takes a shift, a mask and the high bit's three steps per vector).
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, super-block s (256 columns):  1184 bytes (880 as GGUF rows)
///    [   0,   32)  d of the 8 rows as f32
///    [  32,  160)  p = 0..7: rows 0..7 × (sc[2p] − 32, sc[2p + 1] − 32), the scales of sub-blocks 2p and 2p + 1
///    [ 160, 1184)  n = 0..1, half = 0..1: 256 bytes of planes P0, P1 (128 B each), k = 0..3: rows 0..7 × 4 bytes
///                  (32 B per k), byte e of a row holding the codes c0..c3 (q + 4h, 0..7) of the four quarters at column
///                  128n + 32·quarter + 16·half + 4k + e:   P0 = c0 + 16·c2    P1 = c1 + 16·c3
///
///  lane j of y[b, 8g + j] += d_j·d_x·(Σ_sub sc_j,sub·Σ_c q·q_x  −  4·Σ_sub sc_j,sub·bsums[sub])      (int32, exact)
/// </code>
/// The integer sums are those of <see cref="Q3_KKernel"/> (ggml's <c>vec_dot_q3_K_q8_K</c>: the −4 of the codes whose
/// high bit is clear from the Q8_K bsums), so results differ from it by f32 rounding only. Rows after the last whole
/// group keep the GGUF layout and go through <see cref="Q3_KKernel"/>.
/// </remarks>
internal readonly unsafe struct PackedQ3_K : IPackedKernel
{
    public static GgmlType Type => GgmlType.Q3_K;

    public static int PackedBlockBytes => PackedK16<Q3_KPlanes>.PackedBlock;

    public static int ActivationBlock => 256;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q3_KKernel>(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int block) => PackedK16<Q3_KPlanes>.PackBlock(dst, w, g, block);

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa =>
        PackedK16<Q3_KPlanes>.Tile<TTile, TIsa>(a, group, g, b);
}

/// <summary>Q3_K's planes (<see cref="PackedQ3_K"/>).</summary>
internal readonly unsafe struct Q3_KPlanes : IK16Codes
{
    private const int PlaneBytes = 128;

    public static int BlockBytes => 110;
    public static int Planes => 2;
    public static bool Mins => false;
    public static int OffsetShift => 2;
    public static bool FourStepShorts => true; // 8 · 127 · 7 = 7,112

    public static void Header(byte* src, float* d, int j, Span<byte> subBlockBytes)
    {
        var scales = new ReadOnlySpan<byte>(src + 96, 12);
        d[j] = Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(src + 108, 2)));
        for (int sub = 0; sub < 16; sub++) subBlockBytes[sub] = (byte)(sbyte)(Dequantize.Q3_KScale(scales, sub) - 32);
    }

    public static int Code(ReadOnlySpan<byte> block, int n, int quarter, int pos) =>
        Dequantize.K2Code(block.Slice(32, 64), n, quarter, pos) | ((block[pos] >> (4 * n + quarter)) & 1) << 2;

    public static void Encode(byte* plane, int c0, int c1, int c2, int c3)
    {
        plane[0] = (byte)(c0 | c2 << 4);
        plane[PlaneBytes] = (byte)(c1 | c3 << 4);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AllCodes(byte* p, out Vector256<byte> c0, out Vector256<byte> c1, out Vector256<byte> c2, out Vector256<byte> c3)
    {
        Nibbles(Vector256.Load(p), out c0, out c2);
        Nibbles(Vector256.Load(p + PlaneBytes), out c1, out c3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Codes(byte* p, int a, out Vector256<byte> cl, out Vector256<byte> ch) =>
        Nibbles(Vector256.Load(p + PlaneBytes * a), out cl, out ch);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ScaleShorts(byte* pairs) => Avx2.ConvertToVector256Int16((sbyte*)pairs);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> BsumFactors(byte* pairs) => Avx2.ConvertToVector256Int16((sbyte*)pairs);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Nibbles(Vector256<byte> v, out Vector256<byte> lo, out Vector256<byte> hi)
    {
        var nibble = Vector256.Create((byte)0x0F);
        lo = v & nibble;
        hi = Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & nibble;
    }
}
