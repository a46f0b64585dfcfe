using ILGPU;
using Inference.Backends.Cpu;

namespace Inference.Kernels.Layer;

/// <summary>
/// The row kernels for weights kept in their GGUF block type on the device (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K,
/// Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS), dequantized in registers.
/// </summary>
/// <remarks>
/// <para>
/// The structure of <see cref="MatMulQ8_0"/>: <c>lanesPerRow</c> lanes (a warp) share an output row, a lane takes a
/// slot of 8 consecutive weights at a time (a block of 32 is 4 slots, a super-block of 256 is 32, so a warp reads one
/// super-block or 8 blocks per step, contiguous bytes), widens them with the slot's scale (and min) in f32 and
/// accumulates up to <see cref="BatchTile"/> items per load in f32; the lanes reduce with warp shuffles. Grid
/// <c>(⌈rows / rowsPerGroup⌉, ⌈batch / BatchChunk⌉)</c> as for the other row kernels, so any batch runs here; each
/// item has its own accumulator, so a row's bits do not depend on the batch.
/// </para>
/// <para>
/// Block rows are only 2-byte aligned (18, 22, 110, 210 bytes …), so the bytes are read as 16-bit words; the layouts
/// (where each code, scale and min sits) are <see cref="BlockLayout"/>'s, the same code the host dequantizer
/// (<see cref="Dequantize"/>) runs.
/// </para>
/// </remarks>
public static partial class MatMulKernels
{
    /// <summary>Weights per slot of the block row kernels (a lane's unit of work).</summary>
    public const int BlockSlotElements = 8;

    /// <summary>
    /// Weights in a GGUF block type, dequantized in registers. Grid <c>(⌈rows / rowsPerGroup⌉, ⌈batch / BatchChunk⌉)</c>.
    /// </summary>
    /// <typeparam name="TBlock">The block type.</typeparam>
    /// <param name="words">The raw block bytes viewed as 16-bit words, <c>[rows, cols / blockElements, blockBytes / 2]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of the block's elements.</param>
    /// <param name="batch">Input rows.</param>
    /// <param name="lanesPerRow">Threads per row: a power of two that divides the group and is at most the warp size.</param>
    internal static void MatMulBlocks<TBlock>(ArrayView<ushort> words, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch, int lanesPerRow)
        where TBlock : struct, IWeightBlock
    {
        var p = RowPass.Create(rows, cols, batch, lanesPerRow, cols / BlockSlotElements);
        for (int b0 = p.FirstItem; b0 < p.EndItem; b0 += BatchTile)
        {
            switch (p.EndItem - b0)
            {
                case 1: Finish<Tile1>(p, BlockAcc<TBlock, Tile1>(p, words, x, b0, cols), y, b0); break;
                case 2: Finish<Tile2>(p, BlockAcc<TBlock, Tile2>(p, words, x, b0, cols), y, b0); break;
                case 3: Finish<Tile3>(p, BlockAcc<TBlock, Tile3>(p, words, x, b0, cols), y, b0); break;
                default: Finish<Tile4>(p, BlockAcc<TBlock, Tile4>(p, words, x, b0, cols), y, b0); break;
            }
        }
    }

    /// <summary>
    /// Dequantizes rows of a block-type matrix to f32: <c>output[t, :] = W[ids[t], :]</c> (the embedding gather).
    /// Implicitly grouped over <c>(cols / 8, tokenCount)</c>: one thread per slot of 8 weights.
    /// </summary>
    /// <typeparam name="TBlock">The block type.</typeparam>
    /// <param name="index">(slot, token).</param>
    /// <param name="words">The raw block bytes viewed as 16-bit words.</param>
    /// <param name="ids">Row per token, <c>[tokenCount]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, cols]</c>.</param>
    /// <param name="cols">Row width, a multiple of the block's elements.</param>
    internal static void GatherBlocks<TBlock>(Index2D index, ArrayView<ushort> words, ArrayView<int> ids, ArrayView<float> output, int cols)
        where TBlock : struct, IWeightBlock
    {
        TBlock f = default;
        int parts = f.Elements / BlockSlotElements;
        int blockWords = f.Bytes / 2;
        long block = ((long)ids[index.Y] * (cols / f.Elements) + index.X / parts) * blockWords;
        var w = DecodeSlot<TBlock>(words, block, index.X % parts);
        long o = (long)index.Y * cols + (long)index.X * BlockSlotElements;
        output[o] = w.Lo.X;
        output[o + 1] = w.Lo.Y;
        output[o + 2] = w.Lo.Z;
        output[o + 3] = w.Lo.W;
        output[o + 4] = w.Hi.X;
        output[o + 5] = w.Hi.Y;
        output[o + 6] = w.Hi.Z;
        output[o + 7] = w.Hi.W;
    }

