using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>
/// <c>y[b, r] = Σ_c W[r, c] * x[b, c]</c> for weights in GGML row layout (a row is one output feature):
/// F32, F16 and Q8_0 (blocks of 32 weights: an f16 scale then 32 int8, 34 bytes; weight = scale * q).
/// </summary>
/// <remarks>
/// <para>
/// The row kernels (<see cref="MatMulF32"/>, <see cref="MatMulF16"/>, <see cref="MatMulQ8_0"/>) are written for
/// memory bandwidth: <c>lanesPerRow</c> consecutive threads (a warp on GPUs) share one output row, a group holds
/// <c>Group.DimX / lanesPerRow</c> rows, and the lanes of a row reduce with warp shuffles (no shared memory, no
/// barriers). Each lane reads 16 bytes of F32 / F16 weights per load (a warp reads 512 contiguous bytes) and four
/// loads are in flight per loop step. Q8_0 rows are only 2-byte aligned: four lanes share a 34-byte block, each
/// reading 8 quants as four 2-byte loads, so a warp reads 8 consecutive blocks (272 bytes) per step.
/// </para>
/// <para>
/// The batch is looped inside the kernel: a weight element is loaded once for up to <see cref="BatchTile"/> items
/// (one accumulator each), and a group walks up to <see cref="BatchChunk"/> items over the same rows, so the repeat
/// passes read the row from cache instead of memory. Grid <c>(⌈rows / rowsPerGroup⌉, ⌈batch / BatchChunk⌉)</c>.
/// </para>
/// <para>
/// The simple kernels (<see cref="MatMul{TW, TConv}"/>, <see cref="MatMulQ8_0Simple"/>: one group per (row, item),
/// scalar loads, a shared-memory reduction) are the fallback for shapes or offsets the wide loads cannot serve.
/// </para>
/// </remarks>
public static partial class MatMulKernels
{
    /// <summary>Threads per group of the simple kernels on GPUs; they work with any power of two up to 64.</summary>
    public const int GroupSize = 64;

    /// <summary>Threads per group of the row kernels on GPUs: four warps, four rows.</summary>
    public const int RowGroupSize = 128;

    /// <summary>Batch items that share one load of a weight element (accumulators per lane).</summary>
    public const int BatchTile = 4;

    /// <summary>Batch items one group walks over the same rows (the second grid dimension splits larger batches).</summary>
    public const int BatchChunk = 16;

    /// <summary>Elements per Q8_0 block.</summary>
    public const int Q8BlockElements = 32;

    /// <summary>Bytes per Q8_0 block.</summary>
    public const int Q8BlockBytes = 34;

    /// <summary>F32 weights, 16-byte loads. Grid <c>(⌈rows / rowsPerGroup⌉, ⌈batch / BatchChunk⌉)</c>.</summary>
    /// <param name="weights">Weights, <c>[rows, cols]</c>; the view starts 16-byte aligned.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>; the view starts 16-byte aligned.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 4.</param>
    /// <param name="batch">Input rows.</param>
    /// <param name="lanesPerRow">Threads per row: a power of two that divides the group and is at most the warp size.</param>
    public static void MatMulF32(ArrayView<float> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch, int lanesPerRow)
    {
        var p = RowPass.Create(rows, cols, batch, lanesPerRow, cols >> 2);
        var w = weights.Cast<Vec4>();
        var xv = x.Cast<Vec4>();
        for (int b0 = p.FirstItem; b0 < p.EndItem; b0 += BatchTile)
        {
            switch (p.EndItem - b0)
            {
                case 1: Finish<Tile1>(p, F32Acc<Tile1>(p, w, xv, b0), y, b0); break;
                case 2: Finish<Tile2>(p, F32Acc<Tile2>(p, w, xv, b0), y, b0); break;
                case 3: Finish<Tile3>(p, F32Acc<Tile3>(p, w, xv, b0), y, b0); break;
                default: Finish<Tile4>(p, F32Acc<Tile4>(p, w, xv, b0), y, b0); break;
            }
        }
    }

