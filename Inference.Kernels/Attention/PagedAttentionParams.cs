using ILGPU.Algorithms;

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

    /// <summary>
    /// Attention logit soft-capping (gemma2): a scaled score s becomes c · tanh(s / c) before the softmax; 0 (the
    /// default) leaves scores as they are.
    /// </summary>
    public float LogitSoftCap { get; init; }

    /// <summary>The score of a query·key dot product: scaled by <see cref="Scale"/>, then soft-capped when <see cref="LogitSoftCap"/> is set.</summary>
    public float Score(float dot)
    {
        float s = dot * Scale;
        return LogitSoftCap > 0f ? LogitSoftCap * XMath.Tanh(s / LogitSoftCap) : s;
    }

    /// <summary>The first position a query at <paramref name="position"/> sees.</summary>
    public int FirstVisible(int position) => SlidingWindow > 0 && position >= SlidingWindow ? position - SlidingWindow + 1 : 0;

    /// <summary>Query heads per KV head.</summary>
    public int KvMul => HeadCount / KvHeadCount;
}
