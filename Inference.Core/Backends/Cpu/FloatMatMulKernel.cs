using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// Float-weight matmul (F32, F16, BF16): y[b, r] = Σ_c W[r, c]·x[b, c] with float32 accumulation; F16/BF16 weights are
/// widened in registers. Each weight row is streamed once per tile of up to four batch rows (and stays in L1 for the
/// next tile).
/// </summary>
/// <remarks>
/// With AVX-512, rows go four at a time against four batch rows (<see cref="RowTile4{TW, TTile}"/>): sixteen
/// accumulators, eight loads per sixteen FMAs, where one row at a time needs five loads per four FMAs. Each output
/// keeps one accumulator over 16-column steps whatever the batch size, so results do not depend on the batching.
/// </remarks>
internal static unsafe class FloatMatMulKernel
{
    /// <summary>Computes output rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>) for every batch row.</summary>
    public static void Rows<TW>(in MatMulArgs a, int rowStart, int rowEnd) where TW : IFloatWeights
    {
        if (KernelPaths.Floats256(a.Path))
        {
            Rows256<TW>(a, rowStart, rowEnd);
            return;
        }
        int r = rowStart;
        if (a.Path == KernelPath.Vector512)
        {
            if (a.Batch == 1)
                for (; r + 8 <= rowEnd; r += 8) RowTile8x1<TW>(a, r);
            if (a.Batch >= Tile8x3MinBatch)
                for (; r + 8 <= rowEnd; r += 8)
                {
                    int b = 0;
                    for (; b + 3 <= a.Batch; b += 3) RowTile8x3<TW>(a, r, b);
                    switch (a.Batch - b)
                    {
                        case 2: RowTile4<TW, Tile2>(a, r, b); RowTile4<TW, Tile2>(a, r + 4, b); break;
                        case 1: RowTile4<TW, Tile1>(a, r, b); RowTile4<TW, Tile1>(a, r + 4, b); break;
                    }
                }
            for (; r + 4 <= rowEnd; r += 4)
            {
                int b = 0;
                for (; b + 4 <= a.Batch; b += 4) RowTile4<TW, Tile4>(a, r, b);
                switch (a.Batch - b)
                {
                    case 3: RowTile4<TW, Tile3>(a, r, b); break;
                    case 2: RowTile4<TW, Tile2>(a, r, b); break;
                    case 1: RowTile4<TW, Tile1>(a, r, b); break;
                }
            }
        }
        for (; r < rowEnd; r++)
        {
            byte* row = a.W + r * a.RowBytes;
            int b = 0;
            for (; b + 4 <= a.Batch; b += 4) Tile<TW, Tile4>(a, row, r, b);
            switch (a.Batch - b)
            {
                case 3: Tile<TW, Tile3>(a, row, r, b); break;
                case 2: Tile<TW, Tile2>(a, row, r, b); break;
                case 1: Tile<TW, Tile1>(a, row, r, b); break;
            }
        }
    }

    /// <summary>Rows r … r+3 against batch rows b … b+TTile.Count−1.</summary>
    private static void RowTile4<TW, TTile>(in MatMulArgs a, int r, int b) where TW : IFloatWeights where TTile : IBatchTile
    {
        int cols = a.Cols;
        long rb = a.RowBytes;
        byte* w0 = a.W + r * rb, w1 = w0 + rb, w2 = w1 + rb, w3 = w2 + rb;
        // The activations as Load16x512 wants them (scaled where its values fall short; the scalar tails take X).
        float* x0 = a.XScaled + (long)b * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
        // NOTE: written out (not through a helper with ref parameters, which would keep the accumulators in memory).
        Vector512<float> c00 = default, c01 = default, c02 = default, c03 = default;
        Vector512<float> c10 = default, c11 = default, c12 = default, c13 = default;
        Vector512<float> c20 = default, c21 = default, c22 = default, c23 = default;
        Vector512<float> c30 = default, c31 = default, c32 = default, c33 = default;
        // NOTE: 2-byte rows ask for memory ahead as RowTile8x1 does (the next four rows, the four after them, each
        // row's next line), on the first batch tile of the rows only: later ones find them in L1 and L2.
        bool ahead = typeof(TW) != typeof(F32Weights) && b == 0;
        int i = 0;
        for (; i + 16 <= cols; i += 16)
        {
            if (ahead) AskAhead(w0, rb, i, 4);
            var v0 = TW.Load16x512(w0, i);
            var v1 = TW.Load16x512(w1, i);
            var v2 = TW.Load16x512(w2, i);
            var v3 = TW.Load16x512(w3, i);
            var u0 = Vector512.Load(x0 + i);
            c00 = Vector512.FusedMultiplyAdd(v0, u0, c00);
            c10 = Vector512.FusedMultiplyAdd(v1, u0, c10);
            c20 = Vector512.FusedMultiplyAdd(v2, u0, c20);
            c30 = Vector512.FusedMultiplyAdd(v3, u0, c30);
            if (TTile.Count > 1)
            {
                var u1 = Vector512.Load(x1 + i);
                c01 = Vector512.FusedMultiplyAdd(v0, u1, c01);
                c11 = Vector512.FusedMultiplyAdd(v1, u1, c11);
                c21 = Vector512.FusedMultiplyAdd(v2, u1, c21);
                c31 = Vector512.FusedMultiplyAdd(v3, u1, c31);
            }
            if (TTile.Count > 2)
            {
                var u2 = Vector512.Load(x2 + i);
                c02 = Vector512.FusedMultiplyAdd(v0, u2, c02);
                c12 = Vector512.FusedMultiplyAdd(v1, u2, c12);
                c22 = Vector512.FusedMultiplyAdd(v2, u2, c22);
                c32 = Vector512.FusedMultiplyAdd(v3, u2, c32);
            }
            if (TTile.Count > 3)
            {
                var u3 = Vector512.Load(x3 + i);
                c03 = Vector512.FusedMultiplyAdd(v0, u3, c03);
                c13 = Vector512.FusedMultiplyAdd(v1, u3, c13);
                c23 = Vector512.FusedMultiplyAdd(v2, u3, c23);
                c33 = Vector512.FusedMultiplyAdd(v3, u3, c33);
            }
        }
        // NOTE: every horizontal sum before the first call (the scalar tails): an accumulator live across a call makes
        // the JIT spill it at each definition inside the loop above.
        float s00 = Vector512.Sum(c00), s10 = Vector512.Sum(c10), s20 = Vector512.Sum(c20), s30 = Vector512.Sum(c30);
        float s01 = 0, s11 = 0, s21 = 0, s31 = 0, s02 = 0, s12 = 0, s22 = 0, s32 = 0, s03 = 0, s13 = 0, s23 = 0, s33 = 0;
        if (TTile.Count > 1) (s01, s11, s21, s31) = (Vector512.Sum(c01), Vector512.Sum(c11), Vector512.Sum(c21), Vector512.Sum(c31));
        if (TTile.Count > 2) (s02, s12, s22, s32) = (Vector512.Sum(c02), Vector512.Sum(c12), Vector512.Sum(c22), Vector512.Sum(c32));
        if (TTile.Count > 3) (s03, s13, s23, s33) = (Vector512.Sum(c03), Vector512.Sum(c13), Vector512.Sum(c23), Vector512.Sum(c33));
        Store<TW, TTile>(a, r, b, w0, i, s00, s01, s02, s03);
        Store<TW, TTile>(a, r + 1, b, w1, i, s10, s11, s12, s13);
        Store<TW, TTile>(a, r + 2, b, w2, i, s20, s21, s22, s23);
        Store<TW, TTile>(a, r + 3, b, w3, i, s30, s31, s32, s33);
    }