    /// <summary>F16 weights, 16-byte loads (8 weights). Grid <c>(⌈rows / rowsPerGroup⌉, ⌈batch / BatchChunk⌉)</c>.</summary>
    /// <param name="weights">Weights, <c>[rows, cols]</c>; the view starts 16-byte aligned.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>; the view starts 16-byte aligned.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 8.</param>
    /// <param name="batch">Input rows.</param>
    /// <param name="lanesPerRow">Threads per row: a power of two that divides the group and is at most the warp size.</param>
    public static void MatMulF16(ArrayView<ILGPU.Half> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch, int lanesPerRow)
    {
        var p = RowPass.Create(rows, cols, batch, lanesPerRow, cols >> 3);
        var w = weights.Cast<Bits128>();
        var xv = x.Cast<Vec4>();
        for (int b0 = p.FirstItem; b0 < p.EndItem; b0 += BatchTile)
        {
            switch (p.EndItem - b0)
            {
                case 1: Finish<Tile1>(p, F16Acc<Tile1>(p, w, xv, b0), y, b0); break;
                case 2: Finish<Tile2>(p, F16Acc<Tile2>(p, w, xv, b0), y, b0); break;
                case 3: Finish<Tile3>(p, F16Acc<Tile3>(p, w, xv, b0), y, b0); break;
                default: Finish<Tile4>(p, F16Acc<Tile4>(p, w, xv, b0), y, b0); break;
            }
        }
    }

    /// <summary>
    /// Q8_0 weights, four lanes per block, 2-byte loads. Grid <c>(⌈rows / rowsPerGroup⌉, ⌈batch / BatchChunk⌉)</c>.
    /// </summary>
    /// <param name="words">The raw Q8_0 bytes viewed as 16-bit words, <c>[rows, cols / 32, 17]</c> (word 0 of a block is its f16 scale).</param>
    /// <param name="x">Input, <c>[batch, cols]</c>; the view starts 16-byte aligned.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 32.</param>
    /// <param name="batch">Input rows.</param>
    /// <param name="lanesPerRow">Threads per row: a power of two that divides the group and is at most the warp size.</param>
    public static void MatMulQ8_0(ArrayView<ushort> words, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch, int lanesPerRow)
    {
        // a slot is a quarter block: 8 quants, 4 words
        var p = RowPass.Create(rows, cols, batch, lanesPerRow, cols >> 3);
        var xv = x.Cast<Vec4>();
        for (int b0 = p.FirstItem; b0 < p.EndItem; b0 += BatchTile)
        {
            switch (p.EndItem - b0)
            {
                case 1: Finish<Tile1>(p, Q8Acc<Tile1>(p, words, xv, b0), y, b0); break;
                case 2: Finish<Tile2>(p, Q8Acc<Tile2>(p, words, xv, b0), y, b0); break;
                case 3: Finish<Tile3>(p, Q8Acc<Tile3>(p, words, xv, b0), y, b0); break;
                default: Finish<Tile4>(p, Q8Acc<Tile4>(p, words, xv, b0), y, b0); break;
            }
        }
    }

    /// <summary>
    /// F32 or F16 weights, the simple kernel (any <c>cols</c>, any offsets). Grid <c>(rows, batch)</c>, group
    /// <c>(GroupSize)</c>.
    /// </summary>
    /// <typeparam name="TW">Stored weight type.</typeparam>
    /// <typeparam name="TConv">Widens <typeparamref name="TW"/> to f32.</typeparam>
    /// <param name="weights">Weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    public static void MatMul<TW, TConv>(ArrayView<TW> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols)
        where TW : unmanaged
        where TConv : struct, IElementConverter<TW>
    {
        int row = Grid.IdxX;
        int item = Grid.IdxY;
        long w0 = (long)row * cols;
        long x0 = (long)item * cols;
        TConv conv = default;
        float sum = 0f;
        for (int c = Group.IdxX; c < cols; c += Group.DimX) sum += conv.ToFloat(weights[w0 + c]) * x[x0 + c];
        float total = GroupReduce.Sum(sum);
        if (Group.IsFirstThread) y[(long)item * rows + row] = total;
    }

    /// <summary>
    /// Q8_0 weights, the simple kernel (any offsets). Grid <c>(rows, batch)</c>, group <c>(GroupSize)</c>;
    /// <c>cols</c> a multiple of 32.
    /// </summary>
    /// <param name="quants">The raw Q8_0 bytes, <c>[rows, cols / 32, 34]</c>.</param>
    /// <param name="scales">The same memory viewed as f16 (block <c>k</c>'s scale is element <c>17k</c>).</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    public static void MatMulQ8_0Simple(ArrayView<byte> quants, ArrayView<ILGPU.Half> scales, ArrayView<float> x, ArrayView<float> y, int rows, int cols)
    {
        int row = Grid.IdxX;
        int item = Grid.IdxY;
        int blocksPerRow = cols / Q8BlockElements;
        long firstBlock = (long)row * blocksPerRow;
        long x0 = (long)item * cols;
        float sum = 0f;
        for (int b = Group.IdxX; b < blocksPerRow; b += Group.DimX)
        {
            long block = firstBlock + b;
            long q0 = block * Q8BlockBytes + 2;
            long xb = x0 + (long)b * Q8BlockElements;
            float dot = 0f;
            for (int i = 0; i < Q8BlockElements; i++) dot += (sbyte)quants[q0 + i] * x[xb + i];
            sum += (float)scales[block * (Q8BlockBytes / 2)] * dot;
        }
        float total = GroupReduce.Sum(sum);
        if (Group.IsFirstThread) y[(long)item * rows + row] = total;
    }

