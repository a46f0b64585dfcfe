using ILGPU;
using ILGPU.Runtime;

namespace Inference.Kernels.Attention;

/// <summary>
/// Launches <see cref="PagedDecodeAttentionKernels"/> on an accelerator: pass 1 over partitions, pass 2 reduction.
/// </summary>
/// <typeparam name="TKv">Stored KV element: <see cref="float"/>, <see cref="ILGPU.Half"/>, or <see cref="byte"/> for the block formats.</typeparam>
/// <typeparam name="TConv"><see cref="F32Element"/>, <see cref="F16Element"/>, <see cref="Q8_0Kv"/> or <see cref="Fp8E4M3Kv"/>.</typeparam>
/// <remarks>Not thread-safe: one launcher per stream. The partial buffers grow on demand and are reused.</remarks>
public sealed class PagedDecodeAttention<TKv, TConv> : IDisposable
    where TKv : unmanaged
    where TConv : struct, IKvRowFormat<TKv>
{
    private readonly Accelerator _accelerator;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>,
        ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, PagedAttentionParams> _partial;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
        PagedAttentionParams> _reduce;
    private readonly int _groupSize;
    private MemoryBuffer1D<float, Stride1D.Dense>? _partialOut;   // [seqCount, heads, partitionCount, headDim]
    private MemoryBuffer1D<float, Stride1D.Dense>? _partialStats; // [2, seqCount, heads, partitionCount]: max, sum

    /// <summary>Loads the kernels.</summary>
    /// <param name="accelerator">The accelerator to run on.</param>
    /// <param name="shape">Attention shape.</param>
    /// <param name="partitionSize">KV positions per partition; a positive multiple of
    /// <see cref="PagedDecodeAttentionKernels.GroupSize"/>.</param>
    /// <exception cref="ArgumentException"><paramref name="partitionSize"/> is not a positive multiple of the group size, or a
    /// block format is given a head size that is not a multiple of 32.</exception>
    public PagedDecodeAttention(Accelerator accelerator, AttentionShape shape, int partitionSize = 512)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(shape);
        if (partitionSize <= 0 || partitionSize % PagedDecodeAttentionKernels.GroupSize != 0)
            throw new ArgumentException($"partitionSize must be a positive multiple of {PagedDecodeAttentionKernels.GroupSize}.", nameof(partitionSize));
        KvRowGroups.CheckHeadDim<TKv>(shape);
        _accelerator = accelerator;
        _groupSize = KernelGroupSize.For(accelerator, PagedDecodeAttentionKernels.GroupSize);
        Shape = shape;
        PartitionSize = partitionSize;
        _partial = accelerator.LoadKernel<ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, PagedAttentionParams>(PagedDecodeAttentionKernels.Partial<TKv, TConv>);
        _reduce = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            PagedAttentionParams>(PagedDecodeAttentionKernels.Reduce);
    }

    /// <summary>The attention shape.</summary>
    public AttentionShape Shape { get; }

    /// <summary>KV positions per partition.</summary>
    public int PartitionSize { get; }

    /// <summary>Enqueues decode attention for <paramref name="seqCount"/> sequences on the default stream.</summary>
    /// <param name="q">Queries, <c>[seqCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache, <c>[blockCount, blockSize, kvHeads, headDim]</c>.</param>
    /// <param name="vCache">V cache, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="contextLens">Context lengths (each 0 .. <paramref name="maxContextLength"/>; 0 gives a zero row), <c>[seqCount]</c>.</param>
    /// <param name="seqCount">Sequences in the batch.</param>
    /// <param name="maxContextLength">An upper bound of <paramref name="contextLens"/>; sets the partition count.</param>
    /// <param name="output">Output, <c>[seqCount, heads, headDim]</c>.</param>
    /// <param name="slidingWindow">The layer's attention window (<see cref="PagedAttentionParams.SlidingWindow"/>); 0 for none.</param>
    /// <param name="logitSoftCap">The layer's score cap (<see cref="PagedAttentionParams.LogitSoftCap"/>); 0 for none.</param>
    /// <exception cref="ArgumentOutOfRangeException">A count is out of range.</exception>
    public void Run(ArrayView<float> q, ArrayView<TKv> kCache, ArrayView<TKv> vCache, ArrayView<int> blockTables,
        ArrayView<int> contextLens, int seqCount, int maxContextLength, ArrayView<float> output, int slidingWindow = 0, float logitSoftCap = 0f)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(seqCount, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(slidingWindow);
        ArgumentOutOfRangeException.ThrowIfNegative(logitSoftCap);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxContextLength, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxContextLength, Shape.MaxContextLength);
        var s = Shape;
        var (partitionCount, rows) = Scratch(seqCount, maxContextLength);
        var p = new PagedAttentionParams(s.HeadCount, s.KvHeadCount, s.HeadDim, s.BlockSize, s.MaxBlocksPerSeq, s.Scale,
            PartitionSize, partitionCount, 0) { SlidingWindow = slidingWindow, LogitSoftCap = logitSoftCap };
        EnsureScratch(rows);
        var partialMax = _partialStats!.View.SubView(0, rows);
        var partialSum = _partialStats.View.SubView(rows, rows);

        var config = new KernelConfig(
            new Index3D(partitionCount, s.KvHeadCount, seqCount),
            new Index3D(_groupSize, 1, 1),
            SharedMemoryConfig.RequestDynamic<float>(PagedDecodeAttentionKernels.SharedFloats(s.KvMul, s.HeadDim)));
        var stream = _accelerator.DefaultStream;
        _partial(stream, config, q, kCache, vCache, blockTables, contextLens, _partialOut!.View, partialMax, partialSum, p);
        _reduce(stream, (int)((long)seqCount * s.HeadCount * s.HeadDim), _partialOut.View, partialMax, partialSum, output, p);
    }

    /// <summary>
    /// Grows the partial buffers to what <see cref="Run"/> with <paramref name="seqCount"/> and
    /// <paramref name="maxContextLength"/> needs, so that such runs allocate nothing (a captured CUDA graph keeps the
    /// buffers' addresses).
    /// </summary>
    /// <param name="seqCount">Sequences.</param>
    /// <param name="maxContextLength">The bound of the context lengths.</param>
    public void Reserve(int seqCount, int maxContextLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(seqCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxContextLength, 1);
        EnsureScratch(Scratch(seqCount, maxContextLength).Rows);
    }

    /// <summary>Test hook: partial buffers allocated so far (each growth of either buffer counts one).</summary>
    internal int ScratchAllocations { get; private set; }

    /// <summary>
    /// The one sizing of the partial buffers, for <see cref="Run"/> and <see cref="Reserve"/> alike: partitions per
    /// sequence and partial rows (<c>seqCount × heads × partitions</c>) of a launch.
    /// </summary>
    private (int PartitionCount, long Rows) Scratch(int seqCount, int maxContextLength)
    {
        int partitionCount = (maxContextLength + PartitionSize - 1) / PartitionSize;
        return (partitionCount, (long)seqCount * Shape.HeadCount * partitionCount);
    }

    /// <summary>Grows the partial buffers to <paramref name="rows"/> partial rows: <c>rows × headDim</c> outputs, <c>2 × rows</c> stats.</summary>
    private void EnsureScratch(long rows)
    {
        EnsureCapacity(ref _partialOut, rows * Shape.HeadDim);
        EnsureCapacity(ref _partialStats, 2 * rows);
    }

    private void EnsureCapacity(ref MemoryBuffer1D<float, Stride1D.Dense>? buffer, long length)
    {
        if (buffer is not null && buffer.Length >= length) return;
        buffer?.Dispose();
        buffer = _accelerator.Allocate1D<float>(length);
        ScratchAllocations++;
    }

    /// <summary>Frees the partial buffers.</summary>
    public void Dispose()
    {
        _partialOut?.Dispose();
        _partialStats?.Dispose();
        _partialOut = null;
        _partialStats = null;
    }
}
