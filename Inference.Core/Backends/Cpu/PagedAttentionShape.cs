namespace Inference.Backends.Cpu;

/// <summary>
/// Head layout, block size and attention window of a paged attention call. MHA, GQA and MQA are one case:
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

    /// <summary>
    /// Sliding-window (local) attention: a query at position p sees keys p − W + 1 … p, the W latest positions itself
    /// included (Mistral's, gemma2/3's local layers', llama.cpp's standard SWA mask). 0, the default, sees every
    /// position 0 … p.
    /// </summary>
    public int SlidingWindow
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            field = value;
        }
    }

    /// <summary>
    /// Attention logit soft-capping (gemma2): each scaled score s becomes c · tanh(s / c) before the softmax. 0, the
    /// default, leaves the scores as they are.
    /// </summary>
    public float LogitSoftCap
    {
        get;
        init
        {
            if (!(value >= 0) || !float.IsFinite(value)) throw new ArgumentOutOfRangeException(nameof(value), value, "must be finite and not negative");
            field = value;
        }
    }

    /// <summary>The first position a query sees when <paramref name="contextLength"/> positions (its own the last) exist.</summary>
    public int FirstVisible(int contextLength) =>
        SlidingWindow > 0 && contextLength > SlidingWindow ? contextLength - SlidingWindow : 0;

    /// <summary>Query heads per KV head.</summary>
    public int KvMul => HeadCount / KvHeadCount;

    /// <summary>Elements of one token's query or output: heads × headDim.</summary>
    public int QueryStride => HeadCount * HeadDim;

    /// <summary>Elements of one token's key or value: kvHeads × headDim.</summary>
    public int KvStride => KvHeadCount * HeadDim;
}