    /// <summary>
    /// Rows r … r+7 against one batch row (decode): eight weight streams per thread, one accumulator per row as in
    /// <see cref="RowTile4{TW, TTile}"/>, so results have the same bits.
    /// </summary>
    private static void RowTile8x1<TW>(in MatMulArgs a, int r) where TW : IFloatWeights
    {
        int cols = a.Cols;
        long rb = a.RowBytes;
        byte* w0 = a.W + r * rb, w1 = w0 + rb, w2 = w1 + rb, w3 = w2 + rb;
        byte* w4 = w3 + rb, w5 = w4 + rb, w6 = w5 + rb, w7 = w6 + rb;
        float* x = a.XScaled;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> c4 = default, c5 = default, c6 = default, c7 = default;
        int i = 0;
        // NOTE: 2-byte rows ask for the next eight rows' bytes as they go (256 bytes per step, into L2), as the AVX2
        // tiles do (RowTile8x1_256): a tile's short rows are new streams for the hardware prefetcher. On the Xeon they
        // also ask for the tile after it (into the last-level cache) and, every other step, for each row's line 256
        // bytes ahead (into L1): in kernels-quick the mean call went from 0.85–0.94 to 0.98–1.01 of the mean read on two
        // threads (F16), and the F16 and BF16 models decode 20–30% faster (e2e; docs/quantization.md). The AVX2 tile, not
        // measured with them, keeps the next tile only.
        for (; i + 16 <= cols; i += 16)
        {
            if (typeof(TW) != typeof(F32Weights)) AskAhead(w0, rb, i, 8);
            var u = Vector512.Load(x + i);
            c0 = Vector512.FusedMultiplyAdd(TW.Load16x512(w0, i), u, c0);
            c1 = Vector512.FusedMultiplyAdd(TW.Load16x512(w1, i), u, c1);
            c2 = Vector512.FusedMultiplyAdd(TW.Load16x512(w2, i), u, c2);
            c3 = Vector512.FusedMultiplyAdd(TW.Load16x512(w3, i), u, c3);
            c4 = Vector512.FusedMultiplyAdd(TW.Load16x512(w4, i), u, c4);
            c5 = Vector512.FusedMultiplyAdd(TW.Load16x512(w5, i), u, c5);
            c6 = Vector512.FusedMultiplyAdd(TW.Load16x512(w6, i), u, c6);
            c7 = Vector512.FusedMultiplyAdd(TW.Load16x512(w7, i), u, c7);
        }
        // NOTE: all sums before the first call, as in RowTile4.
        float s0 = Vector512.Sum(c0), s1 = Vector512.Sum(c1), s2 = Vector512.Sum(c2), s3 = Vector512.Sum(c3);
        float s4 = Vector512.Sum(c4), s5 = Vector512.Sum(c5), s6 = Vector512.Sum(c6), s7 = Vector512.Sum(c7);
        Store<TW, Tile1>(a, r, 0, w0, i, s0, 0, 0, 0);
        Store<TW, Tile1>(a, r + 1, 0, w1, i, s1, 0, 0, 0);
        Store<TW, Tile1>(a, r + 2, 0, w2, i, s2, 0, 0, 0);
        Store<TW, Tile1>(a, r + 3, 0, w3, i, s3, 0, 0, 0);
        Store<TW, Tile1>(a, r + 4, 0, w4, i, s4, 0, 0, 0);
        Store<TW, Tile1>(a, r + 5, 0, w5, i, s5, 0, 0, 0);
        Store<TW, Tile1>(a, r + 6, 0, w6, i, s6, 0, 0, 0);
        Store<TW, Tile1>(a, r + 7, 0, w7, i, s7, 0, 0, 0);
    }

    /// <summary>
    /// What a tile of <paramref name="rows"/> rows (a constant, 4 or 8) of 2-byte weights from <paramref name="w0"/> asks
    /// for at column <paramref name="i"/>: the same columns of the next tile into L2, of the tile after it into the
    /// last-level cache, and every other 16-column step each row's line 256 bytes ahead into L1.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AskAhead(byte* w0, long rowBytes, int i, int rows)
    {
        byte* next = w0 + rows * rowBytes;
        PackedSteps.PrefetchLines(next + 2L * rows * i, rows / 2, PrefetchLevel.L2);
        PackedSteps.PrefetchLines(next + rows * rowBytes + 2L * rows * i, rows / 2, PrefetchLevel.Llc);
        if ((i & 31) == 0) RowsAhead(w0, rowBytes, 2L * i + 256, rows);
    }

