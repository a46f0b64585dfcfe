namespace Inference.KvCache;

/// <summary>
/// A fixed number of KV blocks with ref counts, the LRU <see cref="FreeBlockQueue"/> and the prefix cache
/// (block hash → block id). Works on block ids only; the memory lives in <see cref="KvCacheStorage"/>.
/// </summary>
/// <remarks>
/// Block life cycle:
/// <code>
///   free, empty ──Allocate──▶ used (ref ≥ 1) ──fills──▶ used + hashed ──Release to 0──▶ free, cached
///        ▲                                                                        │        │
///        └──────────────── Allocate pops it: evicted from the hash map ◀──────────┘        │
///                                         used again (ref 1) ◀── Acquire (prefix hit) ◀────┘
/// </code>
/// Not thread-safe: the engine loop thread owns it.
/// </remarks>
internal sealed class BlockPool
{
    private struct BlockState
    {
        public int RefCount;
        public int TokenCount; // filled slots whose token ids are in _tokenIds
        public bool HasHash;   // registered in _cached under Hash
        public BlockHash Hash;
    }

    private readonly BlockState[] _blocks;      // [blockCount]
    private readonly int[] _tokenIds;           // [blockCount, blockSize]
    private readonly FreeBlockQueue _free;
    private readonly Dictionary<BlockHash, int> _cached = new();

    /// <summary>Creates a pool of <paramref name="blockCount"/> free blocks of <paramref name="blockSize"/> slots.</summary>
    public BlockPool(int blockCount, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(blockSize, KvCacheOptions.MaxBlockSize);
        BlockCount = blockCount;
        BlockSize = blockSize;
        _blocks = new BlockState[blockCount];
        _tokenIds = new int[checked(blockCount * blockSize)];
        _free = new FreeBlockQueue(blockCount);
    }

    /// <summary>Blocks in the pool.</summary>
    public int BlockCount { get; }

    /// <summary>Slots per block.</summary>
    public int BlockSize { get; }

    /// <summary>Blocks with ref count 0 (empty or cached).</summary>
    public int FreeCount => _free.Count;

    /// <summary>Free blocks that still carry a hash and can be hit.</summary>
    public int CachedFreeCount { get; private set; }

    /// <summary>Blocks registered in the hash map (used or free).</summary>
    public int CachedCount => _cached.Count;

    /// <summary>Ref count of <paramref name="blockId"/>.</summary>
    public int RefCount(int blockId) => _blocks[blockId].RefCount;

    /// <summary>Whether <paramref name="blockId"/> is registered in the prefix cache.</summary>
    public bool IsCached(int blockId) => _blocks[blockId].HasHash;

    /// <summary>Whether <paramref name="blockId"/> is in the free queue.</summary>
    public bool IsFree(int blockId) => _free.Contains(blockId);

    /// <summary>The first block <see cref="Allocate"/> would hand out, or -1.</summary>
    public int NextEvicted => _free.Front;

    /// <summary>Token ids of the filled slots of <paramref name="blockId"/>.</summary>
    public ReadOnlySpan<int> TokenIds(int blockId) =>
        _tokenIds.AsSpan(blockId * BlockSize, _blocks[blockId].TokenCount);

    /// <summary>Number of filled slots of <paramref name="blockId"/>.</summary>
    public int TokenCount(int blockId) => _blocks[blockId].TokenCount;

    /// <summary>Takes the least recently freed block, evicting its cached hash; its ref count becomes 1.</summary>
    /// <exception cref="InvalidOperationException">No block is free.</exception>
    public int Allocate()
    {
        int id = _free.PopFront();
        ref var b = ref _blocks[id];
        if (b.HasHash)
        {
            _cached.Remove(b.Hash);
            b.HasHash = false;
            b.Hash = default;
            CachedFreeCount--;
        }
        b.RefCount = 1;
        b.TokenCount = 0;
        return id;
    }

    /// <summary>Adds a reference to <paramref name="blockId"/> (a prefix hit or a fork), taking it off the free queue if needed.</summary>
    public void Acquire(int blockId)
    {
        ref var b = ref _blocks[blockId];
        if (b.RefCount == 0)
        {
            // NOTE: only a cached block can be revived; an empty free block has no content worth sharing.
            if (!b.HasHash) throw new InvalidOperationException($"Block {blockId} is free and holds no cached content.");
            _free.Remove(blockId);
            CachedFreeCount--;
        }
        b.RefCount++;
    }

    /// <summary>Drops a reference; at 0 the block is queued for reuse.</summary>
    /// <remarks>
    /// A cached block goes to the back of the queue (kept as long as possible); a block without a hash has no value
    /// to anyone and goes to the front, so it is reused before any cached block is evicted.
    /// </remarks>
    /// <exception cref="InvalidOperationException">The block is already free (a double free).</exception>
    public void Release(int blockId)
    {
        ref var b = ref _blocks[blockId];
        if (b.RefCount <= 0) throw new InvalidOperationException($"Block {blockId} is already free (double free).");
        if (--b.RefCount > 0) return;
        if (b.HasHash)
        {
            _free.PushBack(blockId);
            CachedFreeCount++;
        }
        else
        {
            _free.PushFront(blockId);
        }
    }

    /// <summary>Writes the token id of slot <paramref name="slot"/>; slots fill in order.</summary>
    public void SetToken(int blockId, int slot, int tokenId)
    {
        ref var b = ref _blocks[blockId];
        if (b.TokenCount == BlockSize) throw new InvalidOperationException($"Block {blockId} is full.");
        if (slot != b.TokenCount) throw new InvalidOperationException($"Block {blockId}: slot {slot} written out of order (filled {b.TokenCount}).");
        if (b.HasHash) throw new InvalidOperationException($"Block {blockId} is full and cached; it must not be written.");
        _tokenIds[blockId * BlockSize + slot] = tokenId;
        b.TokenCount++;
    }

