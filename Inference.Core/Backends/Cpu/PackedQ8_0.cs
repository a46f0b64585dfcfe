using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q8_0 weights repacked eight rows at a time so that one <c>vpdpbusd</c> lane belongs to one output row: the eight
/// int32 lanes of a block's products become the eight rows' exact block dot products without a horizontal sum, and the
/// float work (convert, scale, accumulate) is paid once per block for eight rows instead of once per row.
/// </summary>
/// <remarks>
/// <code>
///  group g = rows 8g … 8g+7, block i (32 columns):  272 bytes, as many as the eight GGUF blocks
///    [ d_w of the 8 rows as f16 (16 B) | k = 0..7: rows 0..7 × bytes 4k..4k+3 of the block, each w + 128 (8 × 32 B) ]
///  y[b, 8g + j] = Σ_i (d_w[j]·d_x[b, i]) · (Σ_c (w + 128)·q_x − 128·Σ_c q_x)       (lane j, int32 exact)
/// </code>
/// Rows after the last whole group keep the GGUF layout and go through <see cref="Q8_0Kernel"/>. Every output sees the
/// same operations whatever the batch size, so a request's tokens do not depend on what it is batched with. The f32
/// order differs from ggml's <c>vec_dot_q8_0_q8_0</c> (which converts eight partial lanes per block): about 1e-7
/// relative per product. With AVX-VNNI the stored w + 128 feeds <c>vpdpbusd</c>; on AVX2 alone see
/// <see cref="TileMadd{TTile}"/>.
/// </remarks>
internal readonly unsafe struct PackedQ8_0 : IPackedKernel
{
    private const int GroupRows = PackedWeights.GroupRows;
    private const int BlockBytes = 34;
    private const int ScalesBytes = 16;
    private const int PackedBlock = ScalesBytes + 8 * 32;
    private const int PrefetchDistance = 8 * PackedBlock;

    public static GgmlType Type => GgmlType.Q8_0;

    public static int PackedBlockBytes => PackedBlock;

    public static int ActivationBlock => 32;

    public static void TailRows(in MatMulArgs a, int rowStart, int rowEnd) => QuantKernel.Rows<Q8_0Kernel>(a, rowStart, rowEnd);

    public static void PackBlock(byte* dst, in WeightMatrix w, int g, int i)
    {
        for (int j = 0; j < GroupRows; j++)
        {
            byte* src = w.Data + (8L * g + j) * w.RowBytes + (long)i * BlockBytes;
            ((ushort*)dst)[j] = *(ushort*)src;
            // Four-byte group k of row j goes to int 8k + j of the block's quants, each byte + 128.
            int* groups4 = (int*)(dst + ScalesBytes);
            for (int k = 0; k < 8; k++) groups4[8 * k + j] = Unsafe.ReadUnaligned<int>(src + 2 + 4 * k) ^ unchecked((int)0x80808080);
        }
    }

    public static void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa
    {
        if (!TIsa.Vnni)
        {
            TileMadd<TTile>(a, group, g, b);
            return;
        }
        int nb = a.Cols / 32, batch = a.Batch;
        // Block i of batch row b + t: quants at q + i·qStep + 32t, scale and −8·Σq at [i·batch + t].
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
        int* s = a.Sums + b;
        long qStep = 32L * batch;
        Vector256<float> y0 = default, y1 = default, y2 = default, y3 = default;
        // Batch 1 (a group left over by TileTwoGroups) asks for lines far ahead where the weights stream from memory.
        bool far = a.Streams && b == 0 && TTile.Count == 1;
        for (int i = 0; i < nb; i++)
        {
            byte* blk = group + (long)i * PackedBlock;
            // NOTE: as in PackedQ4_K: one batch row leaves the hardware prefetcher alone too few loads in flight.
            // Five lines from the block PrefetchDistance ahead: with the next block's five, every line of the stream.
            if (b == 0) PackedSteps.PrefetchLines(blk + PrefetchDistance, 5);
            if (far) PackedSteps.PrefetchFar(blk, 5);
            // NOTE: f16 scales keep the packed block as small as the GGUF blocks (decode streams every byte); widening
            // eight of them costs a few vector operations per block, shared by the tile's batch rows.
            var dw = PackedSteps.RowScales(blk);
            byte* wq = blk + ScalesBytes;
            var w0 = Vector256.Load(wq);
            var w1 = Vector256.Load(wq + 32);
            var w2 = Vector256.Load(wq + 64);
            var w3 = Vector256.Load(wq + 96);
            var w4 = Vector256.Load(wq + 128);
            var w5 = Vector256.Load(wq + 160);
            var w6 = Vector256.Load(wq + 192);
            var w7 = Vector256.Load(wq + 224);
            sbyte* qe = q + i * qStep;
            long e = (long)i * batch;
            y0 = Step<TIsa>(y0, w0, w1, w2, w3, w4, w5, w6, w7, (int*)qe, s[e], dw, d[e]);
            if (TTile.Count > 1) y1 = Step<TIsa>(y1, w0, w1, w2, w3, w4, w5, w6, w7, (int*)(qe + 32), s[e + 1], dw, d[e + 1]);
            if (TTile.Count > 2) y2 = Step<TIsa>(y2, w0, w1, w2, w3, w4, w5, w6, w7, (int*)(qe + 64), s[e + 2], dw, d[e + 2]);
            if (TTile.Count > 3) y3 = Step<TIsa>(y3, w0, w1, w2, w3, w4, w5, w6, w7, (int*)(qe + 96), s[e + 3], dw, d[e + 3]);
        }
        PackedSteps.StoreTile<TTile>(a, g, b, y0, y1, y2, y3);
    }

    public static bool InterleavesGroups => true;

    public static void TileTwoGroups<TIsa>(in MatMulArgs a, byte* groupA, int gA, byte* groupB, int gB) where TIsa : IIntegerIsa
    {
        if (!TIsa.Vnni)
        {
            TileMaddTwo(a, groupA, gA, groupB, gB);
            return;
        }
        int nb = a.Cols / 32;
        sbyte* q = a.Q;
        float* d = a.D;
        int* s = a.Sums;
        Vector256<float> ya = default, yb = default;
        bool far = a.Streams;
        for (int i = 0; i < nb; i++)
        {
            byte* blkA = groupA + (long)i * PackedBlock, blkB = groupB + (long)i * PackedBlock;
            PackedSteps.PrefetchLines(blkA + PrefetchDistance, 5);
            PackedSteps.PrefetchLines(blkB + PrefetchDistance, 5);
            if (far)
            {
                PackedSteps.PrefetchFar(blkA, 5);
                PackedSteps.PrefetchFar(blkB, 5);
            }
            ya = Block<TIsa>(ya, blkA, (int*)(q + 32L * i), s[i], d[i]);
            yb = Block<TIsa>(yb, blkB, (int*)(q + 32L * i), s[i], d[i]);
        }
        ya.Store(a.Y + 8L * gA);
        yb.Store(a.Y + 8L * gB);
    }

    /// <summary>
    /// <see cref="Tile{TTile, TIsa}"/> without VNNI: the stored w + 128 back to signed w (shared by the batch rows), then per
    /// batch row |w| · (x·sign(w)) with <c>vpmaddubsw</c> (a pair at most 2 · 128 · 127, no saturation) and
    /// <c>vpmaddwd</c> into int lanes: the same exact block sums, scaled by the same f32 operations, so the same bits.
    /// </summary>
    private static void TileMadd<TTile>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile
    {
        int nb = a.Cols / 32, batch = a.Batch;
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
        long qStep = 32L * batch;
        var ones = Vector256.Create((short)1);
        var flip = Vector256.Create((byte)0x80);
        Vector256<float> y0 = default, y1 = default, y2 = default, y3 = default;
        bool far = a.Streams && b == 0 && TTile.Count == 1;
        for (int i = 0; i < nb; i++)
        {
            byte* blk = group + (long)i * PackedBlock;
            // Five lines from the block PrefetchDistance ahead: with the next block's five, every line of the stream.
            if (b == 0) PackedSteps.PrefetchLines(blk + PrefetchDistance, 5);
            if (far) PackedSteps.PrefetchFar(blk, 5);
            var dw = PackedSteps.RowScales(blk);
            byte* wq = blk + ScalesBytes;
            sbyte* qe = q + i * qStep;
            Vector256<int> p0 = default, p1 = default, p2 = default, p3 = default;
            // NOTE: written out rather than looped (as in PackedQ4_K): the loop's index arithmetic took issue slots.
            MaddStep<TTile>(wq, qe, flip, ones, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 32, qe + 4, flip, ones, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 64, qe + 8, flip, ones, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 96, qe + 12, flip, ones, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 128, qe + 16, flip, ones, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 160, qe + 20, flip, ones, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 192, qe + 24, flip, ones, ref p0, ref p1, ref p2, ref p3);
            MaddStep<TTile>(wq + 224, qe + 28, flip, ones, ref p0, ref p1, ref p2, ref p3);
            long e = (long)i * batch;
            y0 = PackedSteps.ScaleBlock(y0, p0, dw, d[e]);
            if (TTile.Count > 1) y1 = PackedSteps.ScaleBlock(y1, p1, dw, d[e + 1]);
            if (TTile.Count > 2) y2 = PackedSteps.ScaleBlock(y2, p2, dw, d[e + 2]);
            if (TTile.Count > 3) y3 = PackedSteps.ScaleBlock(y3, p3, dw, d[e + 3]);
        }
        PackedSteps.StoreTile<TTile>(a, g, b, y0, y1, y2, y3);
    }

    /// <summary>
    /// <see cref="TileMadd{TTile}"/> for one batch row and two groups: the two weight streams read side by side (one
    /// stream per thread left loads waiting on memory: one thread, batch 1, best call of <c>kernels-quick --types Q8_0</c>
    /// on the Zen 3 EPYC 17.4–18.0 GB/s → 20.4–21.6, the read test's rate) and each activation broadcast shared by both
    /// groups. The same integer sums and f32 operations per group, so the same bits.
    /// </summary>
    private static void TileMaddTwo(in MatMulArgs a, byte* groupA, int gA, byte* groupB, int gB)
    {
        int nb = a.Cols / 32;
        sbyte* q = a.Q;
        float* d = a.D;
        var ones = Vector256.Create((short)1);
        var flip = Vector256.Create((byte)0x80);
        Vector256<float> ya = default, yb = default;
        bool far = a.Streams;
        for (int i = 0; i < nb; i++)
        {
            byte* blkA = groupA + (long)i * PackedBlock, blkB = groupB + (long)i * PackedBlock;
            PackedSteps.PrefetchLines(blkA + PrefetchDistance, 5);
            PackedSteps.PrefetchLines(blkB + PrefetchDistance, 5);
            if (far)
            {
                PackedSteps.PrefetchFar(blkA, 5);
                PackedSteps.PrefetchFar(blkB, 5);
            }
            byte* wa = blkA + ScalesBytes, wb = blkB + ScalesBytes;
            sbyte* qe = q + 32L * i;
            Vector256<int> pa = default, pb = default;
            MaddTwo(wa, wb, qe, flip, ones, ref pa, ref pb);
            MaddTwo(wa + 32, wb + 32, qe + 4, flip, ones, ref pa, ref pb);
            MaddTwo(wa + 64, wb + 64, qe + 8, flip, ones, ref pa, ref pb);
            MaddTwo(wa + 96, wb + 96, qe + 12, flip, ones, ref pa, ref pb);
            MaddTwo(wa + 128, wb + 128, qe + 16, flip, ones, ref pa, ref pb);
            MaddTwo(wa + 160, wb + 160, qe + 20, flip, ones, ref pa, ref pb);
            MaddTwo(wa + 192, wb + 192, qe + 24, flip, ones, ref pa, ref pb);
            MaddTwo(wa + 224, wb + 224, qe + 28, flip, ones, ref pa, ref pb);
            float dx = d[i];
            ya = PackedSteps.ScaleBlock(ya, pa, PackedSteps.RowScales(blkA), dx);
            yb = PackedSteps.ScaleBlock(yb, pb, PackedSteps.RowScales(blkB), dx);
        }
        ya.Store(a.Y + 8L * gA);
        yb.Store(a.Y + 8L * gB);
    }

    /// <summary>One step of <see cref="TileMaddTwo"/>: four columns of both groups' eight rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaddTwo(byte* wa, byte* wb, sbyte* xk, Vector256<byte> flip, Vector256<short> ones, ref Vector256<int> pa, ref Vector256<int> pb)
    {
        var x = PackedSteps.Broadcast(xk);
        var sa = (Vector256.Load(wa) ^ flip).AsSByte();
        var sb = (Vector256.Load(wb) ^ flip).AsSByte();
        pa += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(sa), Avx2.Sign(x, sa)), ones);
        pb += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(sb), Avx2.Sign(x, sb)), ones);
    }

    /// <summary>One step of <see cref="TileMadd{TTile}"/>: four columns of the eight rows against up to four batch rows
    /// (activations 32 bytes apart).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MaddStep<TTile>(byte* wq, sbyte* xk, Vector256<byte> flip, Vector256<short> ones,
        ref Vector256<int> p0, ref Vector256<int> p1, ref Vector256<int> p2, ref Vector256<int> p3) where TTile : IBatchTile
    {
        var w = (Vector256.Load(wq) ^ flip).AsSByte();
        var absW = Avx2.Abs(w);
        p0 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(absW, Avx2.Sign(PackedSteps.Broadcast(xk), w)), ones);
        if (TTile.Count > 1) p1 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(absW, Avx2.Sign(PackedSteps.Broadcast(xk + 32), w)), ones);
        if (TTile.Count > 2) p2 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(absW, Avx2.Sign(PackedSteps.Broadcast(xk + 64), w)), ones);
        if (TTile.Count > 3) p3 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(absW, Avx2.Sign(PackedSteps.Broadcast(xk + 96), w)), ones);
    }

    /// <summary>One packed block against one batch row: <see cref="Tile{TTile, TIsa}"/>'s operations for a single row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Block<TIsa>(Vector256<float> acc, byte* blk, int* x, int minus8Sum, float dx) where TIsa : IIntegerIsa
    {
        var dw = PackedSteps.RowScales(blk);
        byte* wq = blk + ScalesBytes;
        return Step<TIsa>(acc, Vector256.Load(wq), Vector256.Load(wq + 32), Vector256.Load(wq + 64), Vector256.Load(wq + 96),
            Vector256.Load(wq + 128), Vector256.Load(wq + 160), Vector256.Load(wq + 192), Vector256.Load(wq + 224),
            x, minus8Sum, dw, dx);
    }

    /// <summary>One block of one batch row against the group's eight rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TIsa>(Vector256<float> acc,
        Vector256<byte> w0, Vector256<byte> w1, Vector256<byte> w2, Vector256<byte> w3,
        Vector256<byte> w4, Vector256<byte> w5, Vector256<byte> w6, Vector256<byte> w7,
        int* x, int minus8Sum, Vector256<float> dw, float dx) where TIsa : IIntegerIsa
    {
        // Two chains of four dependent vpdpbusd each; the first starts at −128·Σq (= 16 · −8·Σq).
        var even = Vector256.Create(minus8Sum * 16);
        var odd = Vector256<int>.Zero;
        even = TIsa.Dot(even, w0, Vector256.Create(x[0]).AsSByte());
        odd = TIsa.Dot(odd, w1, Vector256.Create(x[1]).AsSByte());
        even = TIsa.Dot(even, w2, Vector256.Create(x[2]).AsSByte());
        odd = TIsa.Dot(odd, w3, Vector256.Create(x[3]).AsSByte());
        even = TIsa.Dot(even, w4, Vector256.Create(x[4]).AsSByte());
        odd = TIsa.Dot(odd, w5, Vector256.Create(x[5]).AsSByte());
        even = TIsa.Dot(even, w6, Vector256.Create(x[6]).AsSByte());
        odd = TIsa.Dot(odd, w7, Vector256.Create(x[7]).AsSByte());
        return PackedSteps.ScaleBlock(acc, even + odd, dw, dx);
    }
}