    /// <summary>
    /// Asks for the line at byte <paramref name="offset"/> of each of the <paramref name="rows"/> rows (a constant, 4 or
    /// 8) from <paramref name="w0"/>, into L1.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void RowsAhead(byte* w0, long rowBytes, long offset, int rows)
    {
        byte* p = w0 + offset;
        Sse.Prefetch0(p);
        Sse.Prefetch0(p + rowBytes);
        Sse.Prefetch0(p + 2 * rowBytes);
        Sse.Prefetch0(p + 3 * rowBytes);
        if (rows <= 4) return;
        Sse.Prefetch0(p + 4 * rowBytes);
        Sse.Prefetch0(p + 5 * rowBytes);
        Sse.Prefetch0(p + 6 * rowBytes);
        Sse.Prefetch0(p + 7 * rowBytes);
    }

    /// <summary>Batch rows from which <see cref="RowTile8x3{TW}"/> takes over from four-by-four tiles.</summary>
    private const int Tile8x3MinBatch = 6;

    /// <summary>
    /// Rows r … r+7 against batch rows b … b+2: 24 accumulators, the three activation vectors of a step loaded once for
    /// eight rows (half the activation traffic per FMA of a four-row tile: the activations come from L2, the eight
    /// weight rows stay in L1 across the batch). Each output keeps the same single accumulator over 16-column steps as
    /// <see cref="RowTile4{TW, TTile}"/>, so results have the same bits.
    /// </summary>
    private static void RowTile8x3<TW>(in MatMulArgs a, int r, int b) where TW : IFloatWeights
    {
        int cols = a.Cols;
        long rb = a.RowBytes;
        byte* w0 = a.W + r * rb, w1 = w0 + rb, w2 = w1 + rb, w3 = w2 + rb;
        byte* w4 = w3 + rb, w5 = w4 + rb, w6 = w5 + rb, w7 = w6 + rb;
        float* x0 = a.XScaled + (long)b * cols, x1 = x0 + cols, x2 = x1 + cols;
        Vector512<float> c00 = default, c01 = default, c02 = default, c10 = default, c11 = default, c12 = default;
        Vector512<float> c20 = default, c21 = default, c22 = default, c30 = default, c31 = default, c32 = default;
        Vector512<float> c40 = default, c41 = default, c42 = default, c50 = default, c51 = default, c52 = default;
        Vector512<float> c60 = default, c61 = default, c62 = default, c70 = default, c71 = default, c72 = default;
        // NOTE: 2-byte rows ask for memory ahead as RowTile8x1 does, on the rows' first batch tile (as RowTile4):
        // kernels-quick --types F16,BF16 --threads 2 --batch 8, three alternated rounds, mean GB/s: F16 9.0 / 4.3 / 4.6
        // -> 10.4 / 5.4 / 5.4, BF16 9.9 / 4.8 / 4.9 -> 11.5 / 5.9 / 5.8 (the last two rounds on a busy machine).
        bool ahead = typeof(TW) != typeof(F32Weights) && b == 0;
        int i = 0;
        for (; i + 16 <= cols; i += 16)
        {
            if (ahead) AskAhead(w0, rb, i, 8);
            var u0 = Vector512.Load(x0 + i);
            var u1 = Vector512.Load(x1 + i);
            var u2 = Vector512.Load(x2 + i);
            var v = TW.Load16x512(w0, i);
            c00 = Vector512.FusedMultiplyAdd(v, u0, c00); c01 = Vector512.FusedMultiplyAdd(v, u1, c01); c02 = Vector512.FusedMultiplyAdd(v, u2, c02);
            v = TW.Load16x512(w1, i);
            c10 = Vector512.FusedMultiplyAdd(v, u0, c10); c11 = Vector512.FusedMultiplyAdd(v, u1, c11); c12 = Vector512.FusedMultiplyAdd(v, u2, c12);
            v = TW.Load16x512(w2, i);
            c20 = Vector512.FusedMultiplyAdd(v, u0, c20); c21 = Vector512.FusedMultiplyAdd(v, u1, c21); c22 = Vector512.FusedMultiplyAdd(v, u2, c22);
            v = TW.Load16x512(w3, i);
            c30 = Vector512.FusedMultiplyAdd(v, u0, c30); c31 = Vector512.FusedMultiplyAdd(v, u1, c31); c32 = Vector512.FusedMultiplyAdd(v, u2, c32);
            v = TW.Load16x512(w4, i);
            c40 = Vector512.FusedMultiplyAdd(v, u0, c40); c41 = Vector512.FusedMultiplyAdd(v, u1, c41); c42 = Vector512.FusedMultiplyAdd(v, u2, c42);
            v = TW.Load16x512(w5, i);
            c50 = Vector512.FusedMultiplyAdd(v, u0, c50); c51 = Vector512.FusedMultiplyAdd(v, u1, c51); c52 = Vector512.FusedMultiplyAdd(v, u2, c52);
            v = TW.Load16x512(w6, i);
            c60 = Vector512.FusedMultiplyAdd(v, u0, c60); c61 = Vector512.FusedMultiplyAdd(v, u1, c61); c62 = Vector512.FusedMultiplyAdd(v, u2, c62);
            v = TW.Load16x512(w7, i);
            c70 = Vector512.FusedMultiplyAdd(v, u0, c70); c71 = Vector512.FusedMultiplyAdd(v, u1, c71); c72 = Vector512.FusedMultiplyAdd(v, u2, c72);
        }
        // NOTE: all sums before the first call, as in RowTile4.
        float s00 = Vector512.Sum(c00), s01 = Vector512.Sum(c01), s02 = Vector512.Sum(c02);
        float s10 = Vector512.Sum(c10), s11 = Vector512.Sum(c11), s12 = Vector512.Sum(c12);
        float s20 = Vector512.Sum(c20), s21 = Vector512.Sum(c21), s22 = Vector512.Sum(c22);
        float s30 = Vector512.Sum(c30), s31 = Vector512.Sum(c31), s32 = Vector512.Sum(c32);
        float s40 = Vector512.Sum(c40), s41 = Vector512.Sum(c41), s42 = Vector512.Sum(c42);
        float s50 = Vector512.Sum(c50), s51 = Vector512.Sum(c51), s52 = Vector512.Sum(c52);
        float s60 = Vector512.Sum(c60), s61 = Vector512.Sum(c61), s62 = Vector512.Sum(c62);
        float s70 = Vector512.Sum(c70), s71 = Vector512.Sum(c71), s72 = Vector512.Sum(c72);
        Store<TW, Tile3>(a, r, b, w0, i, s00, s01, s02, 0);
        Store<TW, Tile3>(a, r + 1, b, w0 + rb, i, s10, s11, s12, 0);
        Store<TW, Tile3>(a, r + 2, b, w0 + 2 * rb, i, s20, s21, s22, 0);
        Store<TW, Tile3>(a, r + 3, b, w0 + 3 * rb, i, s30, s31, s32, 0);
        Store<TW, Tile3>(a, r + 4, b, w0 + 4 * rb, i, s40, s41, s42, 0);
        Store<TW, Tile3>(a, r + 5, b, w0 + 5 * rb, i, s50, s51, s52, 0);
        Store<TW, Tile3>(a, r + 6, b, w0 + 6 * rb, i, s60, s61, s62, 0);
        Store<TW, Tile3>(a, r + 7, b, w0 + 7 * rb, i, s70, s71, s72, 0);
    }

