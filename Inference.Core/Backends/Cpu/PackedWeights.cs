using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// A matmul kernel over weights repacked eight rows per group (<see cref="PackedWeights"/>): the layout of one packed
/// block and the tile that computes a group's eight outputs for a few batch rows.
/// </summary>
internal unsafe interface IPackedKernel
{
    /// <summary>The weight type whose rows it packs.</summary>
    static abstract GgmlType Type { get; }

    /// <summary>Bytes of one packed block: the same GGUF block of each of the eight rows.</summary>
    static abstract int PackedBlockBytes { get; }

    /// <summary>Activation values per quantization block: 32 (Q8_0 activations) or 256 (Q8_K).</summary>
    static abstract int ActivationBlock { get; }

    /// <summary>True when the 32-value activation blocks are Q8_1 (the f16 d·Σq per block for the weights' min) rather
    /// than Q8_0.</summary>
    static virtual bool MinActivations => false;

    /// <summary>Writes GGUF block <paramref name="block"/> of rows 8g … 8g+7 of <paramref name="w"/> to <paramref name="dst"/>.</summary>
    static abstract void PackBlock(byte* dst, in WeightMatrix w, int g, int block);

    /// <summary>Writes y[b + t, 8g + j] for t &lt; TTile.Count and j &lt; 8 from the packed group at <paramref name="group"/>.</summary>
    static abstract void Tile<TTile, TIsa>(in MatMulArgs a, byte* group, int g, int b) where TTile : IBatchTile where TIsa : IIntegerIsa;

    /// <summary>Computes rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>) from the GGUF layout (the rows
    /// after the last whole group).</summary>
    static abstract void TailRows(in MatMulArgs a, int rowStart, int rowEnd);

    /// <summary>True when <see cref="TileTwoGroups"/> reads two groups' weight streams at once (batch 1).</summary>
    static virtual bool InterleavesGroups => false;

    /// <summary>
    /// One batch row against groups <paramref name="gA"/> and <paramref name="gB"/>, each with exactly the operations of
    /// <see cref="Tile{TTile, TIsa}"/> for one batch row (so the same bits), the two weight streams read side by side.
    /// </summary>
    static virtual void TileTwoGroups<TIsa>(in MatMulArgs a, byte* groupA, int gA, byte* groupB, int gB) where TIsa : IIntegerIsa =>
        throw new NotSupportedException("this kernel does not interleave groups");
}

/// <summary>Work to do with the packed kernel of a weight type, given to <see cref="PackedWeights.Visit"/>.</summary>
internal interface IPackedKernelVisitor
{
    /// <summary>Does the work with <typeparamref name="TKernel"/>.</summary>
    void Visit<TKernel>() where TKernel : IPackedKernel;
}

/// <summary>
/// The whole groups of eight rows of a weight matrix, repacked for an <see cref="IPackedKernel"/> so that one
/// <c>vpdpbusd</c> lane belongs to one output row (see <see cref="PackedQ8_0"/>, <see cref="PackedBlock32{TLayout}"/>,
/// <see cref="PackedQ4_K"/>, <see cref="PackedQ5_K"/>, <see cref="PackedQ6_K"/>, <see cref="PackedQ3_K"/>, <see cref="PackedQ2_K"/>,
/// <see cref="PackedIQ4_XS"/>). Rows after the last whole group keep the GGUF layout.
/// </summary>
/// <remarks>Every output sees the same operations whatever the batch size, so a request's tokens do not depend on what
/// it is batched with. The kernels use AVX-VNNI where present and run on AVX2 alone otherwise, with the same integer sums
/// (<see cref="IIntegerIsa"/>).</remarks>
internal sealed unsafe class PackedWeights
{
    /// <summary>Rows per group.</summary>
    public const int GroupRows = 8;

    private readonly WeightBuffer _buffer;

    private PackedWeights(GgmlType type, int groups, long groupBytes, WeightArena? arena)
    {
        Type = type;
        Groups = groups;
        GroupBytes = groupBytes;
        Streams = arena?.StreamsFromMemory ?? false;
        if (arena is null)
        {
            _buffer = new WeightBuffer(groups * groupBytes);
            Data = _buffer.Data;
        }
        else Data = arena.Allocate(groups * groupBytes, out _buffer);
    }