    /// <summary>Copies the filled token ids of <paramref name="source"/> into the empty block <paramref name="destination"/>.</summary>
    public void CopyTokens(int source, int destination)
    {
        ref var d = ref _blocks[destination];
        if (d.TokenCount != 0) throw new InvalidOperationException($"Block {destination} is not empty.");
        int n = _blocks[source].TokenCount;
        _tokenIds.AsSpan(source * BlockSize, n).CopyTo(_tokenIds.AsSpan(destination * BlockSize, n));
        d.TokenCount = n;
    }

    /// <summary>
    /// Copies the first <paramref name="count"/> token ids of <paramref name="source"/> into the empty block
    /// <paramref name="destination"/> (a private copy of a shared block's kept slots).
    /// </summary>
    public void CopyTokens(int source, int destination, int count)
    {
        ref var d = ref _blocks[destination];
        if (d.TokenCount != 0) throw new InvalidOperationException($"Block {destination} is not empty.");
        if ((uint)count > (uint)_blocks[source].TokenCount) throw new ArgumentOutOfRangeException(nameof(count));
        _tokenIds.AsSpan(source * BlockSize, count).CopyTo(_tokenIds.AsSpan(destination * BlockSize, count));
        d.TokenCount = count;
    }

    /// <summary>
    /// Forgets the slots of <paramref name="blockId"/> from <paramref name="count"/> on, so they can be written again
    /// (rolled-back speculative tokens). The block must be held by one sequence and not be in the prefix cache.
    /// </summary>
    public void TruncateTokens(int blockId, int count)
    {
        ref var b = ref _blocks[blockId];
        if (b.RefCount != 1) throw new InvalidOperationException($"Block {blockId} has {b.RefCount} references; only a private block can be truncated.");
        if (b.HasHash) throw new InvalidOperationException($"Block {blockId} is cached; unregister it before truncating it.");
        if ((uint)count > (uint)b.TokenCount) throw new ArgumentOutOfRangeException(nameof(count));
        b.TokenCount = count;
    }

    /// <summary>
    /// Registers the full block <paramref name="blockId"/> under <paramref name="hash"/>. Returns false (and leaves the
    /// block unregistered) when another block already holds that hash: the first copy stays the shared one.
    /// </summary>
    public bool Register(int blockId, BlockHash hash)
    {
        ref var b = ref _blocks[blockId];
        if (b.TokenCount != BlockSize) throw new InvalidOperationException($"Block {blockId} is not full.");
        if (b.HasHash) return b.Hash == hash;
        if (!_cached.TryAdd(hash, blockId)) return false;
        b.HasHash = true;
        b.Hash = hash;
        return true;
    }

    /// <summary>Removes <paramref name="blockId"/> from the prefix cache (its contents will never be written).</summary>
    public void Unregister(int blockId)
    {
        ref var b = ref _blocks[blockId];
        if (!b.HasHash) return;
        if (b.RefCount == 0) throw new InvalidOperationException($"Block {blockId} is free; evict it by allocation instead.");
        _cached.Remove(b.Hash);
        b.HasHash = false;
        b.Hash = default;
    }

    /// <summary>
    /// The cached block with <paramref name="hash"/> whose token ids equal <paramref name="tokenIds"/>, or -1.
    /// </summary>
    public int Lookup(BlockHash hash, ReadOnlySpan<int> tokenIds)
    {
        if (!_cached.TryGetValue(hash, out int id)) return -1;
        // NOTE: confirm the token ids so a 128-bit collision can never serve wrong keys and values.
        return TokenIds(id).SequenceEqual(tokenIds) ? id : -1;
    }

    /// <summary>
    /// Checks every internal invariant and throws <see cref="InvalidOperationException"/> on the first broken one.
    /// O(blockCount); for tests and debugging.
    /// </summary>
    public void CheckInvariants()
    {
        var queued = new int[BlockCount];
        int n = _free.CopyTo(queued);
        if (n != _free.Count) throw new InvalidOperationException($"Free queue walks {n} blocks but counts {_free.Count}.");
        var seen = new bool[BlockCount];
        for (int i = 0; i < n; i++)
        {
            if (seen[queued[i]]) throw new InvalidOperationException($"Block {queued[i]} is queued twice.");
            seen[queued[i]] = true;
        }
        int cachedFree = 0;
        for (int id = 0; id < BlockCount; id++)
        {
            ref var b = ref _blocks[id];
            if (b.RefCount < 0) throw new InvalidOperationException($"Block {id} has ref count {b.RefCount}.");
            if ((b.RefCount == 0) != seen[id]) throw new InvalidOperationException($"Block {id}: ref count {b.RefCount} but queued = {seen[id]}.");
            if (b.TokenCount < 0 || b.TokenCount > BlockSize) throw new InvalidOperationException($"Block {id} has {b.TokenCount} tokens.");
            if (b.HasHash)
            {
                if (b.TokenCount != BlockSize) throw new InvalidOperationException($"Cached block {id} is not full.");
                if (!_cached.TryGetValue(b.Hash, out int mapped) || mapped != id) throw new InvalidOperationException($"Cached block {id} is missing from the hash map.");
                if (b.RefCount == 0) cachedFree++;
            }
        }
        foreach (var (hash, id) in _cached)
            if (!_blocks[id].HasHash || _blocks[id].Hash != hash) throw new InvalidOperationException($"Hash map entry {hash} → {id} is stale.");
        if (cachedFree != CachedFreeCount) throw new InvalidOperationException($"Cached-free count {CachedFreeCount}, actual {cachedFree}.");
    }
}
