namespace Inference.Kernels;

/// <summary>
/// The shape of one layer's paged attention: head counts, head size and the paged KV cache geometry.
/// </summary>
/// <remarks>
/// Layout shared with the CPU engine's paged KV cache:
/// <code>
/// K, V per layer     [blockCount, blockSize, kvHeads, headDim]   row-major, f32 or f16
/// block tables       [seqCount, maxBlocksPerSeq]                 physical block ids
/// queries / output   [tokenCount, heads, headDim]
/// </code>
/// Query head <c>h</c> reads KV head <c>h / KvMul</c> (MHA: KvMul = 1, GQA: 1 &lt; KvMul &lt; heads, MQA: KvMul = heads).
/// </remarks>
public sealed record AttentionShape
{
    /// <summary>Creates and validates a shape.</summary>
    /// <param name="headCount">Query heads.</param>
    /// <param name="kvHeadCount">KV heads; must divide <paramref name="headCount"/>.</param>
    /// <param name="headDim">Elements per head (1..256; a multiple of 8 so rows fill 16-byte vectors).</param>
    /// <param name="blockSize">Tokens per KV cache block.</param>
    /// <param name="maxBlocksPerSeq">Columns of the block table.</param>
    /// <exception cref="ArgumentOutOfRangeException">A value is out of range.</exception>
    /// <exception cref="ArgumentException"><paramref name="kvHeadCount"/> does not divide <paramref name="headCount"/>.</exception>
    public AttentionShape(int headCount, int kvHeadCount, int headDim, int blockSize, int maxBlocksPerSeq)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(headCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(kvHeadCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 8);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(headDim, 256);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBlocksPerSeq, 1);
        if (headCount % kvHeadCount != 0)
            throw new ArgumentException($"kvHeadCount {kvHeadCount} must divide headCount {headCount}.", nameof(kvHeadCount));
        if (headDim % 8 != 0)
            throw new ArgumentException($"headDim {headDim} must be a multiple of 8.", nameof(headDim));
        HeadCount = headCount;
        KvHeadCount = kvHeadCount;
        HeadDim = headDim;
        BlockSize = blockSize;
        MaxBlocksPerSeq = maxBlocksPerSeq;
    }

    /// <summary>Query heads.</summary>
    public int HeadCount { get; }

    /// <summary>KV heads.</summary>
    public int KvHeadCount { get; }

    /// <summary>Elements per head.</summary>
    public int HeadDim { get; }

    /// <summary>Tokens per KV cache block.</summary>
    public int BlockSize { get; }

    /// <summary>Columns of the block table (the longest context is <c>BlockSize * MaxBlocksPerSeq</c>).</summary>
    public int MaxBlocksPerSeq { get; }

    /// <summary>Query heads per KV head: <c>HeadCount / KvHeadCount</c>.</summary>
    public int KvMul => HeadCount / KvHeadCount;

    /// <summary>The softmax scale <c>1 / sqrt(HeadDim)</c>.</summary>
    public float Scale => 1f / MathF.Sqrt(HeadDim);

    /// <summary>Elements of one K (or V) cache block: <c>BlockSize * KvHeadCount * HeadDim</c>.</summary>
    public int BlockElements => BlockSize * KvHeadCount * HeadDim;

    /// <summary>The longest context a block table row can address.</summary>
    public int MaxContextLength => BlockSize * MaxBlocksPerSeq;
}