    // ---- row kernels: one pass over a group's rows for one batch tile, a lane's partial sums ----

    private static Acc4 F32Acc<TTile>(RowPass p, ArrayView<Vec4> w, ArrayView<Vec4> x, int b0)
        where TTile : struct, ITile
    {
        var acc = default(Acc4);
        if (p.Active)
        {
            long wRow = (long)p.Row * p.Slots;
            long x0 = (long)b0 * p.Slots;   // cols / 4 vectors per item
            int s = p.Lane, l = p.Lanes;
            for (; s + 3 * l < p.Slots; s += 4 * l)
            {
                var v0 = w[wRow + s];
                var v1 = w[wRow + s + l];
                var v2 = w[wRow + s + 2 * l];
                var v3 = w[wRow + s + 3 * l];
                acc = F32Step<TTile>(acc, v0, x, x0 + s, p.Slots);
                acc = F32Step<TTile>(acc, v1, x, x0 + s + l, p.Slots);
                acc = F32Step<TTile>(acc, v2, x, x0 + s + 2 * l, p.Slots);
                acc = F32Step<TTile>(acc, v3, x, x0 + s + 3 * l, p.Slots);
            }
            for (; s < p.Slots; s += l) acc = F32Step<TTile>(acc, w[wRow + s], x, x0 + s, p.Slots);
        }
        return acc;
    }

    private static Acc4 F32Step<TTile>(Acc4 acc, Vec4 w, ArrayView<Vec4> x, long xi, int stride)
        where TTile : struct, ITile
    {
        int n = default(TTile).Count;
        acc.S0 += Dot4(w, x[xi]);
        if (n > 1) acc.S1 += Dot4(w, x[xi + stride]);
        if (n > 2) acc.S2 += Dot4(w, x[xi + 2L * stride]);
        if (n > 3) acc.S3 += Dot4(w, x[xi + 3L * stride]);
        return acc;
    }

    private static Acc4 F16Acc<TTile>(RowPass p, ArrayView<Bits128> w, ArrayView<Vec4> x, int b0)
        where TTile : struct, ITile
    {
        var acc = default(Acc4);
        if (p.Active)
        {
            long wRow = (long)p.Row * p.Slots;
            int stride = 2 * p.Slots;         // cols / 4 vectors per item
            long x0 = (long)b0 * stride;
            int s = p.Lane, l = p.Lanes;
            for (; s + 3 * l < p.Slots; s += 4 * l)
            {
                var v0 = w[wRow + s];
                var v1 = w[wRow + s + l];
                var v2 = w[wRow + s + 2 * l];
                var v3 = w[wRow + s + 3 * l];
                acc = F16Step<TTile>(acc, v0, x, x0 + 2L * s, stride);
                acc = F16Step<TTile>(acc, v1, x, x0 + 2L * (s + l), stride);
                acc = F16Step<TTile>(acc, v2, x, x0 + 2L * (s + 2 * l), stride);
                acc = F16Step<TTile>(acc, v3, x, x0 + 2L * (s + 3 * l), stride);
            }
            for (; s < p.Slots; s += l) acc = F16Step<TTile>(acc, w[wRow + s], x, x0 + 2L * s, stride);
        }
        return acc;
    }

    private static Acc4 F16Step<TTile>(Acc4 acc, Bits128 bits, ArrayView<Vec4> x, long xi, int stride)
        where TTile : struct, ITile
    {
        int n = default(TTile).Count;
        var lo = new Vec4(Low(bits.A), High(bits.A), Low(bits.B), High(bits.B));
        var hi = new Vec4(Low(bits.C), High(bits.C), Low(bits.D), High(bits.D));
        acc.S0 += Dot4(lo, x[xi]) + Dot4(hi, x[xi + 1]);
        if (n > 1) acc.S1 += Dot4(lo, x[xi + stride]) + Dot4(hi, x[xi + stride + 1]);
        if (n > 2) acc.S2 += Dot4(lo, x[xi + 2L * stride]) + Dot4(hi, x[xi + 2L * stride + 1]);
        if (n > 3) acc.S3 += Dot4(lo, x[xi + 3L * stride]) + Dot4(hi, x[xi + 3L * stride + 1]);
        return acc;
    }