    /// <summary>
    /// The AVX2 path: rows eight at a time against one batch row (decode); F32 against 2 to <see cref="SmallBatchMax"/>
    /// batch rows (a speculative verification) in single-pass tiles (<see cref="SmallBatch256{TW}"/>); otherwise four at a
    /// time against three batch rows (twelve accumulators, seven loads per twelve FMAs: the sixteen ymm registers hold
    /// the tile, the three activation vectors and the weight vector). Every output keeps one accumulator over 8-column
    /// steps whatever the tile, so results do not depend on the batching.
    /// </summary>
    private static void Rows256<TW>(in MatMulArgs a, int rowStart, int rowEnd) where TW : IFloatWeights
    {
        int r = rowStart;
        if (a.Batch == 1)
        {
            if (typeof(TW) != typeof(F32Weights))
                for (; r + 16 <= rowEnd; r += 16)
                {
                    // Even rows, then odd rows: each pass ends in the middle of eight 4 KiB pages the next one continues.
                    long rb = a.RowBytes;
                    RowTile8x1_256<TW>(a, r, 2, a.W + (r + 16) * rb);
                    RowTile8x1_256<TW>(a, r + 1, 2, a.W + (r + 24) * rb);
                }
            for (; r + 8 <= rowEnd; r += 8) RowTile8x1_256<TW>(a, r, 1, a.W + (r + 8) * a.RowBytes);
        }
        else if (typeof(TW) == typeof(F32Weights) && a.Batch <= SmallBatchMax)
            r = SmallBatch256<TW>(a, r, rowEnd);
        else if (typeof(TW) != typeof(F32Weights) && a.Batch >= WidenOnceMinBatch)
            for (; r + 4 <= rowEnd; r += 4) WidenedTiles256<TW>(a, r);
        else
            for (; r + 4 <= rowEnd; r += 4) BatchTiles256<TW, Tile4>(a, r);
        for (; r < rowEnd; r++) BatchTiles256<TW, Tile1>(a, r);
    }

    /// <summary>Most batch rows <see cref="SmallBatch256{TW}"/> takes (speculative verification: K + 1 positions).</summary>
    private const int SmallBatchMax = 8;

    /// <summary>
    /// F32 rows against 2 to <see cref="SmallBatchMax"/> batch rows (a speculative verification), each weight streamed
    /// from memory once: a tile of four rows (two for four or more batch rows) is loaded into registers once per
    /// 8-column step and multiplied with every batch row of the tile while it is there, and the tile asks for the next
    /// tile's bytes as it goes, so memory keeps streaming while the FMAs run. Six to eight batch rows run as two
    /// groups over the same two rows, the second reading them from L1. Returns the first row left for single-row tiles.
    /// </summary>
    /// <remarks>
    /// The tiles with one pass per batch group of three (<see cref="BatchTiles256{TW, TRows}"/>) read a four-row tile
    /// once from memory and again from L1/L2 for the remaining batch rows; nothing streams from memory during the
    /// second pass, and the hardware prefetcher restarts on every 4 KiB row. Every output still keeps one accumulator
    /// over 8-column steps in column order, so the bits equal the batch-1 kernel's (<see cref="RowTile8x1_256{TW}"/>).
    /// </remarks>
    private static int SmallBatch256<TW>(in MatMulArgs a, int r, int rowEnd) where TW : IFloatWeights
    {
        switch (a.Batch)
        {
            case 2: for (; r + 4 <= rowEnd; r += 4) Streamed256<TW, Tile4, Tile2>(a, r, 0, prefetch: true); break;
            case 3: for (; r + 4 <= rowEnd; r += 4) Streamed256<TW, Tile4, Tile3>(a, r, 0, prefetch: true); break;
            case 4: for (; r + 2 <= rowEnd; r += 2) Streamed256<TW, Tile2, Tile4>(a, r, 0, prefetch: true); break;
            case 5: for (; r + 2 <= rowEnd; r += 2) Streamed256<TW, Tile2, Tile5>(a, r, 0, prefetch: true); break;
            case 6:
                for (; r + 2 <= rowEnd; r += 2)
                {
                    Streamed256<TW, Tile2, Tile3>(a, r, 0, prefetch: true);
                    Streamed256<TW, Tile2, Tile3>(a, r, 3, prefetch: false);
                }
                break;
            case 7:
                for (; r + 2 <= rowEnd; r += 2)
                {
                    Streamed256<TW, Tile2, Tile4>(a, r, 0, prefetch: true);
                    Streamed256<TW, Tile2, Tile3>(a, r, 4, prefetch: false);
                }
                break;
            case 8:
                for (; r + 2 <= rowEnd; r += 2)
                {
                    Streamed256<TW, Tile2, Tile4>(a, r, 0, prefetch: true);
                    Streamed256<TW, Tile2, Tile4>(a, r, 4, prefetch: false);
                }
                break;
        }
        return r;
    }

