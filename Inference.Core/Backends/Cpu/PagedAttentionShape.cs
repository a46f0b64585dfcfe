namespace Inference.Backends.Cpu;

/// <summary>
/// Head layout and block size of a paged attention call. MHA, GQA and MQA are one case:
/// kvMul = <see cref="HeadCount"/> / <see cref="KvHeadCount"/>, and query head h reads KV head h / kvMul.
/// </summary>
public readonly record struct PagedAttentionShape
{
    /// <summary>Creates and validates a shape.</summary>
    /// <param name="headCount">Query heads.</param>
    /// <param name="kvHeadCount">Key/value heads; must divide <paramref name="headCount"/>.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="blockSize">Slots per KV block.</param>
    public PagedAttentionShape(int headCount, int kvHeadCount, int headDim, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(headCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(kvHeadCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        if (headCount % kvHeadCount != 0)
            throw new ArgumentException($"{headCount} query heads cannot be grouped over {kvHeadCount} KV heads.", nameof(kvHeadCount));
        HeadCount = headCount;
        KvHeadCount = kvHeadCount;
        HeadDim = headDim;
        BlockSize = blockSize;
    }

    /// <summary>Query heads.</summary>
    public int HeadCount { get; }

    /// <summary>Key/value heads.</summary>
    public int KvHeadCount { get; }

    /// <summary>Elements per head.</summary>
    public int HeadDim { get; }

    /// <summary>Slots per KV block.</summary>
    public int BlockSize { get; }

    /// <summary>Query heads per KV head.</summary>
    public int KvMul => HeadCount / KvHeadCount;

    /// <summary>Elements of one token's query or output: heads × headDim.</summary>
    public int QueryStride => HeadCount * HeadDim;

    /// <summary>Elements of one token's key or value: kvHeads × headDim.</summary>
    public int KvStride => KvHeadCount * HeadDim;
}
