namespace Inference.KvCache;

/// <summary>
/// One sequence's logical → physical block map: logical block i holds token positions [i·blockSize, (i+1)·blockSize).
/// Grows as slots are appended; only the last block may be partly filled.
/// </summary>
/// <remarks>
/// <code>
///   positions  0 ........ 15 | 16 ........ 31 | 32 .. 36 (TokenCount = 37, blockSize 16)
///   logical    0             | 1              | 2 (partly filled, 5 of 16 slots)
///   physical   BlockIds[0]=7 | BlockIds[1]=3  | BlockIds[2]=12
///   slot of position p:  block BlockIds[p / blockSize], offset p % blockSize
/// </code>
/// Under sliding-window attention the leading <see cref="ReleasedBlockCount"/> blocks, wholly before every layer's
/// window, have gone back to the pool; their entries hold <see cref="KvCacheManager.ReleasedBlock"/>.
/// Not thread-safe: the engine loop thread owns it.
/// </remarks>
internal sealed class BlockTable
{
    private int[] _blockIds;
    private BlockHash[] _hashes; // hash of each full logical block, [0, HashedBlockCount)

    public BlockTable(int capacity = 4)
    {
        _blockIds = new int[Math.Max(capacity, 1)];
        _hashes = new BlockHash[Math.Max(capacity, 1)];
    }

    /// <summary>Number of logical blocks.</summary>
    public int BlockCount { get; private set; }

    /// <summary>Number of token positions with a slot.</summary>
    public int TokenCount { get; set; }

    /// <summary>Leading blocks given back to the pool (outside every layer's window); their ids are <see cref="KvCacheManager.ReleasedBlock"/>.</summary>
    public int ReleasedBlockCount { get; set; }

    /// <summary>
    /// Whether tokens were evicted from the sequence (<see cref="KvCacheManager.TryEvict"/>): its cache no longer holds a
    /// prefix of its text at that text's positions, so no block it fills from now on is offered to other sequences.
    /// </summary>
    public bool Evicted { get; set; }

    /// <summary>Attention each cached token received so far (heavy-hitter eviction), [TokenCount] in use; null otherwise.</summary>
    public float[]? Scores { get; set; }

    /// <summary>Leading full blocks whose chained hash is known.</summary>
    public int HashedBlockCount { get; private set; }

    /// <summary>Physical block ids, logical order.</summary>
    public ReadOnlySpan<int> BlockIds => _blockIds.AsSpan(0, BlockCount);

    /// <summary>Physical block of logical block <paramref name="index"/>.</summary>
    public int this[int index]
    {
        get => _blockIds[index];
        set => _blockIds[index] = value;
    }

    /// <summary>Hash of the last hashed block, or <see cref="BlockHash.Root"/>.</summary>
    public BlockHash LastHash => HashedBlockCount == 0 ? BlockHash.Root : _hashes[HashedBlockCount - 1];

    /// <summary>Appends a physical block.</summary>
    public void Add(int blockId)
    {
        if (BlockCount == _blockIds.Length)
        {
            Array.Resize(ref _blockIds, _blockIds.Length * 2);
            Array.Resize(ref _hashes, _hashes.Length * 2);
        }
        _blockIds[BlockCount++] = blockId;
    }

    /// <summary>Records the hash of the next full block.</summary>
    public void AddHash(BlockHash hash)
    {
        if (HashedBlockCount >= BlockCount) throw new InvalidOperationException("More hashes than blocks.");
        _hashes[HashedBlockCount++] = hash;
    }

    /// <summary>
    /// Keeps the first <paramref name="blockCount"/> blocks, <paramref name="tokenCount"/> slots and at most
    /// <paramref name="fullBlockCount"/> hashes (the caller releases the dropped blocks).
    /// </summary>
    public void Truncate(int blockCount, int tokenCount, int fullBlockCount)
    {
        BlockCount = blockCount;
        TokenCount = tokenCount;
        HashedBlockCount = Math.Min(HashedBlockCount, fullBlockCount);
    }

    /// <summary>A copy sharing the same physical ids (the caller adds the references).</summary>
    public BlockTable Clone()
    {
        var c = new BlockTable(_blockIds.Length);
        BlockIds.CopyTo(c._blockIds);
        _hashes.AsSpan(0, HashedBlockCount).CopyTo(c._hashes);
        c.BlockCount = BlockCount;
        c.HashedBlockCount = HashedBlockCount;
        c.ReleasedBlockCount = ReleasedBlockCount;
        c.TokenCount = TokenCount;
        c.Evicted = Evicted;
        c.Scores = (float[]?)Scores?.Clone();
        return c;
    }
}