    private static Acc4 Q8Acc<TTile>(RowPass p, ArrayView<ushort> words, ArrayView<Vec4> x, int b0)
        where TTile : struct, ITile
    {
        var acc = default(Acc4);
        if (p.Active)
        {
            // p.Slots quarter blocks per row; a block is 17 words
            long wRow = (long)p.Row * (p.Slots >> 2) * (Q8BlockBytes / 2);
            int stride = 2 * p.Slots;         // cols / 4 vectors per item
            long x0 = (long)b0 * stride;
            int s = p.Lane, l = p.Lanes;
            for (; s + 3 * l < p.Slots; s += 4 * l)
            {
                var q0 = LoadQuarter(words, wRow, s);
                var q1 = LoadQuarter(words, wRow, s + l);
                var q2 = LoadQuarter(words, wRow, s + 2 * l);
                var q3 = LoadQuarter(words, wRow, s + 3 * l);
                acc = Q8Step<TTile>(acc, q0, x, x0 + 2L * s, stride);
                acc = Q8Step<TTile>(acc, q1, x, x0 + 2L * (s + l), stride);
                acc = Q8Step<TTile>(acc, q2, x, x0 + 2L * (s + 2 * l), stride);
                acc = Q8Step<TTile>(acc, q3, x, x0 + 2L * (s + 3 * l), stride);
            }
            for (; s < p.Slots; s += l) acc = Q8Step<TTile>(acc, LoadQuarter(words, wRow, s), x, x0 + 2L * s, stride);
        }
        return acc;
    }

    /// <summary>Quarter <paramref name="slot"/> of a row: its block's scale and 8 quants (words 1 + 4(slot % 4) .. +3).</summary>
    private static Quarter LoadQuarter(ArrayView<ushort> words, long wRow, int slot)
    {
        long block = wRow + (long)(slot >> 2) * (Q8BlockBytes / 2);
        long q = block + 1 + 4 * (slot & 3);
        return new Quarter(words[block], words[q], words[q + 1], words[q + 2], words[q + 3]);
    }

    private static Acc4 Q8Step<TTile>(Acc4 acc, Quarter q, ArrayView<Vec4> x, long xi, int stride)
        where TTile : struct, ITile
    {
        int n = default(TTile).Count;
        float d = (float)Interop.IntAsFloat(q.Scale);
        var lo = new Vec4(QLow(q.W0), QHigh(q.W0), QLow(q.W1), QHigh(q.W1));
        var hi = new Vec4(QLow(q.W2), QHigh(q.W2), QLow(q.W3), QHigh(q.W3));
        acc.S0 += d * (Dot4(lo, x[xi]) + Dot4(hi, x[xi + 1]));
        if (n > 1) acc.S1 += d * (Dot4(lo, x[xi + stride]) + Dot4(hi, x[xi + stride + 1]));
        if (n > 2) acc.S2 += d * (Dot4(lo, x[xi + 2L * stride]) + Dot4(hi, x[xi + 2L * stride + 1]));
        if (n > 3) acc.S3 += d * (Dot4(lo, x[xi + 3L * stride]) + Dot4(hi, x[xi + 3L * stride + 1]));
        return acc;
    }

    /// <summary>Reduces the accumulators over the lanes of a row and stores them (lane 0).</summary>
    private static void Finish<TTile>(RowPass p, Acc4 acc, ArrayView<float> y, int b0)
        where TTile : struct, ITile =>
        Store<TTile>(p, RowSums<TTile>(p, acc), y, b0);

    /// <summary>The row sums of the tile's items (every lane gets them).</summary>
    private static Acc4 RowSums<TTile>(RowPass p, Acc4 acc)
        where TTile : struct, ITile
    {
        int n = default(TTile).Count;
        // NOTE: every lane of the warp reaches the shuffles (inactive rows carry zeros): shfl.sync needs the full mask.
        var sums = default(Acc4);
        sums.S0 = RowSum(acc.S0, p.Lanes);
        sums.S1 = n > 1 ? RowSum(acc.S1, p.Lanes) : 0f;
        sums.S2 = n > 2 ? RowSum(acc.S2, p.Lanes) : 0f;
        sums.S3 = n > 3 ? RowSum(acc.S3, p.Lanes) : 0f;
        return sums;
    }