    /// <summary>
    /// Rows r … r+TRows.Count−1 (two or four) against batch rows b … b+TTile.Count−1 (up to five; three with four rows:
    /// the accumulators, the activation vectors of a step and one weight vector fill the sixteen ymm registers). With
    /// <paramref name="prefetch"/>, asks for the tile after this one (the rows right after these, 32 bytes per row and
    /// step) as it goes.
    /// </summary>
    private static void Streamed256<TW, TRows, TTile>(in MatMulArgs a, int r, int b, bool prefetch)
        where TW : IFloatWeights where TRows : IBatchTile where TTile : IBatchTile
    {
        int cols = a.Cols;
        long rb = a.RowBytes;
        byte* w0 = a.W + r * rb, w1 = w0 + rb, w2 = w1 + rb, w3 = w2 + rb;
        float* x0 = a.X + (long)b * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols, x4 = x3 + cols;
        Vector256<float> c00 = default, c01 = default, c02 = default, c03 = default, c04 = default;
        Vector256<float> c10 = default, c11 = default, c12 = default, c13 = default, c14 = default;
        Vector256<float> c20 = default, c21 = default, c22 = default;
        Vector256<float> c30 = default, c31 = default, c32 = default;
        // NOTE: the prefetch address advances by a pointer increment and is always issued (without prefetch it walks this
        // tile's own rows, already in L1): a branch or a multiply per step in the loop made the JIT reload three
        // activation pointers from the stack on every step. F32 only (SmallBatch256): 32 bytes per row and step.
        Debug.Assert(typeof(TW) == typeof(F32Weights));
        byte* pf = prefetch ? w0 + TRows.Count * rb : w0;
        int i = 0;
        for (; i + 8 <= cols; i += 8, pf += 32 * TRows.Count)
        {
            PackedSteps.PrefetchLines(pf, TRows.Count / 2);
            var u0 = Vector256.Load(x0 + i);
            var u1 = TTile.Count > 1 ? Vector256.Load(x1 + i) : default;
            var u2 = TTile.Count > 2 ? Vector256.Load(x2 + i) : default;
            var u3 = TTile.Count > 3 ? Vector256.Load(x3 + i) : default;
            var u4 = TTile.Count > 4 ? Vector256.Load(x4 + i) : default;
            var v = TW.Load8(w0, i);
            c00 = Vector256.FusedMultiplyAdd(v, u0, c00);
            if (TTile.Count > 1) c01 = Vector256.FusedMultiplyAdd(v, u1, c01);
            if (TTile.Count > 2) c02 = Vector256.FusedMultiplyAdd(v, u2, c02);
            if (TTile.Count > 3) c03 = Vector256.FusedMultiplyAdd(v, u3, c03);
            if (TTile.Count > 4) c04 = Vector256.FusedMultiplyAdd(v, u4, c04);
            v = TW.Load8(w1, i);
            c10 = Vector256.FusedMultiplyAdd(v, u0, c10);
            if (TTile.Count > 1) c11 = Vector256.FusedMultiplyAdd(v, u1, c11);
            if (TTile.Count > 2) c12 = Vector256.FusedMultiplyAdd(v, u2, c12);
            if (TTile.Count > 3) c13 = Vector256.FusedMultiplyAdd(v, u3, c13);
            if (TTile.Count > 4) c14 = Vector256.FusedMultiplyAdd(v, u4, c14);
            if (TRows.Count > 2)
            {
                v = TW.Load8(w2, i);
                c20 = Vector256.FusedMultiplyAdd(v, u0, c20);
                if (TTile.Count > 1) c21 = Vector256.FusedMultiplyAdd(v, u1, c21);
                if (TTile.Count > 2) c22 = Vector256.FusedMultiplyAdd(v, u2, c22);
                v = TW.Load8(w3, i);
                c30 = Vector256.FusedMultiplyAdd(v, u0, c30);
                if (TTile.Count > 1) c31 = Vector256.FusedMultiplyAdd(v, u1, c31);
                if (TTile.Count > 2) c32 = Vector256.FusedMultiplyAdd(v, u2, c32);
            }
        }
        // NOTE: all sums before the first call, as in RowTile4.
        float s00 = Vector256.Sum(c00), s01 = Vector256.Sum(c01), s02 = Vector256.Sum(c02), s03 = Vector256.Sum(c03), s04 = Vector256.Sum(c04);
        float s10 = Vector256.Sum(c10), s11 = Vector256.Sum(c11), s12 = Vector256.Sum(c12), s13 = Vector256.Sum(c13), s14 = Vector256.Sum(c14);
        float s20 = Vector256.Sum(c20), s21 = Vector256.Sum(c21), s22 = Vector256.Sum(c22);
        float s30 = Vector256.Sum(c30), s31 = Vector256.Sum(c31), s32 = Vector256.Sum(c32);
        // NOTE: the sums are stored first and the scalar tail (none when the row length is a multiple of 8) added by a
        // helper that rebuilds its pointers, so no activation pointer is live after the loop (the JIT had kept them in
        // stack slots and reloaded them on every step).
        float* y = a.Y + (long)b * a.Rows + r;
        long n = a.Rows;
        y[0] = s00;
        y[1] = s10;
        if (TRows.Count > 2) { y[2] = s20; y[3] = s30; }
        if (TTile.Count > 1) { y[n] = s01; y[n + 1] = s11; }
        if (TTile.Count > 1 && TRows.Count > 2) { y[n + 2] = s21; y[n + 3] = s31; }
        if (TTile.Count > 2) { y[2 * n] = s02; y[2 * n + 1] = s12; }
        if (TTile.Count > 2 && TRows.Count > 2) { y[2 * n + 2] = s22; y[2 * n + 3] = s32; }
        if (TTile.Count > 3) { y[3 * n] = s03; y[3 * n + 1] = s13; }
        if (TTile.Count > 4) { y[4 * n] = s04; y[4 * n + 1] = s14; }
        if (i < cols) AddStreamedTails<TW, TRows, TTile>(a, r, b, i);
    }

