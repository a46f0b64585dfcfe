namespace Inference.Kernels.Attention;

/// <summary>Scalar arguments of the paged attention kernels, passed by value to the device.</summary>
/// <param name="HeadCount">Query heads.</param>
/// <param name="KvHeadCount">KV heads.</param>
/// <param name="HeadDim">Elements per head.</param>
/// <param name="BlockSize">Tokens per KV cache block.</param>
/// <param name="MaxBlocksPerSeq">Columns of the block table.</param>
/// <param name="Scale">Softmax scale, normally <c>1 / sqrt(HeadDim)</c>.</param>
/// <param name="PartitionSize">Decode: KV positions per partition (a multiple of the group size). Prefill: unused.</param>
/// <param name="PartitionCount">Decode: partitions per sequence. Prefill: unused.</param>
/// <param name="QueryTile">Prefill: query tokens per group. Decode: unused.</param>
public readonly record struct PagedAttentionParams(
    int HeadCount,
    int KvHeadCount,
    int HeadDim,
    int BlockSize,
    int MaxBlocksPerSeq,
    float Scale,
    int PartitionSize,
    int PartitionCount,
    int QueryTile)
{
    /// <summary>
    /// Sliding-window (local) attention: a query at position p sees keys p − W + 1 … p; 0 (the default) sees 0 … p.
    /// Keys before the window are never read, so their blocks may be freed.
    /// </summary>
    public int SlidingWindow { get; init; }

    /// <summary>The first position a query at <paramref name="position"/> sees.</summary>
    public int FirstVisible(int position) => SlidingWindow > 0 && position >= SlidingWindow ? position - SlidingWindow + 1 : 0;

    /// <summary>Query heads per KV head.</summary>
    public int KvMul => HeadCount / KvHeadCount;
}