    /// <summary>The packed weight type.</summary>
    public GgmlType Type { get; }
    /// <summary>Start of group 0 (valid for the life of this object).</summary>
    public byte* Data { get; }
    /// <summary>Whole groups of eight rows.</summary>
    public int Groups { get; }
    /// <summary>Bytes per group.</summary>
    public long GroupBytes { get; }
    /// <summary>
    /// True when the model these weights belong to streams its weights from memory each token
    /// (<see cref="WeightArena.StreamsFromMemory"/>): the batch-1 kernels then also ask for lines far ahead into L2
    /// (<see cref="PackedSteps.PrefetchFar"/>).
    /// </summary>
    public bool Streams { get; }

    /// <summary>True when the packed kernels run at <paramref name="path"/> on this machine (AVX2 or better).</summary>
    public static bool Runs(KernelPath path) => path >= KernelPath.Vector256 && KernelPaths.IsSupported(path);

    /// <summary>True when this machine's fastest path runs a packed kernel for <paramref name="type"/>.</summary>
    public static bool IsSupportedFor(GgmlType type)
    {
        var none = new NoVisit();
        return Runs(KernelPaths.Best) && Visit(type, ref none);
    }

    /// <summary>
    /// Calls <paramref name="visitor"/> with the packed kernel of <paramref name="type"/>: the one place that maps weight
    /// types to their packed kernels (packing, products and shared products all go through it).
    /// </summary>
    /// <returns>False, without a call, when <paramref name="type"/> has no packed kernel.</returns>
    public static bool Visit<TVisitor>(GgmlType type, ref TVisitor visitor) where TVisitor : struct, IPackedKernelVisitor
    {
        switch (type)
        {
            case GgmlType.Q8_0: visitor.Visit<PackedQ8_0>(); return true;
            case GgmlType.Q4_0: visitor.Visit<PackedBlock32<Q4_0Layout>>(); return true;
            case GgmlType.Q4_1: visitor.Visit<PackedBlock32<Q4_1Layout>>(); return true;
            case GgmlType.Q5_0: visitor.Visit<PackedBlock32<Q5_0Layout>>(); return true;
            case GgmlType.Q5_1: visitor.Visit<PackedBlock32<Q5_1Layout>>(); return true;
            case GgmlType.IQ4_NL: visitor.Visit<PackedBlock32<IQ4_NLLayout>>(); return true;
            case GgmlType.Q4_K: visitor.Visit<PackedQ4_K>(); return true;
            case GgmlType.Q5_K: visitor.Visit<PackedQ5_K>(); return true;
            case GgmlType.Q6_K: visitor.Visit<PackedQ6_K>(); return true;
            case GgmlType.Q3_K: visitor.Visit<PackedQ3_K>(); return true;
            case GgmlType.Q2_K: visitor.Visit<PackedQ2_K>(); return true;
            case GgmlType.IQ4_XS: visitor.Visit<PackedIQ4_XS>(); return true;
            default: return false;
        }
    }

    private struct NoVisit : IPackedKernelVisitor
    {
        public readonly void Visit<TKernel>() where TKernel : IPackedKernel { }
    }

    /// <summary>Repacks the whole groups of <paramref name="w"/>'s rows (into <paramref name="arena"/> when given, else a
    /// buffer of their own); null when it has fewer than eight rows or the copy would not fit one array (that matrix then
    /// keeps the GGUF layout and the unpacked kernel).</summary>
    /// <exception cref="ArgumentException"><paramref name="w"/> is not of <typeparamref name="TKernel"/>'s type.</exception>
    public static PackedWeights? Pack<TKernel>(in WeightMatrix w, WeightArena? arena = null) where TKernel : IPackedKernel
    {
        if (w.Type != TKernel.Type) throw new ArgumentException($"expected {TKernel.Type} weights, got {w.Type}", nameof(w));
        int groups = w.Rows / GroupRows, blocks = w.Cols / GgmlTypeInfo.BlockElements(w.Type);
        long groupBytes = (long)blocks * TKernel.PackedBlockBytes;
        if (groups == 0 || groups * groupBytes > Array.MaxLength) return null;
        var packed = new PackedWeights(w.Type, groups, groupBytes, arena);
        for (int g = 0; g < groups; g++)
        for (int i = 0; i < blocks; i++)
            TKernel.PackBlock(packed.Data + g * groupBytes + (long)i * TKernel.PackedBlockBytes, w, g, i);
        return packed;
    }