    /// <summary>Stores the tile's values of the row (lane 0 of an active row).</summary>
    private static void Store<TTile>(RowPass p, Acc4 values, ArrayView<float> y, int b0)
        where TTile : struct, ITile
    {
        int n = default(TTile).Count;
        if (!p.Active || p.Lane != 0) return;
        long o = (long)b0 * p.Rows + p.Row;
        y[o] = values.S0;
        if (n > 1) y[o + p.Rows] = values.S1;
        if (n > 2) y[o + 2L * p.Rows] = values.S2;
        if (n > 3) y[o + 3L * p.Rows] = values.S3;
    }

    /// <summary>Butterfly sum over <paramref name="lanes"/> consecutive lanes (a power of two ≤ the warp size).</summary>
    private static float RowSum(float value, int lanes)
    {
        for (int offset = lanes >> 1; offset > 0; offset >>= 1) value += Warp.ShuffleXor(value, offset);
        return value;
    }

    private static float Dot4(Vec4 a, Vec4 b) => a.X * b.X + a.Y * b.Y + a.Z * b.Z + a.W * b.W;

    private static float Low(uint bits) => (float)Interop.IntAsFloat((ushort)(bits & 0xFFFF));

    private static float High(uint bits) => (float)Interop.IntAsFloat((ushort)(bits >> 16));

    // NOTE: sign-extended in 32-bit integer arithmetic: ILGPU 1.5.3 compiles (sbyte)(byte)x to PTX as an unsigned byte
    // conversion (cvt.rn.f32.u8), which gave codes 128..255 instead of -128..-1 on an H100 (the CPU accelerator runs
    // the C# semantics and hid it).
    private static float QLow(ushort word) => ((word & 0xFF) ^ 0x80) - 0x80;

    private static float QHigh(ushort word) => ((word >> 8) ^ 0x80) - 0x80;

    /// <summary>Where a thread works in a row kernel.</summary>
    private readonly struct RowPass
    {
        public readonly int Rows, Lanes, Lane, Row, Slots, FirstItem, EndItem;
        public readonly bool Active;

        private RowPass(int rows, int lanes, int lane, int row, int slots, int firstItem, int endItem)
        {
            Rows = rows;
            Lanes = lanes;
            Lane = lane;
            Row = row;
            Slots = slots;
            FirstItem = firstItem;
            EndItem = endItem;
            Active = row < rows;
        }

        /// <param name="rows">Output features.</param>
        /// <param name="cols">Input features.</param>
        /// <param name="batch">Input rows.</param>
        /// <param name="lanes">Threads per row.</param>
        /// <param name="slots">Load units per row.</param>
        public static RowPass Create(int rows, int cols, int batch, int lanes, int slots)
        {
            int rowsPerGroup = Group.DimX / lanes;
            int first = Grid.IdxY * BatchChunk;
            return new RowPass(rows, lanes, Group.IdxX & (lanes - 1), Grid.IdxX * rowsPerGroup + Group.IdxX / lanes, slots,
                first, Math.Min(batch, first + BatchChunk));
        }
    }

    private struct Acc4
    {
        public float S0, S1, S2, S3;
    }

    private readonly struct Vec4
    {
        public readonly float X, Y, Z, W;

        public Vec4(float x, float y, float z, float w)
        {
            X = x;
            Y = y;
            Z = z;
            W = w;
        }
    }

    /// <summary>16 bytes of F16 weights: 8 values, two per word, the lower address in the low half.</summary>
    private readonly struct Bits128
    {
        public readonly uint A, B, C, D;

        public Bits128(uint a, uint b, uint c, uint d)
        {
            A = a;
            B = b;
            C = c;
            D = d;
        }
    }

    /// <summary>A Q8_0 quarter block: the block's f16 scale bits and 8 int8 quants in 4 little-endian words.</summary>
    private readonly struct Quarter
    {
        public readonly ushort Scale, W0, W1, W2, W3;

        public Quarter(ushort scale, ushort w0, ushort w1, ushort w2, ushort w3)
        {
            Scale = scale;
            W0 = w0;
            W1 = w1;
            W2 = w2;
            W3 = w3;
        }
    }

    /// <summary>The batch items of one pass, a compile-time constant per instantiation.</summary>
    private interface ITile
    {
        int Count { get; }
    }

    private readonly struct Tile1 : ITile { public int Count => 1; }

    private readonly struct Tile2 : ITile { public int Count => 2; }

    private readonly struct Tile3 : ITile { public int Count => 3; }

    private readonly struct Tile4 : ITile { public int Count => 4; }
}