    /// <summary>Adds the scalar products of columns <paramref name="i"/> … Cols−1 to the outputs of a <see cref="Streamed256{TW, TRows, TTile}"/> tile.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void AddStreamedTails<TW, TRows, TTile>(in MatMulArgs a, int r, int b, int i)
        where TW : IFloatWeights where TRows : IBatchTile where TTile : IBatchTile
    {
        int cols = a.Cols;
        float* y = a.Y + (long)b * a.Rows + r;
        for (int t = 0; t < TTile.Count; t++)
        {
            float* x = a.X + (long)(b + t) * cols;
            float* yt = y + (long)t * a.Rows;
            for (int k = 0; k < TRows.Count; k++) yt[k] += DotScalar<TW>(a.W + (r + k) * a.RowBytes, i, cols, x);
        }
    }

    /// <summary>Batch rows from which f16/bf16 row tiles are widened once into f32 for the whole batch.</summary>
    private const int WidenOnceMinBatch = 6;

    [ThreadStatic] private static float[]? t_widened;

    /// <summary>
    /// Rows r … r+3 of f16/bf16 weights against every batch row: the four rows widened once into f32 (a per-thread
    /// buffer that stays in the core's cache), then the F32 tiles over the batch. The widening is exact and the F32 tiles
    /// make the same products in the same order as <see cref="BatchTiles256{TW, TRows}"/> on the narrow rows, so the bits
    /// are the same; the widening is paid once per weight instead of once per three batch rows (F16 prefill had been
    /// bound by it).
    /// </summary>
    private static void WidenedTiles256<TW>(in MatMulArgs a, int r) where TW : IFloatWeights
    {
        int cols = a.Cols;
        var buffer = t_widened;
        if (buffer is null || buffer.Length < 4 * cols) t_widened = buffer = GC.AllocateUninitializedArray<float>(4 * cols, pinned: true);
        fixed (float* wide = buffer)
        {
            for (int k = 0; k < 4; k++)
            {
                byte* row = a.W + (r + k) * a.RowBytes;
                float* dst = wide + (long)k * cols;
                int i = 0;
                for (; i + 8 <= cols; i += 8) TW.Load8(row, i).Store(dst + i);
                for (; i < cols; i++) dst[i] = TW.Load1(row, i);
            }
            // A view of the matrix whose rows r … r+3 are the widened ones (the others are never read).
            var widened = new WeightMatrix(GgmlType.F32, (byte*)wide - (long)r * cols * sizeof(float), a.Rows, cols);
            BatchTiles256<F32Weights, Tile4>(new MatMulArgs(widened, a.X, a.Y, a.Batch, a.Path), r);
        }
    }

    /// <summary>Rows r … r+TRows.Count−1 against every batch row, three at a time.</summary>
    private static void BatchTiles256<TW, TRows>(in MatMulArgs a, int r) where TW : IFloatWeights where TRows : IBatchTile
    {
        int b = 0;
        for (; b + 3 <= a.Batch; b += 3) RowTile256<TW, TRows, Tile3>(a, r, b);
        switch (a.Batch - b)
        {
            case 2: RowTile256<TW, TRows, Tile2>(a, r, b); break;
            case 1: RowTile256<TW, TRows, Tile1>(a, r, b); break;
        }
    }

    /// <summary>Rows r … r+TRows.Count−1 (up to four) against batch rows b … b+TTile.Count−1 (up to three), 256-bit.</summary>
    private static void RowTile256<TW, TRows, TTile>(in MatMulArgs a, int r, int b)
        where TW : IFloatWeights where TRows : IBatchTile where TTile : IBatchTile
    {
        int cols = a.Cols;
        long rb = a.RowBytes;
        byte* w0 = a.W + r * rb, w1 = w0 + rb, w2 = w1 + rb, w3 = w2 + rb;
        float* x0 = a.X + (long)b * cols, x1 = x0 + cols, x2 = x1 + cols;
        Vector256<float> c00 = default, c01 = default, c02 = default, c10 = default, c11 = default, c12 = default;
        Vector256<float> c20 = default, c21 = default, c22 = default, c30 = default, c31 = default, c32 = default;
        int i = 0;
        for (; i + 8 <= cols; i += 8)
        {
            var u0 = Vector256.Load(x0 + i);
            var u1 = TTile.Count > 1 ? Vector256.Load(x1 + i) : default;
            var u2 = TTile.Count > 2 ? Vector256.Load(x2 + i) : default;
            var v = TW.Load8(w0, i);
            c00 = Vector256.FusedMultiplyAdd(v, u0, c00);
            if (TTile.Count > 1) c01 = Vector256.FusedMultiplyAdd(v, u1, c01);
            if (TTile.Count > 2) c02 = Vector256.FusedMultiplyAdd(v, u2, c02);
            if (TRows.Count > 1)
            {
                v = TW.Load8(w1, i);
                c10 = Vector256.FusedMultiplyAdd(v, u0, c10);
                if (TTile.Count > 1) c11 = Vector256.FusedMultiplyAdd(v, u1, c11);
                if (TTile.Count > 2) c12 = Vector256.FusedMultiplyAdd(v, u2, c12);
            }
            if (TRows.Count > 2)
            {
                v = TW.Load8(w2, i);
                c20 = Vector256.FusedMultiplyAdd(v, u0, c20);
                if (TTile.Count > 1) c21 = Vector256.FusedMultiplyAdd(v, u1, c21);
                if (TTile.Count > 2) c22 = Vector256.FusedMultiplyAdd(v, u2, c22);
            }
            if (TRows.Count > 3)
            {
                v = TW.Load8(w3, i);
                c30 = Vector256.FusedMultiplyAdd(v, u0, c30);
                if (TTile.Count > 1) c31 = Vector256.FusedMultiplyAdd(v, u1, c31);
                if (TTile.Count > 2) c32 = Vector256.FusedMultiplyAdd(v, u2, c32);
            }
        }
        // NOTE: all sums before the first call, as in RowTile4.
        float s00 = Vector256.Sum(c00), s01 = Vector256.Sum(c01), s02 = Vector256.Sum(c02);
        float s10 = Vector256.Sum(c10), s11 = Vector256.Sum(c11), s12 = Vector256.Sum(c12);
        float s20 = Vector256.Sum(c20), s21 = Vector256.Sum(c21), s22 = Vector256.Sum(c22);
        float s30 = Vector256.Sum(c30), s31 = Vector256.Sum(c31), s32 = Vector256.Sum(c32);
        Store<TW, TTile>(a, r, b, w0, i, s00, s01, s02, 0);
        if (TRows.Count > 1) Store<TW, TTile>(a, r + 1, b, w1, i, s10, s11, s12, 0);
        if (TRows.Count > 2) Store<TW, TTile>(a, r + 2, b, w2, i, s20, s21, s22, 0);
        if (TRows.Count > 3) Store<TW, TTile>(a, r + 3, b, w3, i, s30, s31, s32, 0);
    }

