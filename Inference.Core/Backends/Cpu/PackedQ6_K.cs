using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q6_K weights repacked eight rows at a time so that one <c>vpdpbusd</c> lane belongs to one output row (as
/// <see cref="PackedQ4_K"/>): the int32 lanes of a sub-block's products are the eight rows' exact sub-block dot
/// products, and the scales and float work are applied once per sub-block or super-block for eight rows.
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, super-block s (256 columns):  1696 bytes
///    [   0,   32)  d of the 8 rows as f32
///    [  32,  160)  p = 0..7: rows 0..7 × (sc[2p], sc[2p + 1]), the signed 8-bit scales of sub-blocks 2p and 2p + 1
///    [ 160, 1696)  n = 0..1, half = 0..1: 384 bytes of planes P0, P1, P2 (128 B each), k = 0..3: rows 0..7 × 4 bytes
///                  (32 B per k), byte e of a row holding the codes c0..c3 of the four quarters at column
///                  128n + 32·quarter + 16·half + 4k + e:
///                    P0 = c0 + 64·(c1 div 16)    P1 = c2 + 64·(c3 div 16)    P2 = (c1 mod 16) + 16·(c3 mod 16)
///                  so c0 and c2 are a mask away (P0, P1 mod 64) and c1, c3 take three shifts between them, where the
///                  GGUF layout (low nibbles in ql, two bits in qh) takes five shifts per four codes
///
///  lane j of y[b, 8g + j] += d_j·d_x·(Σ_sub sc_j,sub·Σ_c q·q_x  −  32·Σ_sub sc_j,sub·bsums[sub])      (int32, exact)
/// </code>
/// The integer sums are those of <see cref="Q6_KKernel"/> (ggml's <c>vec_dot_q6_K_q8_K</c>: codes used unsigned, the −32
/// offset from the Q8_K bsums); here the offset is subtracted in the integer domain before the one f32 scaling per
/// super-block (the unpacked kernel scales both terms in f32), so results differ from it by f32 rounding only. Rows
/// after the last whole group keep the GGUF layout and go through <see cref="Q6_KKernel"/>. The kernel is
/// <see cref="PackedK16{TCodes}"/>, shared with Q3_K and Q2_K (<see cref="PackedQ3_K"/>, <see cref="PackedQ2_K"/>).
/// </remarks>
internal readonly unsafe struct PackedQ6_K : IPackedKernel
{
    public static GgmlType Type => GgmlType.Q6_K;

    public static int PackedBlockBytes => PackedK16<Q6_KPlanes>.PackedBlock;

    public static int ActivationBlock => 256;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q6_KKernel>(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int block) => PackedK16<Q6_KPlanes>.PackBlock(dst, w, g, block);

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa =>
        PackedK16<Q6_KPlanes>.Tile<TTile, TIsa>(a, group, g, b);
}

/// <summary>
/// How one K-quant type with sixteen 16-value sub-blocks per super-block (Q6_K, Q3_K, Q2_K) is laid out for
/// <see cref="PackedK16{TCodes}"/>: its code planes, its sub-block scales and what the Q8_K bsums are used for.
/// </summary>
internal unsafe interface IK16Codes
{
    /// <summary>Bytes of one GGUF super-block.</summary>
    static abstract int BlockBytes { get; }

    /// <summary>Code planes of 128 bytes per (n, half) quarter-block.</summary>
    static abstract int Planes { get; }

    /// <summary>True when the type has a min per sub-block (Q2_K: y += d_x·(d·Σ sc·dot − dmin·Σ m·bsums)); false when
    /// its codes carry an offset (Q6_K, Q3_K: y += d·d_x·(Σ sc·dot − 2^OffsetShift·Σ sc·bsums)).</summary>
    static abstract bool Mins { get; }

    /// <summary>log2 of the code offset: 5 (Q6_K, 32) or 2 (Q3_K, 4); unused with <see cref="Mins"/>.</summary>
    static abstract int OffsetShift { get; }

    /// <summary>True when four steps of pair products fit a short (at most 8 · 127 · max code ≤ 32,767), so a sub-block
    /// is widened once instead of twice on the one-batch-row path.</summary>
    static abstract bool FourStepShorts { get; }

    /// <summary>Row <paramref name="j"/>'s f32 d (and dmin) into <paramref name="d"/>[j] (and d[8 + j]), and the stored byte
    /// of each of the 16 sub-blocks to <paramref name="subBlockBytes"/>: its scale (with the min in the high nibble for Q2_K).</summary>
    static abstract void Header(byte* src, float* d, int j, Span<byte> subBlockBytes);

    /// <summary>The unsigned code of element 128n + 32·quarter + pos of a GGUF super-block.</summary>
    static abstract int Code(ReadOnlySpan<byte> block, int n, int quarter, int pos);

    /// <summary>Writes the code bytes of one column of the four quarters to <paramref name="plane"/>, plane + 128, ….</summary>
    static abstract void Encode(byte* plane, int c0, int c1, int c2, int c3);

    /// <summary>The codes of the four quarters of one step from the planes at <paramref name="p"/>.</summary>
    static abstract void AllCodes(byte* p, out Vector256<byte> c0, out Vector256<byte> c1, out Vector256<byte> c2, out Vector256<byte> c3);

    /// <summary>The codes of quarters <paramref name="a"/> and a + 2 of one step from the planes at <paramref name="p"/>.</summary>
    static abstract void Codes(byte* p, int a, out Vector256<byte> cl, out Vector256<byte> ch);

    /// <summary>The 16 stored bytes at <paramref name="pairs"/> (rows 0..7 × sub-blocks 2p, 2p + 1) as the scales, one short each.</summary>
    static abstract Vector256<short> ScaleShorts(byte* pairs);

    /// <summary>The 16 stored bytes at <paramref name="pairs"/> as the factors of the bsums (scales, or Q2_K's mins), one short each.</summary>
    static abstract Vector256<short> BsumFactors(byte* pairs);
}

/// <summary>Q6_K's planes (<see cref="PackedQ6_K"/>).</summary>
internal readonly unsafe struct Q6_KPlanes : IK16Codes
{
    private const int PlaneBytes = 128;

    public static int BlockBytes => 210;
    public static int Planes => 3;
    public static bool Mins => false;
    public static int OffsetShift => 5;
    public static bool FourStepShorts => false;

    public static void Header(byte* src, float* d, int j, Span<byte> subBlockBytes)
    {
        d[j] = Fp16.ToFloat(*(ushort*)(src + 208));
        new ReadOnlySpan<byte>(src + 192, 16).CopyTo(subBlockBytes);
    }

    public static int Code(ReadOnlySpan<byte> block, int n, int quarter, int pos) => Dequantize.Q6_KCode(block, n, quarter, pos);

    public static void Encode(byte* plane, int c0, int c1, int c2, int c3)
    {
        plane[0] = (byte)(c0 | (c1 >> 4) << 6);
        plane[PlaneBytes] = (byte)(c2 | (c3 >> 4) << 6);
        plane[2 * PlaneBytes] = (byte)((c1 & 15) | (c3 & 15) << 4);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AllCodes(byte* p, out Vector256<byte> c0, out Vector256<byte> c1, out Vector256<byte> c2, out Vector256<byte> c3)
    {
        var p0 = Vector256.Load(p);
        var p1 = Vector256.Load(p + PlaneBytes);
        var p2 = Vector256.Load(p + 2 * PlaneBytes);
        EvenCodes(p0, p1, out c0, out c2);
        OddCodes(p0, p1, p2, out c1, out c3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Codes(byte* p, int a, out Vector256<byte> cl, out Vector256<byte> ch)
    {
        var p0 = Vector256.Load(p);
        var p1 = Vector256.Load(p + PlaneBytes);
        if (a == 0) EvenCodes(p0, p1, out cl, out ch);
        else OddCodes(p0, p1, Vector256.Load(p + 2 * PlaneBytes), out cl, out ch);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ScaleShorts(byte* pairs) => Avx2.ConvertToVector256Int16((sbyte*)pairs);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> BsumFactors(byte* pairs) => Avx2.ConvertToVector256Int16((sbyte*)pairs);

    /// <summary>Quarters 0 and 2 of a step from planes P0 and P1: a mask away.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void EvenCodes(Vector256<byte> p0, Vector256<byte> p1, out Vector256<byte> c0, out Vector256<byte> c2)
    {
        c0 = p0 & Vector256.Create((byte)0x3F);
        c2 = p1 & Vector256.Create((byte)0x3F);
    }

    /// <summary>Quarters 1 and 3 of a step: low bits from P2, top two bits from P0 and P1. The 16-bit shifts leak bits
    /// across bytes only into positions the masks clear.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void OddCodes(Vector256<byte> p0, Vector256<byte> p1, Vector256<byte> p2, out Vector256<byte> c1, out Vector256<byte> c3)
    {
        var low4 = Vector256.Create((byte)0x0F);
        var bits45 = Vector256.Create((byte)0x30);
        c1 = (p2 & low4) | (Avx2.ShiftRightLogical(p0.AsUInt16(), 2).AsByte() & bits45);
        c3 = (Avx2.ShiftRightLogical(p2.AsUInt16(), 4).AsByte() & low4) | (Avx2.ShiftRightLogical(p1.AsUInt16(), 2).AsByte() & bits45);
    }
}

/// <summary>
/// The packed kernel of the K-quants with sixteen 16-value sub-blocks per super-block (<see cref="PackedQ6_K"/>,
/// <see cref="PackedQ3_K"/>, <see cref="PackedQ2_K"/>) for one code layout: f32 d (and dmin) of the eight rows, the
/// sub-block bytes of the eight rows in pairs, then <see cref="IK16Codes.Planes"/> code planes per quarter-block.
/// </summary>
/// <remarks>Every output sees the same operations whatever the batch size, so a request's tokens do not depend on what it
/// is batched with. Runs with AVX-VNNI or on AVX2 alone (<see cref="PassMadd{TTile, TQ}"/>, <see cref="QuartersMadd"/>),
/// with the same exact integer sums and so the same bits.</remarks>
internal static unsafe class PackedK16<TCodes> where TCodes : IK16Codes
{
    private const int GroupRows = PackedWeights.GroupRows;
    private const int PlaneBytes = 128;

    // NOTE: the layout's sizes are constants of TCodes; marked for inlining so that the hot loop sees them as constants
    // (a prefetch line count left to a call made every prefetch a call and eight compares).
    private static int ScalesOffset
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => TCodes.Mins ? 64 : 32;
    }

    private static int CodesOffset
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => ScalesOffset + 128;
    }

    private static int QuarterBlockBytes
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => TCodes.Planes * PlaneBytes;
    }

    /// <summary>Bytes per group and super-block.</summary>
    public static int PackedBlock
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => CodesOffset + 4 * QuarterBlockBytes;
    }

    private static int PrefetchDistance
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => 4 * PackedBlock;
    }

    /// <summary>Cache lines asked for per quarter-block (four of them cover a packed block).</summary>
    private static int PrefetchLinesPerQuarter
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (PackedBlock + 255) >> 8;
    }

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int s)
    {
        Span<byte> sub = stackalloc byte[16];
        for (int j = 0; j < GroupRows; j++)
        {
            byte* src = w.Data + (8L * g + j) * w.RowBytes + (long)s * TCodes.BlockBytes;
            var block = new ReadOnlySpan<byte>(src, TCodes.BlockBytes);
            TCodes.Header(src, (float*)dst, j, sub);
            for (int p = 0; p < 8; p++)
            {
                dst[ScalesOffset + 16 * p + 2 * j] = sub[2 * p];
                dst[ScalesOffset + 16 * p + 2 * j + 1] = sub[2 * p + 1];
            }
            for (int n = 0; n < 2; n++)
            for (int half = 0; half < 2; half++)
            for (int k = 0; k < 4; k++)
            for (int e = 0; e < 4; e++)
            {
                int pos = 16 * half + 4 * k + e;
                TCodes.Encode(dst + CodesOffset + QuarterBlockBytes * (2 * n + half) + 32 * k + 4 * j + e,
                    TCodes.Code(block, n, 0, pos), TCodes.Code(block, n, 1, pos), TCodes.Code(block, n, 2, pos), TCodes.Code(block, n, 3, pos));
            }
        }
    }

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa
    {
        int nsb = a.Cols / 256, batch = a.Batch;
        // Super-block s of batch row b + t: quants at q + s·qStep + 256t, scale at d[s·batch + t],
        // sums at bsums + s·bsStep + 16t.
        sbyte* q = a.Q + 256L * b;
        float* dx = a.D + b;
        short* bsums = a.BSums + 16L * b;
        long qStep = 256L * batch, bsStep = 16L * batch;
        // NOTE: the row sums accumulate in y itself (these eight outputs belong to this group alone), as in PackedQ4_K.
        float* y = a.Y + (long)b * a.Rows + 8L * g;
        for (int t = 0; t < TTile.Count; t++) Vector256<float>.Zero.Store(y + (long)t * a.Rows);
        // Batch 1 asks for lines far ahead where the weights stream from memory (as in PackedQ4_K).
        bool far = a.Streams && b == 0 && TTile.Count == 1;
        for (int s = 0; s < nsb; s++)
        {
            byte* blk = group + (long)s * PackedBlock;
            sbyte* qs = q + s * qStep;
            short* bs = bsums + s * bsStep;
            float* ds = dx + (long)s * batch;

            // Σ_sub sc_sub·Σ_c q·q_x per row.
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int n = 0; n < 2; n++)
            for (int half = 0; half < 2; half++)
            {
                // NOTE: as in PackedQ4_K, the lines a few super-blocks ahead are asked for while the first tile runs, a
                // quarter of them per (n, half); Q6_K, two threads, batch 1, best call of kernels-quick: 16.6–17.2 GB/s
                // without, 18.2–18.6 with, and no cost in cache.
                if (b == 0)
                    PackedSteps.PrefetchLines(blk + PrefetchDistance + 64 * PrefetchLinesPerQuarter * (2 * n + half), PrefetchLinesPerQuarter);
                if (far) PackedSteps.PrefetchFar(blk + 64 * PrefetchLinesPerQuarter * (2 * n + half), PrefetchLinesPerQuarter);
                if (TIsa.Vnni)
                {
                    Pass<TTile, TIsa, Quarters02>(blk, n, half, qs, ref i0, ref i1, ref i2, ref i3);
                    Pass<TTile, TIsa, Quarters13>(blk, n, half, qs, ref i0, ref i1, ref i2, ref i3);
                }
                else if (TTile.Count == 1)
                {
                    i0 += QuartersMadd(blk, n, half, qs);
                }
                else
                {
                    PassMadd<TTile, Quarters02>(blk, n, half, qs, ref i0, ref i1, ref i2, ref i3);
                    PassMadd<TTile, Quarters13>(blk, n, half, qs, ref i0, ref i1, ref i2, ref i3);
                }
            }

            // Σ_sub f_sub·bsums[sub] per row (f the scales, or Q2_K's mins): pairs of factors against pairs of sums.
            Vector256<int> o0 = default, o1 = default, o2 = default, o3 = default;
            for (int p = 0; p < 8; p++)
            {
                var f = TCodes.BsumFactors(blk + ScalesOffset + 16 * p);
                o0 = TIsa.DotWords(o0, f, Vector256.Create(*(int*)(bs + 2 * p)).AsInt16());
                if (TTile.Count > 1) o1 = TIsa.DotWords(o1, f, Vector256.Create(*(int*)(bs + 16 + 2 * p)).AsInt16());
                if (TTile.Count > 2) o2 = TIsa.DotWords(o2, f, Vector256.Create(*(int*)(bs + 32 + 2 * p)).AsInt16());
                if (TTile.Count > 3) o3 = TIsa.DotWords(o3, f, Vector256.Create(*(int*)(bs + 48 + 2 * p)).AsInt16());
            }

            var dw = Vector256.Load((float*)blk);
            var dminw = TCodes.Mins ? Vector256.Load((float*)blk + 8) : default;
            Step(y, i0, o0, dw, dminw, ds[0]);
            if (TTile.Count > 1) Step(y + a.Rows, i1, o1, dw, dminw, ds[1]);
            if (TTile.Count > 2) Step(y + 2L * a.Rows, i2, o2, dw, dminw, ds[2]);
            if (TTile.Count > 3) Step(y + 3L * a.Rows, i3, o3, dw, dminw, ds[3]);
        }
    }

    /// <summary>y += d·d_x·(Σ sc·dot − 2^shift·Σ sc·bsums), or with mins y += d_x·(d·Σ sc·dot − dmin·Σ m·bsums), per row lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(float* y, Vector256<int> sumi, Vector256<int> offset, Vector256<float> dw, Vector256<float> dminw, float dx)
    {
        var scale = Vector256.Create(dx);
        if (!TCodes.Mins)
        {
            var shifted = TCodes.OffsetShift == 5 ? Avx2.ShiftLeftLogical(offset, 5) : Avx2.ShiftLeftLogical(offset, 2);
            Fma.MultiplyAdd(Avx.ConvertToVector256Single(sumi - shifted), dw * scale, Vector256.Load(y)).Store(y);
            return;
        }
        var acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(sumi), dw * scale, Vector256.Load(y));
        Fma.MultiplyAddNegated(Avx.ConvertToVector256Single(offset), dminw * scale, acc).Store(y);
    }

    /// <summary>Which two quarters of a 128-value half one pass decodes: quarters a and a + 2.</summary>
    private interface IQuarters
    {
        /// <summary>a: 0 or 1.</summary>
        static abstract int A { get; }
    }

    private readonly struct Quarters02 : IQuarters { public static int A => 0; }
    private readonly struct Quarters13 : IQuarters { public static int A => 1; }

    /// <summary>
    /// Sub-blocks 8n + 2a + half (quarter a) and 8n + 4 + 2a + half (quarter a + 2) of up to four batch rows
    /// (activations 256 bytes apart): four steps of four values, one chain per sub-block and row, then the scales.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Pass<TTile, TIsa, TQ>(byte* blk, int n, int half, sbyte* x,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3)
        where TTile : IBatchTile where TIsa : IIntegerIsa where TQ : IQuarters
    {
        byte* codes = blk + CodesOffset + QuarterBlockBytes * (2 * n + half);
        // Element 128n + 32·quarter + 16·half + 4k' (k' = 0..3) of batch row t is at x + 256t + that.
        sbyte* xl = x + 128 * n + 32 * TQ.A + 16 * half;
        Vector256<int> lo0 = default, lo1 = default, lo2 = default, lo3 = default;
        Vector256<int> hi0 = default, hi1 = default, hi2 = default, hi3 = default;
        for (int k = 0; k < 4; k++)
        {
            TCodes.Codes(codes + 32 * k, TQ.A, out var cl, out var ch);
            sbyte* xk = xl + 4 * k;
            lo0 = TIsa.Dot(lo0, cl, PackedSteps.Broadcast(xk));
            hi0 = TIsa.Dot(hi0, ch, PackedSteps.Broadcast(xk + 64));
            if (TTile.Count > 1)
            {
                lo1 = TIsa.Dot(lo1, cl, PackedSteps.Broadcast(xk + 256));
                hi1 = TIsa.Dot(hi1, ch, PackedSteps.Broadcast(xk + 320));
            }
            if (TTile.Count > 2)
            {
                lo2 = TIsa.Dot(lo2, cl, PackedSteps.Broadcast(xk + 512));
                hi2 = TIsa.Dot(hi2, ch, PackedSteps.Broadcast(xk + 576));
            }
            if (TTile.Count > 3)
            {
                lo3 = TIsa.Dot(lo3, cl, PackedSteps.Broadcast(xk + 768));
                hi3 = TIsa.Dot(hi3, ch, PackedSteps.Broadcast(xk + 832));
            }
        }
        // Pair p = 4n + quarter holds (sc[2p], sc[2p + 1]) per row as two shorts of one int lane.
        var scLo = Scales(blk, 4 * n + TQ.A, half);
        var scHi = Scales(blk, 4 * n + 2 + TQ.A, half);
        sumi0 += Avx2.MultiplyLow(lo0, scLo) + Avx2.MultiplyLow(hi0, scHi);
        if (TTile.Count > 1) sumi1 += Avx2.MultiplyLow(lo1, scLo) + Avx2.MultiplyLow(hi1, scHi);
        if (TTile.Count > 2) sumi2 += Avx2.MultiplyLow(lo2, scLo) + Avx2.MultiplyLow(hi2, scHi);
        if (TTile.Count > 3) sumi3 += Avx2.MultiplyLow(lo3, scLo) + Avx2.MultiplyLow(hi3, scHi);
    }

    /// <summary>
    /// <see cref="Pass{TTile, TIsa, TQ}"/> without VNNI: the <c>vpmaddubsw</c> pair products of two steps summed as shorts (at
    /// most 4 · 63 · 127 = 32,004, no overflow), then <c>vpmaddwd</c> against the scales as short pairs, twice per
    /// sub-block: the same exact sums.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PassMadd<TTile, TQ>(byte* blk, int n, int half, sbyte* x,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3)
        where TTile : IBatchTile where TQ : IQuarters
    {
        byte* codes = blk + CodesOffset + QuarterBlockBytes * (2 * n + half);
        sbyte* xl = x + 128 * n + 32 * TQ.A + 16 * half;
        var scLo = ScalePairs(blk, 4 * n + TQ.A, half);
        var scHi = ScalePairs(blk, 4 * n + 2 + TQ.A, half);
        // NOTE: written out rather than looped (as in PackedQ4_K): steps 0 and 1, then 2 and 3.
        MaddTwoSteps<TTile, TQ>(codes, xl, scLo, scHi, ref sumi0, ref sumi1, ref sumi2, ref sumi3);
        MaddTwoSteps<TTile, TQ>(codes + 64, xl + 8, scLo, scHi, ref sumi0, ref sumi1, ref sumi2, ref sumi3);
    }

    /// <summary>
    /// <see cref="PassMadd{TTile, TQ}"/> for one batch row, all four quarters at once: each step's planes are loaded
    /// once for the four code vectors (the two-pass form loads some twice, and at one batch row the loads and the
    /// registers they hold are what the step waits on), two steps summed as shorts per quarter (four where
    /// <see cref="IK16Codes.FourStepShorts"/>), then widened against the scales: the same exact sums.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> QuartersMadd(byte* blk, int n, int half, sbyte* x)
    {
        byte* codes = blk + CodesOffset + QuarterBlockBytes * (2 * n + half);
        // Quarter q of step k: activations at xl + 32q + 4k, scales of sub-block 8n + 2q + half.
        sbyte* xl = x + 128 * n + 16 * half;
        var select = ScaleSelect(half);
        // blkN + 16q: pair 4n + q of the scales.
        byte* blkN = blk + ScalesOffset + 64 * n;
        QuarterStepPair(codes, xl, out var l0, out var l1, out var l2, out var l3);
        QuarterStepPair(codes + 64, xl + 8, out var m0, out var m1, out var m2, out var m3);
        if (TCodes.FourStepShorts) return Widen(l0 + m0, l1 + m1, l2 + m2, l3 + m3, blkN, select);
        return Widen(l0, l1, l2, l3, blkN, select) + Widen(m0, m1, m2, m3, blkN, select);
    }

    /// <summary>The four quarters' short pair sums against their scales, summed per row lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Widen(Vector256<short> l0, Vector256<short> l1, Vector256<short> l2, Vector256<short> l3, byte* blkN, Vector256<byte> select) =>
        Avx2.MultiplyAddAdjacent(l0, ScalePairs(blkN, select)) + Avx2.MultiplyAddAdjacent(l1, ScalePairs(blkN + 16, select))
        + Avx2.MultiplyAddAdjacent(l2, ScalePairs(blkN + 32, select)) + Avx2.MultiplyAddAdjacent(l3, ScalePairs(blkN + 48, select));

    /// <summary>Steps k and k + 1 of <see cref="QuartersMadd"/> (codes at <paramref name="codes"/> and + 32): the pair
    /// products of each quarter summed as shorts.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void QuarterStepPair(byte* codes, sbyte* xk,
        out Vector256<short> l0, out Vector256<short> l1, out Vector256<short> l2, out Vector256<short> l3)
    {
        TCodes.AllCodes(codes, out var c0, out var c1, out var c2, out var c3);
        l0 = Avx2.MultiplyAddAdjacent(c0, PackedSteps.Broadcast(xk));
        l1 = Avx2.MultiplyAddAdjacent(c1, PackedSteps.Broadcast(xk + 32));
        l2 = Avx2.MultiplyAddAdjacent(c2, PackedSteps.Broadcast(xk + 64));
        l3 = Avx2.MultiplyAddAdjacent(c3, PackedSteps.Broadcast(xk + 96));
        TCodes.AllCodes(codes + 32, out c0, out c1, out c2, out c3);
        l0 += Avx2.MultiplyAddAdjacent(c0, PackedSteps.Broadcast(xk + 4));
        l1 += Avx2.MultiplyAddAdjacent(c1, PackedSteps.Broadcast(xk + 36));
        l2 += Avx2.MultiplyAddAdjacent(c2, PackedSteps.Broadcast(xk + 68));
        l3 += Avx2.MultiplyAddAdjacent(c3, PackedSteps.Broadcast(xk + 100));
    }

    /// <summary>Two steps of <see cref="PassMadd{TTile, TQ}"/> summed as shorts, then widened against the scales.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaddTwoSteps<TTile, TQ>(byte* codes, sbyte* xk, Vector256<short> scLo, Vector256<short> scHi,
        ref Vector256<int> sumi0, ref Vector256<int> sumi1, ref Vector256<int> sumi2, ref Vector256<int> sumi3)
        where TTile : IBatchTile where TQ : IQuarters
    {
        TCodes.Codes(codes, TQ.A, out var cl, out var ch);
        TCodes.Codes(codes + 32, TQ.A, out var cl1, out var ch1);
        sumi0 += MaddTwo(cl, ch, cl1, ch1, xk, scLo, scHi);
        if (TTile.Count > 1) sumi1 += MaddTwo(cl, ch, cl1, ch1, xk + 256, scLo, scHi);
        if (TTile.Count > 2) sumi2 += MaddTwo(cl, ch, cl1, ch1, xk + 512, scLo, scHi);
        if (TTile.Count > 3) sumi3 += MaddTwo(cl, ch, cl1, ch1, xk + 768, scLo, scHi);
    }

    /// <summary>One batch row's part of <see cref="MaddTwoSteps{TTile, TQ}"/>: codes of step k (cl, ch) and k + 1 (cl1, ch1)
    /// against activations at xk + 4k (low quarter) and xk + 64 + 4k (high quarter).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> MaddTwo(Vector256<byte> cl, Vector256<byte> ch, Vector256<byte> cl1, Vector256<byte> ch1,
        sbyte* xk, Vector256<short> scLo, Vector256<short> scHi)
    {
        var lo = Avx2.MultiplyAddAdjacent(cl, PackedSteps.Broadcast(xk)) + Avx2.MultiplyAddAdjacent(cl1, PackedSteps.Broadcast(xk + 4));
        var hi = Avx2.MultiplyAddAdjacent(ch, PackedSteps.Broadcast(xk + 64)) + Avx2.MultiplyAddAdjacent(ch1, PackedSteps.Broadcast(xk + 68));
        return Avx2.MultiplyAddAdjacent(lo, scLo) + Avx2.MultiplyAddAdjacent(hi, scHi);
    }

    /// <summary>The scales of sub-block 2p + <paramref name="half"/> of the eight rows as the short pairs (sc, sc) of each
    /// row lane: the stored (sc[2p], sc[2p + 1]) of a row widened to two shorts, then one of them copied to both.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> ScalePairs(byte* blk, int p, int half) => ScalePairs(blk + ScalesOffset + 16 * p, ScaleSelect(half));

    /// <summary><see cref="ScalePairs(byte*, int, int)"/> from the pair bytes at <paramref name="pairs"/>, with the shuffle
    /// of <see cref="ScaleSelect"/> chosen once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> ScalePairs(byte* pairs, Vector256<byte> select) =>
        Avx2.Shuffle(TCodes.ScaleShorts(pairs).AsByte(), select).AsInt16();

    /// <summary>The shuffle that copies the scale of sub-block 2p + <paramref name="half"/> to both shorts of each row lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> ScaleSelect(int half) => half == 0
        ? Vector256.Create((byte)0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13, 0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13)
        : Vector256.Create((byte)2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15, 2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15);

    /// <summary>The scales of sub-block 2p + <paramref name="half"/> of the eight rows as int lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Scales(byte* blk, int p, int half)
    {
        var pair = TCodes.ScaleShorts(blk + ScalesOffset + 16 * p).AsInt32();
        return half == 0 ? Avx2.ShiftRightArithmetic(Avx2.ShiftLeftLogical(pair, 16), 16) : Avx2.ShiftRightArithmetic(pair, 16);
    }
}