    /// <summary>Computes the outputs of groups [<paramref name="start"/>, <paramref name="end"/>) for every batch row,
    /// in tiles of up to four batch rows; item <see cref="Groups"/> (when the matrix has one) is the tail rows.</summary>
    public void Run<TKernel>(in MatMulArgs a, int start, int end) where TKernel : IPackedKernel
    {
        switch (KernelPaths.Steps(a.Path))
        {
            case IntegerSteps.Vnni: Run<TKernel, WithVnni>(a, start, end); break;
            case IntegerSteps.EmulatedVnni: Run<TKernel, EmulatedVnni>(a, start, end); break;
            default: Run<TKernel, WithoutVnni>(a, start, end); break;
        }
    }

    private void Run<TKernel, TIsa>(in MatMulArgs a, int start, int end) where TKernel : IPackedKernel where TIsa : IIntegerIsa
    {
        int g = start;
        if (TKernel.InterleavesGroups && a.Batch == 1)
        {
            // NOTE: one batch row streams the weights at the speed of a single stream per thread; two streams (the two
            // halves of this range) keep more loads in flight.
            int n = Math.Min(end, Groups) - start, half = n / 2;
            for (int k = 0; k < half; k++)
                TKernel.TileTwoGroups<TIsa>(a, Data + (start + k) * GroupBytes, start + k, Data + (start + half + k) * GroupBytes, start + half + k);
            g = start + 2 * half;
        }
        for (; g < Math.Min(end, Groups); g++)
        {
            byte* group = Data + g * GroupBytes;
            int b = 0;
            for (; b + 4 <= a.Batch; b += 4) TKernel.Tile<Tile4, TIsa>(a, group, g, b);
            switch (a.Batch - b)
            {
                case 3: TKernel.Tile<Tile3, TIsa>(a, group, g, b); break;
                case 2: TKernel.Tile<Tile2, TIsa>(a, group, g, b); break;
                case 1: TKernel.Tile<Tile1, TIsa>(a, group, g, b); break;
            }
        }
        if (end > Groups) TKernel.TailRows(a, Groups * GroupRows, a.Rows);
    }

    /// <summary>Items for <see cref="Run{TKernel}"/> over a matrix of <paramref name="rows"/> rows: the groups, plus one
    /// for the tail rows when there are any.</summary>
    public int ItemCount(int rows) => Groups + (rows % GroupRows != 0 ? 1 : 0);
}

/// <summary>Integer steps shared by the packed kernels.</summary>
internal static class PackedSteps
{
    /// <summary>Four activation bytes broadcast to every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<sbyte> Broadcast(sbyte* x) => Vector256.Create(*(int*)x).AsSByte();

    /// <summary>The eight rows' f16 block scales at the start of a packed 32-value block, widened.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> RowScales(byte* blk) =>
        F16Weights.ToSingle(Avx2.ConvertToVector256Int32(Vector128.Load((ushort*)blk)).AsUInt32());

    /// <summary>acc + (d_w·d_x)·sum per row lane: a 32-value block's exact integer sums scaled once for the eight rows
    /// (<see cref="PackedQ8_0"/>, <see cref="PackedBlock32{TLayout}"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ScaleBlock(Vector256<float> acc, Vector256<int> sum, Vector256<float> dw, float dx) =>
        Fma.MultiplyAdd(Avx.ConvertToVector256Single(sum), dw * Vector256.Create(dx), acc);