    /// <summary>
    /// Rows r, r+step, … r+7·step against one batch row, 256-bit: eight weight streams, one accumulator per row as in
    /// <see cref="RowTile256{TW, TRows, TTile}"/>, so results have the same bits.
    /// </summary>
    /// <remarks>
    /// NOTE: f16 and bf16 rows go sixteen at a time in two passes of step 2 (even rows, then odd rows). At 1,024 columns
    /// a 2-byte row is half a 4 KiB page, so eight consecutive rows put two streams in each page, the first ending where
    /// the second starts; the hardware prefetcher, which follows streams within a page, then ramped up twice per page and
    /// F16/BF16 streamed at about two thirds of the read bandwidth (without software prefetch). With step 2 each pass reads
    /// the same half of eight pages and the next pass the other half, every page front to back. Measured side by side on
    /// the Zen 3 EPYC while other work shared it (2,816 × 1,024, a 512 MiB ring, best call of 30 per round, the best
    /// round of eight to ten, one and two threads, against the best matrix-sized read of the same run): bf16 went from
    /// 74-85% to 88-98% of the read bandwidth, f16 from 83-91% to 87-93%. The software prefetch is kept: without it the
    /// two passes measured the same or a little lower.
    /// </remarks>
    /// <param name="a">The product.</param>
    /// <param name="r">The first row.</param>
    /// <param name="step">1 or 2: the distance between the tile's rows.</param>
    /// <param name="next">Where the bytes this tile's caller reads next start: 2-byte rows ask for them as the tile goes
    /// (eight of their rows' bytes, 256 per 16-column step).</param>
    private static void RowTile8x1_256<TW>(in MatMulArgs a, int r, int step, byte* next) where TW : IFloatWeights
    {
        int cols = a.Cols;
        long rb = a.RowBytes * step;
        byte* w0 = a.W + r * a.RowBytes, w1 = w0 + rb, w2 = w1 + rb, w3 = w2 + rb;
        byte* w4 = w3 + rb, w5 = w4 + rb, w6 = w5 + rb, w7 = w6 + rb;
        float* x = a.X, xs = a.XScaled;
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector256<float> c4 = default, c5 = default, c6 = default, c7 = default;
        int i = 0;
        // NOTE: sixteen columns per step (two FMAs per row in column order, the same sums as two eight-column steps).
        // The activations are the scaled ones where the loads fall short by a factor (the products are the same):
        // finite f16 rows widen without the re-bias (F16FiniteWeights.Load16), bf16 rows with one in-lane shuffle per
        // eight values (BF16Weights.Load8); neither permutes across lanes.
        // NOTE: 2-byte rows ask for the next eight rows' bytes, 256 bytes per step, so the whole next tile is on its
        // way when its first step starts. Without it F16 and BF16 streamed at about half the read bandwidth: a tile's
        // rows are short (2 KiB at 1,024 columns), each a new stream the hardware prefetcher has to learn, and the
        // widening's work per byte leaves fewer loads in flight than F32 has. F32 rows are twice as long and their
        // tiles reach the bandwidth without it (asking cost F32 a few percent).
        for (; i + 16 <= cols; i += 16)
        {
            if (typeof(TW) != typeof(F32Weights)) PackedSteps.PrefetchLines(next + 16L * i, 4, PrefetchLevel.L2);
            var ul = Vector256.Load(xs + i);
            var uh = Vector256.Load(xs + i + 8);
            TW.Load16(w0, i, out var l, out var h);
            c0 = Vector256.FusedMultiplyAdd(h, uh, Vector256.FusedMultiplyAdd(l, ul, c0));
            TW.Load16(w1, i, out l, out h);
            c1 = Vector256.FusedMultiplyAdd(h, uh, Vector256.FusedMultiplyAdd(l, ul, c1));
            TW.Load16(w2, i, out l, out h);
            c2 = Vector256.FusedMultiplyAdd(h, uh, Vector256.FusedMultiplyAdd(l, ul, c2));
            TW.Load16(w3, i, out l, out h);
            c3 = Vector256.FusedMultiplyAdd(h, uh, Vector256.FusedMultiplyAdd(l, ul, c3));
            TW.Load16(w4, i, out l, out h);
            c4 = Vector256.FusedMultiplyAdd(h, uh, Vector256.FusedMultiplyAdd(l, ul, c4));
            TW.Load16(w5, i, out l, out h);
            c5 = Vector256.FusedMultiplyAdd(h, uh, Vector256.FusedMultiplyAdd(l, ul, c5));
            TW.Load16(w6, i, out l, out h);
            c6 = Vector256.FusedMultiplyAdd(h, uh, Vector256.FusedMultiplyAdd(l, ul, c6));
            TW.Load16(w7, i, out l, out h);
            c7 = Vector256.FusedMultiplyAdd(h, uh, Vector256.FusedMultiplyAdd(l, ul, c7));
        }
        for (; i + 8 <= cols; i += 8)
        {
            var u = Vector256.Load(x + i);
            c0 = Vector256.FusedMultiplyAdd(TW.Load8(w0, i), u, c0);
            c1 = Vector256.FusedMultiplyAdd(TW.Load8(w1, i), u, c1);
            c2 = Vector256.FusedMultiplyAdd(TW.Load8(w2, i), u, c2);
            c3 = Vector256.FusedMultiplyAdd(TW.Load8(w3, i), u, c3);
            c4 = Vector256.FusedMultiplyAdd(TW.Load8(w4, i), u, c4);
            c5 = Vector256.FusedMultiplyAdd(TW.Load8(w5, i), u, c5);
            c6 = Vector256.FusedMultiplyAdd(TW.Load8(w6, i), u, c6);
            c7 = Vector256.FusedMultiplyAdd(TW.Load8(w7, i), u, c7);
        }
        float s0 = Vector256.Sum(c0), s1 = Vector256.Sum(c1), s2 = Vector256.Sum(c2), s3 = Vector256.Sum(c3);
        float s4 = Vector256.Sum(c4), s5 = Vector256.Sum(c5), s6 = Vector256.Sum(c6), s7 = Vector256.Sum(c7);
        Store<TW, Tile1>(a, r, 0, w0, i, s0, 0, 0, 0);
        Store<TW, Tile1>(a, r + step, 0, w1, i, s1, 0, 0, 0);
        Store<TW, Tile1>(a, r + 2 * step, 0, w2, i, s2, 0, 0, 0);
        Store<TW, Tile1>(a, r + 3 * step, 0, w3, i, s3, 0, 0, 0);
        Store<TW, Tile1>(a, r + 4 * step, 0, w4, i, s4, 0, 0, 0);
        Store<TW, Tile1>(a, r + 5 * step, 0, w5, i, s5, 0, 0, 0);
        Store<TW, Tile1>(a, r + 6 * step, 0, w6, i, s6, 0, 0, 0);
        Store<TW, Tile1>(a, r + 7 * step, 0, w7, i, s7, 0, 0, 0);
    }