    private static Acc4 BlockAcc<TBlock, TTile>(RowPass p, ArrayView<ushort> words, ArrayView<float> x, int b0, int cols)
        where TBlock : struct, IWeightBlock
        where TTile : struct, ITile
    {
        var acc = default(Acc4);
        if (p.Active)
        {
            TBlock f = default;
            int parts = f.Elements / BlockSlotElements;
            int blockWords = f.Bytes / 2;
            long wRow = (long)p.Row * (p.Slots / parts) * blockWords;
            long x0 = (long)b0 * cols;
            int s = p.Lane, l = p.Lanes;
            // NOTE: two slots decoded before either is used keeps two rounds of loads in flight per lane.
            for (; s + l < p.Slots; s += 2 * l)
            {
                var w0 = DecodeSlot<TBlock>(words, wRow + (long)(s / parts) * blockWords, s % parts);
                var w1 = DecodeSlot<TBlock>(words, wRow + (long)((s + l) / parts) * blockWords, (s + l) % parts);
                acc = SlotStep<TTile>(acc, w0, x, x0 + (long)s * BlockSlotElements, cols);
                acc = SlotStep<TTile>(acc, w1, x, x0 + (long)(s + l) * BlockSlotElements, cols);
            }
            if (s < p.Slots)
                acc = SlotStep<TTile>(acc, DecodeSlot<TBlock>(words, wRow + (long)(s / parts) * blockWords, s % parts), x, x0 + (long)s * BlockSlotElements, cols);
        }
        return acc;
    }

    private static Acc4 SlotStep<TTile>(Acc4 acc, Slot w, ArrayView<float> x, long xi, int stride)
        where TTile : struct, ITile
    {
        int n = default(TTile).Count;
        acc.S0 += Dot8(w, x, xi);
        if (n > 1) acc.S1 += Dot8(w, x, xi + stride);
        if (n > 2) acc.S2 += Dot8(w, x, xi + 2L * stride);
        if (n > 3) acc.S3 += Dot8(w, x, xi + 3L * stride);
        return acc;
    }

    private static float Dot8(Slot w, ArrayView<float> x, long i) =>
        Dot4(w.Lo, new Vec4(x[i], x[i + 1], x[i + 2], x[i + 3])) + Dot4(w.Hi, new Vec4(x[i + 4], x[i + 5], x[i + 6], x[i + 7]));

    /// <summary>The 8 weights of slot <paramref name="part"/> of the block whose first word is <paramref name="block"/>.</summary>
    private static Slot DecodeSlot<TBlock>(ArrayView<ushort> words, long block, int part)
        where TBlock : struct, IWeightBlock
    {
        TBlock f = default;
        var b = new DeviceBlockBytes(words, block);
        int e = part * BlockSlotElements;
        var a = f.Scale(b, e);
        return new Slot(
            new Vec4(f.Code(b, e) * a.Mul + a.Add, f.Code(b, e + 1) * a.Mul + a.Add, f.Code(b, e + 2) * a.Mul + a.Add, f.Code(b, e + 3) * a.Mul + a.Add),
            new Vec4(f.Code(b, e + 4) * a.Mul + a.Add, f.Code(b, e + 5) * a.Mul + a.Add, f.Code(b, e + 6) * a.Mul + a.Add, f.Code(b, e + 7) * a.Mul + a.Add));
    }

    /// <summary>8 dequantized weights.</summary>
    private readonly struct Slot(Vec4 lo, Vec4 hi)
    {
        public readonly Vec4 Lo = lo, Hi = hi;
    }

    /// <summary>The bytes of one block in a device view of 16-bit words (little-endian: byte 2k is the low half of word k).</summary>
    internal readonly struct DeviceBlockBytes(ArrayView<ushort> words, long firstWord) : IBlockBytes
    {
        private readonly ArrayView<ushort> _words = words;
        private readonly long _firstWord = firstWord;

        public int Byte(int index) => (_words[_firstWord + (index >> 1)] >> ((index & 1) << 3)) & 0xFF;

        /// <summary>The f16 at byte <paramref name="offset"/> (even) widened to f32.</summary>
        public float Half(int offset) => (float)Interop.IntAsFloat(_words[_firstWord + (offset >> 1)]);
    }

    /// <summary>Weight = code · Mul + Add for the 8 weights of a slot.</summary>
    internal readonly struct Affine(float mul, float add)
    {
        public readonly float Mul = mul, Add = add;
    }

    /// <summary>One GGUF block type: its geometry, the affine map of a slot's sub-block and each value's code.</summary>
    internal interface IWeightBlock
    {
        /// <summary>Values per block.</summary>
        int Elements { get; }

        /// <summary>Bytes per block.</summary>
        int Bytes { get; }

        /// <summary>Whether a value is <c>code · Mul + Add</c> (the types with a min or offset) rather than <c>code · Mul</c>.</summary>
        bool HasMin { get; }

        /// <summary>The scale (and min) of the sub-block holding value <paramref name="e"/> (a slot never spans two).</summary>
        Affine Scale(DeviceBlockBytes b, int e);

        /// <summary>The integer code of value <paramref name="e"/> (offset removed, table applied).</summary>
        int Code(DeviceBlockBytes b, int e);
    }

    internal readonly struct Q4_0Block : IWeightBlock
    {
        public int Elements => 32;
        public int Bytes => 18;
        public bool HasMin => false;
        public Affine Scale(DeviceBlockBytes b, int e) => new(b.Half(0), 0f);
        public int Code(DeviceBlockBytes b, int e) => BlockLayout.Nibble32(b, 2, e) - 8;
    }