    /// <summary>The eight outputs of group <paramref name="g"/> for batch rows b … b + TTile.Count − 1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void StoreTile<TTile>(in MatMulArgs a, int g, int b,
        Vector256<float> y0, Vector256<float> y1, Vector256<float> y2, Vector256<float> y3) where TTile : IBatchTile
    {
        float* y = a.Y + (long)b * a.Rows + 8L * g;
        y0.Store(y);
        if (TTile.Count > 1) y1.Store(y + a.Rows);
        if (TTile.Count > 2) y2.Store(y + 2L * a.Rows);
        if (TTile.Count > 3) y3.Store(y + 3L * a.Rows);
    }

    /// <summary>
    /// Asks for the <paramref name="lines"/> cache lines (a constant from 1 to 8) at <paramref name="p"/>, p + 64, …,
    /// into the cache level <paramref name="level"/> (a constant): L1 (<c>prefetcht0</c>), L2 (<c>prefetcht1</c>) or the
    /// last-level cache (<c>prefetcht2</c>).
    /// </summary>
    /// <remarks>
    /// Written out rather than looped: a loop spends an index update, a compare and a branch per line, which at batch 1
    /// took as many decode slots as a tenth of the vector steps (Q4_K in cache, one thread: 12% slower with the loop
    /// than with no prefetch at all; written out and spread over the block's steps 11.7–11.9 GB/s against the loop's
    /// 9.3–9.8, <c>kernels-quick --types Q4_K --threads 1 --batch 1 --ring-mb 0 --shape 256x1024</c>, mean call).
    /// NOTE: on the Xeon (family 6, model 207) the batch-1 F16 and BF16 tiles streamed 3–10 points closer to the read
    /// bandwidth asking for L2 than for L1 (see docs/quantization.md); the packed integer kernels kept their speed
    /// streaming and lost 10–15% in cache with it, so they ask for L1.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void PrefetchLines(byte* p, int lines, PrefetchLevel level = PrefetchLevel.L1)
    {
        Ask(p, level);
        if (lines > 1) Ask(p + 64, level);
        if (lines > 2) Ask(p + 128, level);
        if (lines > 3) Ask(p + 192, level);
        if (lines > 4) Ask(p + 256, level);
        if (lines > 5) Ask(p + 320, level);
        if (lines > 6) Ask(p + 384, level);
        if (lines > 7) Ask(p + 448, level);
    }

    /// <summary>
    /// How far ahead of the lines a batch-1 kernel reads <see cref="PrefetchFar"/> asks for: about 9 KiB, the distance
    /// measured (32 Q8_0 blocks of eight rows, 8.5 KiB; eight Q4_K super-blocks of eight rows, 9.5 KiB).
    /// </summary>
    public const int FarAhead = 9 << 10;

    /// <summary>
    /// Asks for the <paramref name="lines"/> cache lines (a constant from 1 to 8) <see cref="FarAhead"/> bytes after
    /// <paramref name="p"/> into L2, one <c>prefetcht1</c> per pair of lines (the core's adjacent-line prefetcher brings
    /// the other line of each aligned pair): for weights that stream from memory (<see cref="PackedWeights.Streams"/>),
    /// beside the near <see cref="PrefetchLines"/> into L1.
    /// </summary>
    /// <remarks>
    /// NOTE: the near requests alone keep too few lines in flight for memory: batch-1 decode of 576 MB Q8_0 and 327 MB
    /// Q4_K_M models (48 layers, beyond the 260 MiB L3 of the Xeon, family 6 model 207), two threads, median step of
    /// <c>forward-profile</c>, three alternated rounds: Q8_0 22.9 → 21.7 ms, Q4_K_M 14.7 → 13.7 ms. Weights the cache
    /// holds lose by it (the 110 MB Q4_K_M model: 3.24 → 3.35 ms, median step), hence only where they stream. One request per pair
    /// rather than per line measured the same streaming and costs half the instructions.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void PrefetchFar(byte* p, int lines)
    {
        byte* f = p + FarAhead;
        Sse.Prefetch1(f);
        if (lines > 2) Sse.Prefetch1(f + 128);
        if (lines > 4) Sse.Prefetch1(f + 256);
        if (lines > 6) Sse.Prefetch1(f + 384);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Ask(byte* p, PrefetchLevel level)
    {
        if (level == PrefetchLevel.L2) Sse.Prefetch1(p);
        else if (level == PrefetchLevel.Llc) Sse.Prefetch2(p);
        else Sse.Prefetch0(p);
    }
}

/// <summary>The cache level a software prefetch asks for (<see cref="PackedSteps.PrefetchLines"/>).</summary>
internal enum PrefetchLevel
{
    /// <summary><c>prefetcht0</c>: every level, L1 included.</summary>
    L1,
    /// <summary><c>prefetcht1</c>: L2 and below.</summary>
    L2,
    /// <summary><c>prefetcht2</c>: the last-level cache (on the cores measured, L2 as well).</summary>
    Llc,
}