    /// <summary>Writes one weight row's outputs for the tile's batch rows: the vector sums plus the scalar tails.</summary>
    private static void Store<TW, TTile>(in MatMulArgs a, int r, int b, byte* row, int tail, float s0, float s1, float s2, float s3)
        where TW : IFloatWeights where TTile : IBatchTile
    {
        int cols = a.Cols;
        float* x = a.X + (long)b * cols;
        float* y = a.Y + (long)b * a.Rows + r;
        y[0] = s0 + DotScalar<TW>(row, tail, cols, x);
        if (TTile.Count > 1) y[a.Rows] = s1 + DotScalar<TW>(row, tail, cols, x + cols);
        if (TTile.Count > 2) y[2 * a.Rows] = s2 + DotScalar<TW>(row, tail, cols, x + 2 * cols);
        if (TTile.Count > 3) y[3 * a.Rows] = s3 + DotScalar<TW>(row, tail, cols, x + 3 * cols);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile<TW, TTile>(in MatMulArgs a, byte* row, int r, int b)
        where TW : IFloatWeights where TTile : IBatchTile
    {
        int cols = a.Cols;
        float* x0 = a.X + (long)b * cols;
        float s0, s1 = 0, s2 = 0, s3 = 0;
        if (a.Path == KernelPath.Vector512) Dot512<TW, TTile>(row, cols, x0, out s0, out s1, out s2, out s3);
        else
        {
            s0 = DotScalar<TW>(row, 0, cols, x0);
            if (TTile.Count > 1) s1 = DotScalar<TW>(row, 0, cols, x0 + cols);
            if (TTile.Count > 2) s2 = DotScalar<TW>(row, 0, cols, x0 + 2 * cols);
            if (TTile.Count > 3) s3 = DotScalar<TW>(row, 0, cols, x0 + 3 * cols);
        }
        float* y = a.Y + (long)b * a.Rows + r;
        y[0] = s0;
        if (TTile.Count > 1) y[a.Rows] = s1;
        if (TTile.Count > 2) y[2 * a.Rows] = s2;
        if (TTile.Count > 3) y[3 * a.Rows] = s3;
    }

    private static float DotScalar<TW>(byte* row, int start, int cols, float* x) where TW : IFloatWeights
    {
        float s = 0;
        for (int i = start; i < cols; i++) s += TW.Load1(row, i) * x[i];
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot512<TW, TTile>(byte* row, int cols, float* x0, out float s0, out float s1, out float s2, out float s3)
        where TW : IFloatWeights where TTile : IBatchTile
    {
        float* x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
        Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default;
        Vector512<float> a2 = default, b2 = default, a3 = default, b3 = default;
        int i = 0;
        for (; i + 32 <= cols; i += 32)
        {
            TW.Load32(row, i, out var lo, out var hi);
            a0 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x0 + i), a0);
            b0 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x0 + i + 16), b0);
            if (TTile.Count > 1)
            {
                a1 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x1 + i), a1);
                b1 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x1 + i + 16), b1);
            }
            if (TTile.Count > 2)
            {
                a2 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x2 + i), a2);
                b2 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x2 + i + 16), b2);
            }
            if (TTile.Count > 3)
            {
                a3 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x3 + i), a3);
                b3 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x3 + i + 16), b3);
            }
        }
        s0 = Vector512.Sum(a0 + b0) + DotScalar<TW>(row, i, cols, x0);
        s1 = TTile.Count > 1 ? Vector512.Sum(a1 + b1) + DotScalar<TW>(row, i, cols, x1) : 0;
        s2 = TTile.Count > 2 ? Vector512.Sum(a2 + b2) + DotScalar<TW>(row, i, cols, x2) : 0;
        s3 = TTile.Count > 3 ? Vector512.Sum(a3 + b3) + DotScalar<TW>(row, i, cols, x3) : 0;
    }
}