    internal readonly struct Q4_1Block : IWeightBlock
    {
        public int Elements => 32;
        public int Bytes => 20;
        public bool HasMin => true;
        public Affine Scale(DeviceBlockBytes b, int e) => new(b.Half(0), b.Half(2));
        public int Code(DeviceBlockBytes b, int e) => BlockLayout.Nibble32(b, 4, e);
    }

    internal readonly struct Q5_0Block : IWeightBlock
    {
        public int Elements => 32;
        public int Bytes => 22;
        public bool HasMin => false;
        public Affine Scale(DeviceBlockBytes b, int e) => new(b.Half(0), 0f);
        public int Code(DeviceBlockBytes b, int e) => BlockLayout.Q5Code(b, 2, e) - 16;
    }

    internal readonly struct Q5_1Block : IWeightBlock
    {
        public int Elements => 32;
        public int Bytes => 24;
        public bool HasMin => true;
        public Affine Scale(DeviceBlockBytes b, int e) => new(b.Half(0), b.Half(2));
        public int Code(DeviceBlockBytes b, int e) => BlockLayout.Q5Code(b, 4, e);
    }

    internal readonly struct IQ4_NLBlock : IWeightBlock
    {
        public int Elements => 32;
        public int Bytes => 18;
        public bool HasMin => false;
        public Affine Scale(DeviceBlockBytes b, int e) => new(b.Half(0), 0f);
        public int Code(DeviceBlockBytes b, int e) => BlockLayout.IQ4Value(BlockLayout.Nibble32(b, 2, e));
    }

    internal readonly struct Q2_KBlock : IWeightBlock
    {
        public int Elements => 256;
        public int Bytes => 84;
        public bool HasMin => true;

        public Affine Scale(DeviceBlockBytes b, int e)
        {
            int sc = b.Byte(e >> 4);
            return new(b.Half(80) * (sc & 0xF), -(b.Half(82) * (sc >> 4)));
        }

        public int Code(DeviceBlockBytes b, int e) => BlockLayout.K2Code(b, 16, e >> 7, (e >> 5) & 3, e & 31);
    }

    internal readonly struct Q3_KBlock : IWeightBlock
    {
        public int Elements => 256;
        public int Bytes => 110;
        public bool HasMin => false;
        public Affine Scale(DeviceBlockBytes b, int e) => new(b.Half(108) * (BlockLayout.Q3_KScale(b, 96, e >> 4) - 32), 0f);

        public int Code(DeviceBlockBytes b, int e)
        {
            int n = e >> 7, j = (e >> 5) & 3, l = e & 31;
            int high = (b.Byte(l) >> (4 * n + j)) & 1;
            return BlockLayout.K2Code(b, 32, n, j, l) - (high != 0 ? 0 : 4);
        }
    }

    internal readonly struct Q4_KBlock : IWeightBlock
    {
        public int Elements => 256;
        public int Bytes => 144;
        public bool HasMin => true;

        public Affine Scale(DeviceBlockBytes b, int e)
        {
            BlockLayout.ScaleMinK4(b, 4, e >> 5, out int sc, out int m);
            return new(b.Half(0) * sc, -(b.Half(2) * m));
        }

        public int Code(DeviceBlockBytes b, int e) => BlockLayout.K4Code(b, 16, -1, e);
    }

    internal readonly struct Q5_KBlock : IWeightBlock
    {
        public int Elements => 256;
        public int Bytes => 176;
        public bool HasMin => true;

        public Affine Scale(DeviceBlockBytes b, int e)
        {
            BlockLayout.ScaleMinK4(b, 4, e >> 5, out int sc, out int m);
            return new(b.Half(0) * sc, -(b.Half(2) * m));
        }

        public int Code(DeviceBlockBytes b, int e) => BlockLayout.K4Code(b, 48, 16, e);
    }

    internal readonly struct Q6_KBlock : IWeightBlock
    {
        public int Elements => 256;
        public int Bytes => 210;
        public bool HasMin => false;

        public Affine Scale(DeviceBlockBytes b, int e)
        {
            int n = e >> 7, quarter = (e >> 5) & 3, pos = e & 31;
            int sc = (b.Byte(192 + 8 * n + 2 * quarter + (pos >> 4)) ^ 0x80) - 0x80;
            return new(b.Half(208) * sc, 0f);
        }

        public int Code(DeviceBlockBytes b, int e) => BlockLayout.Q6_KCode(b, e >> 7, (e >> 5) & 3, e & 31) - 32;
    }

    internal readonly struct IQ4_XSBlock : IWeightBlock
    {
        public int Elements => 256;
        public int Bytes => 136;
        public bool HasMin => false;
        public Affine Scale(DeviceBlockBytes b, int e) => new(b.Half(0) * (BlockLayout.IQ4_XSScale(b, e >> 5) - 32), 0f);
        public int Code(DeviceBlockBytes b, int e) => BlockLayout.IQ4Value(BlockLayout.Nibble32(b, 8 + 16 * (e >> 5), e & 31));
    }
}
