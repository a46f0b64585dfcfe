using ILGPU;
using ILGPU.Runtime;

namespace Inference.Kernels.Attention;

/// <summary>Launches <see cref="PagedPrefillAttentionKernels"/> on an accelerator.</summary>
/// <typeparam name="TKv">Stored KV element: <see cref="float"/>, <see cref="ILGPU.Half"/>, or <see cref="byte"/> for the block formats.</typeparam>
/// <typeparam name="TConv"><see cref="F32Element"/>, <see cref="F16Element"/>, <see cref="Q8_0Kv"/> or <see cref="Fp8E4M3Kv"/>.</typeparam>
public sealed class PagedPrefillAttention<TKv, TConv>
    where TKv : unmanaged
    where TConv : struct, IKvRowFormat<TKv>
{
    private readonly Accelerator _accelerator;
    private readonly int _groupSize;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>,
        ArrayView<int>, ArrayView<int>, ArrayView<float>, PagedAttentionParams> _prefill;

    /// <summary>Loads the kernel.</summary>
    /// <param name="accelerator">The accelerator to run on.</param>
    /// <param name="shape">Attention shape; <c>KvMul</c> must not exceed the group size (64 on GPUs).</param>
    /// <exception cref="ArgumentException">The shape has more query heads per KV head than the group size, or a block format
    /// is given a head size that is not a multiple of 32.</exception>
    public PagedPrefillAttention(Accelerator accelerator, AttentionShape shape)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(shape);
        KvRowGroups.CheckHeadDim<TKv>(shape);
        _groupSize = KernelGroupSize.For(accelerator, PagedPrefillAttentionKernels.GroupSize);
        if (shape.KvMul > _groupSize)
            throw new ArgumentException($"at most {_groupSize} query heads per KV head on this accelerator.", nameof(shape));
        _accelerator = accelerator;
        Shape = shape;
        // NOTE: 16 rows per group keeps shared memory at 2*16*headDim + 16*64 floats (≈ 20 KB at headDim 128).
        QueryTile = Math.Max(1, Math.Min(16, _groupSize) / shape.KvMul);
        _prefill = accelerator.LoadKernel<ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>,
            ArrayView<int>, ArrayView<float>, PagedAttentionParams>(PagedPrefillAttentionKernels.Prefill<TKv, TConv>);
    }

    /// <summary>The attention shape.</summary>
    public AttentionShape Shape { get; }

    /// <summary>Query tokens per group.</summary>
    public int QueryTile { get; }

    /// <summary>Enqueues chunk attention on the default stream.</summary>
    /// <param name="q">Queries, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache, <c>[blockCount, blockSize, kvHeads, headDim]</c>, already holding the chunk's rows.</param>
    /// <param name="vCache">V cache, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="querySeqStarts">First query token of each sequence plus the total, <c>[seqCount + 1]</c>.</param>
    /// <param name="contextLens">Context length per sequence after the chunk, <c>[seqCount]</c>.</param>
    /// <param name="seqCount">Sequences in the batch.</param>
    /// <param name="maxChunkLength">The longest chunk (query tokens of one sequence).</param>
    /// <param name="output">Output, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="slidingWindow">The layer's attention window (<see cref="PagedAttentionParams.SlidingWindow"/>); 0 for none.</param>
    /// <param name="logitSoftCap">The layer's score cap (<see cref="PagedAttentionParams.LogitSoftCap"/>); 0 for none.</param>
    /// <exception cref="ArgumentOutOfRangeException">A count is out of range.</exception>
    public void Run(ArrayView<float> q, ArrayView<TKv> kCache, ArrayView<TKv> vCache, ArrayView<int> blockTables,
        ArrayView<int> querySeqStarts, ArrayView<int> contextLens, int seqCount, int maxChunkLength, ArrayView<float> output,
        int slidingWindow = 0, float logitSoftCap = 0f)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(slidingWindow);
        ArgumentOutOfRangeException.ThrowIfNegative(logitSoftCap);
        ArgumentOutOfRangeException.ThrowIfLessThan(seqCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxChunkLength, 1);
        var s = Shape;
        var p = new PagedAttentionParams(s.HeadCount, s.KvHeadCount, s.HeadDim, s.BlockSize, s.MaxBlocksPerSeq, s.Scale, 0, 0, QueryTile) { SlidingWindow = slidingWindow, LogitSoftCap = logitSoftCap };
        int tiles = (maxChunkLength + QueryTile - 1) / QueryTile;
        var config = new KernelConfig(
            new Index3D(tiles, s.KvHeadCount, seqCount),
            new Index3D(_groupSize, 1, 1),
            SharedMemoryConfig.RequestDynamic<float>(PagedPrefillAttentionKernels.SharedFloats(QueryTile * s.KvMul, s.HeadDim)));
        _prefill(_accelerator.DefaultStream, config, q, kCache, vCache, blockTables, querySeqStarts, contextLens, output, p);
    }
}
