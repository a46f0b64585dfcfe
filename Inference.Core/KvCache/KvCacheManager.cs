using System.Runtime.InteropServices;

namespace Inference.KvCache;

/// <summary>
/// The paged KV cache as the scheduler sees it: per-sequence block tables over a fixed pool of blocks, automatic
/// prefix caching of full blocks, fork with copy-on-write, and counts. Works on block ids only.
/// </summary>
/// <remarks>
/// <para>
/// Vocabulary: a sequence's <em>slots</em> are the token positions that have a place in a block. The manager is told
/// the token ids of every slot it hands out, so it can hash a block the moment it fills (chained, salted, see
/// <see cref="BlockHash"/>) and offer it to later sequences with the same prefix. A freed block keeps its hash and can
/// still be hit until the pool hands it out again.
/// </para>
/// <para>
/// NOTE: a block is offered for prefix hits as soon as its slots are handed out, before the forward pass has written
/// its keys and values, so a sequence admitted later in the same step can share it. That is safe when the engine
/// either writes the KV of every scheduled token of a layer before any attention of that layer, or runs the
/// sequences in the order their slots were handed out (the order of <c>SchedulerOutput.Chunks</c>). A sequence that
/// gives up slots it never computed is freed with <see cref="Free(long, int)"/>, which withdraws those blocks.
/// </para>
/// <para>
/// Threading: not thread-safe. The engine loop thread owns the manager (and the scheduler that drives it).
/// </para>
/// </remarks>
public sealed class KvCacheManager
{
    private readonly BlockPool _pool;
    private readonly Dictionary<long, BlockTable> _tables = new();
    private readonly List<BlockCopy> _pendingCopies = [];
    private readonly long _salt;
    private int[] _hitBlocks = new int[16];
    private BlockHash[] _hitHashes = new BlockHash[16];
    private long _queriedTokenCount;
    private long _hitTokenCount;
    private readonly int _slidingWindow;
    private readonly KvEvictionOptions? _eviction;
    private readonly List<KvCompaction> _pendingCompactions = [];

    /// <summary>The block-table entry of a block released under sliding-window attention (never read again).</summary>
    public const int ReleasedBlock = -1;

    /// <summary>Creates a manager over <paramref name="blockCount"/> blocks.</summary>
    /// <param name="blockCount">Blocks in the pool (normally <see cref="KvCacheStorage.BlockCount"/>).</param>
    /// <param name="options">Block size and prefix caching mode are taken from here.</param>
    /// <param name="hashSalt">Salt of every block hash, see <see cref="BlockHash.CreateSalt"/>.</param>
    /// <param name="slidingWindow">
    /// The most positions back any layer attends (the model's largest window when every layer has one,
    /// <see cref="Models.ModelConfig.KvRetention"/>); 0 when some layer sees everything. With a window W, appending slots
    /// for a sequence whose next query is at position p releases its blocks wholly before p − W + 1, as vLLM's sliding
    /// window manager does, so a long sequence holds about W / blockSize + 1 blocks.
    /// </param>
    /// <param name="eviction">
    /// Bounds every sequence's cached tokens (<see cref="TryEvict"/>); null keeps every token. Cannot be combined with a
    /// sliding window.
    /// </param>
    public KvCacheManager(int blockCount, KvCacheOptions options, long hashSalt = 0, int slidingWindow = 0, KvEvictionOptions? eviction = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(slidingWindow);
        if (eviction is not null && slidingWindow > 0)
            throw new ArgumentException("KV eviction cannot be combined with a model whose every layer has a sliding window (the window already bounds its KV)", nameof(eviction));
        _eviction = eviction;
        _slidingWindow = slidingWindow;
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        _pool = new BlockPool(blockCount, options.BlockSize);
        PrefixCaching = options.PrefixCaching;
        _salt = hashSalt;
        InstanceId = KvCacheMetrics.Register(this);
    }

    /// <summary>Tokens per block.</summary>
    public int BlockSize => _pool.BlockSize;

    /// <summary>Whether full blocks are shared between sequences.</summary>
    public PrefixCachingMode PrefixCaching { get; }

    /// <summary>Blocks in the pool.</summary>
    public int TotalBlockCount => _pool.BlockCount;

    /// <summary>Blocks referenced by at least one sequence.</summary>
    public int UsedBlockCount => _pool.BlockCount - _pool.FreeCount;

    /// <summary>Blocks available to new slots (empty or cached-free).</summary>
    public int FreeBlockCount => _pool.FreeCount;

    /// <summary>Free blocks that still hold a cached full block.</summary>
    public int CachedFreeBlockCount => _pool.CachedFreeCount;

    /// <summary>Number of sequences holding blocks.</summary>
    public int SequenceCount => _tables.Count;

    /// <summary>
    /// Copies the storage must perform (all layers) before the next forward pass, from copy-on-write.
    /// Valid until <see cref="ClearPendingCopies"/>.
    /// </summary>
    public ReadOnlySpan<BlockCopy> PendingCopies => CollectionsMarshal.AsSpan(_pendingCopies);

    /// <summary>Instance number used to tag metrics.</summary>
    internal int InstanceId { get; }

    /// <summary>The block pool, for invariant checks in tests.</summary>
    internal BlockPool Pool => _pool;

    /// <summary>
    /// Compactions the storage must perform before the next forward pass, from <see cref="TryEvict"/>; each after the
    /// first <see cref="KvCompaction.CopiesBefore"/> of <see cref="PendingCopies"/>. Valid until <see cref="ClearPendingCopies"/>.
    /// </summary>
    internal ReadOnlySpan<KvCompaction> PendingCompactions => CollectionsMarshal.AsSpan(_pendingCompactions);

    /// <summary>How sequences are bounded, or null when every token is kept.</summary>
    public KvEvictionOptions? Eviction => _eviction;

    /// <summary>Forgets <see cref="PendingCopies"/> (and the pending compactions) once they were handed to the storage.</summary>
    public void ClearPendingCopies()
    {
        _pendingCopies.Clear();
        _pendingCompactions.Clear();
    }

    /// <summary>Whether <paramref name="sequenceId"/> holds blocks.</summary>
    public bool Contains(long sequenceId) => _tables.ContainsKey(sequenceId);

    /// <summary>Whether <paramref name="blockCount"/> more blocks could be handed out now.</summary>
    public bool CanAllocate(int blockCount) => blockCount <= _pool.FreeCount;

    /// <summary>Blocks needed to hold <paramref name="tokenCount"/> tokens.</summary>
    public int BlocksFor(int tokenCount) => (tokenCount + BlockSize - 1) / BlockSize;

    /// <summary>
    /// Tokens of <paramref name="tokenIds"/> that a new sequence would find cached: whole blocks, capped so that the
    /// last token is always computed. No side effects.
    /// </summary>
    public int GetCachedPrefixTokenCount(ReadOnlySpan<int> tokenIds) => FindCachedBlocks(tokenIds) * BlockSize;

    /// <summary>
    /// Starts sequence <paramref name="sequenceId"/> with slots for all of <paramref name="tokenIds"/>, reusing the
    /// longest cached prefix of full blocks. Nothing changes when it returns false (too few free blocks).
    /// </summary>
    /// <param name="sequenceId">A sequence that holds no blocks.</param>
    /// <param name="tokenIds">The known tokens (prompt, or prompt and output when resuming after preemption).</param>
    /// <param name="hitTokenCount">Leading tokens whose keys and values are already cached: compute from this position.</param>
    public bool TryAllocate(long sequenceId, ReadOnlySpan<int> tokenIds, out int hitTokenCount) =>
        TryAllocate(sequenceId, tokenIds, int.MaxValue, out hitTokenCount);

    /// <summary>
    /// Starts sequence <paramref name="sequenceId"/> with slots for the cached prefix of <paramref name="tokenIds"/>
    /// plus at most <paramref name="maxNewTokenCount"/> tokens after it (a prefill chunk). The slots then cover
    /// min(<paramref name="tokenIds"/>.Length, hitTokenCount + <paramref name="maxNewTokenCount"/>) tokens.
    /// Nothing changes when it returns false (too few free blocks).
    /// </summary>
    /// <exception cref="InvalidOperationException">The sequence already holds blocks.</exception>
    public bool TryAllocate(long sequenceId, ReadOnlySpan<int> tokenIds, int maxNewTokenCount, out int hitTokenCount) =>
        TryAllocate(sequenceId, tokenIds, maxNewTokenCount, reuseCachedPrefix: true, out hitTokenCount);

    /// <summary>
    /// As <see cref="TryAllocate(long, ReadOnlySpan{int}, int, out int)"/>; with <paramref name="reuseCachedPrefix"/>
    /// false nothing is taken from the prefix cache (every token is computed, for work that needs the logits at every
    /// position), though the blocks it fills are still offered to later sequences.
    /// </summary>
    /// <exception cref="InvalidOperationException">The sequence already holds blocks.</exception>
    public bool TryAllocate(long sequenceId, ReadOnlySpan<int> tokenIds, int maxNewTokenCount, bool reuseCachedPrefix, out int hitTokenCount)
    {
        if (tokenIds.IsEmpty) throw new ArgumentException("A sequence starts with at least one token.", nameof(tokenIds));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxNewTokenCount, 1);
        if (_tables.ContainsKey(sequenceId)) throw new InvalidOperationException($"Sequence {sequenceId} already holds KV blocks.");

        int hitBlocks = reuseCachedPrefix ? FindCachedBlocks(tokenIds) : 0;
        int hit = hitBlocks * BlockSize;
        int newCount = Math.Min(maxNewTokenCount, tokenIds.Length - hit);
        int needed = BlocksFor(hit + newCount) - hitBlocks;
        int revived = 0; // hit blocks that leave the free queue
        for (int i = 0; i < hitBlocks; i++)
            if (_pool.RefCount(_hitBlocks[i]) == 0) revived++;
        if (needed > _pool.FreeCount - revived)
        {
            hitTokenCount = 0;
            return false;
        }

        var table = new BlockTable(BlocksFor(tokenIds.Length) + 1);
        for (int i = 0; i < hitBlocks; i++)
        {
            _pool.Acquire(_hitBlocks[i]);
            table.Add(_hitBlocks[i]);
            table.AddHash(_hitHashes[i]);
        }
        table.TokenCount = hit;
        AppendSlots(table, tokenIds.Slice(hit, newCount));
        _tables.Add(sequenceId, table);

        if (PrefixCaching == PrefixCachingMode.Enabled && reuseCachedPrefix)
        {
            _queriedTokenCount += tokenIds.Length;
            _hitTokenCount += hit;
            KvCacheMetrics.PrefixQueriedTokens.Add(tokenIds.Length);
            KvCacheMetrics.PrefixHitTokens.Add(hit);
        }
        hitTokenCount = hit;
        return true;
    }

    /// <summary>
    /// Blocks <see cref="TryAppendSlots"/> would take for <paramref name="tokenCount"/> more tokens of
    /// <paramref name="sequenceId"/>, a copy-on-write block included.
    /// </summary>
    public int GetAppendBlockCount(long sequenceId, int tokenCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokenCount);
        return AppendBlockCount(GetTable(sequenceId), tokenCount);
    }

    /// <summary>Whether <see cref="TryAppendSlots"/> for <paramref name="tokenCount"/> tokens would succeed now.</summary>
    public bool CanAppendSlots(long sequenceId, int tokenCount) => GetAppendBlockCount(sequenceId, tokenCount) <= _pool.FreeCount;

    /// <summary>
    /// Gives <paramref name="sequenceId"/> slots for <paramref name="tokenIds"/>, the next tokens of the sequence whose
    /// keys and values the coming forward pass writes. A shared, partly filled last block (after <see cref="Fork"/>)
    /// is copied first and the copy is reported in <see cref="PendingCopies"/>.
    /// Nothing changes when it returns false (too few free blocks).
    /// </summary>
    /// <remarks>
    /// NOTE: the manager takes token ids, not a count, because it hashes each block when it fills; without the ids a
    /// block could never be shared. Under a sliding window (see the constructor) the blocks that the new tokens' queries
    /// can no longer see are released first, even when it then returns false: no query will read them again.
    /// </remarks>
    public bool TryAppendSlots(long sequenceId, ReadOnlySpan<int> tokenIds)
    {
        var table = GetTable(sequenceId);
        if (tokenIds.IsEmpty) return true;
        ReleaseOutsideWindow(table);
        if (AppendBlockCount(table, tokenIds.Length) > _pool.FreeCount) return false;

        if (table.TokenCount % BlockSize != 0)
        {
            int last = table[table.BlockCount - 1];
            if (_pool.RefCount(last) > 1)
            {
                // Copy-on-write: the first write into a shared, partly filled block gets a private copy.
                int copy = _pool.Allocate();
                _pool.CopyTokens(last, copy);
                _pool.Release(last);
                table[table.BlockCount - 1] = copy;
                _pendingCopies.Add(new BlockCopy(last, copy));
            }
        }
        AppendSlots(table, tokenIds);
        return true;
    }

    /// <summary>
    /// Gives back the slots of <paramref name="sequenceId"/> from position <paramref name="tokenCount"/> on (the KV of
    /// rejected speculative tokens): blocks wholly past it return to the pool, leaving the prefix cache when no other
    /// sequence holds them; a kept, partly filled last block that another sequence shares is replaced by a private copy
    /// of its kept slots (reported in <see cref="PendingCopies"/>), a private one forgets the dropped slots. The next
    /// <see cref="TryAppendSlots"/> writes from <paramref name="tokenCount"/> on.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="tokenCount"/> is negative, beyond the sequence's
    /// slots, or inside blocks released under a sliding window.</exception>
    public void TruncateSlots(long sequenceId, int tokenCount)
    {
        var table = GetTable(sequenceId);
        if (tokenCount < 0 || tokenCount > table.TokenCount || (tokenCount < table.TokenCount && BlocksFor(tokenCount) <= table.ReleasedBlockCount && table.ReleasedBlockCount > 0))
            throw new ArgumentOutOfRangeException(nameof(tokenCount), tokenCount, $"sequence {sequenceId} has {table.TokenCount} slots ({table.ReleasedBlockCount} blocks released)");
        if (tokenCount == table.TokenCount) return;
        int keepBlocks = BlocksFor(tokenCount);
        for (int i = table.BlockCount - 1; i >= keepBlocks; i--)
        {
            int block = table[i];
            // NOTE: a block another sequence holds (a prefix hit in the same step) keeps its hash: its KV was computed.
            if (_pool.RefCount(block) == 1) _pool.Unregister(block);
            _pool.Release(block);
        }
        int kept = tokenCount - (keepBlocks - 1) * BlockSize;
        if (keepBlocks > 0 && kept < BlockSize)
        {
            int last = table[keepBlocks - 1];
            if (_pool.TokenCount(last) > kept)
            {
                if (_pool.RefCount(last) > 1)
                {
                    int copy = _pool.Allocate();
                    _pool.CopyTokens(last, copy, kept);
                    _pool.Release(last);
                    table[keepBlocks - 1] = copy;
                    _pendingCopies.Add(new BlockCopy(last, copy));
                }
                else
                {
                    _pool.Unregister(last);
                    _pool.TruncateTokens(last, kept);
                }
            }
        }
        table.Truncate(keepBlocks, tokenCount, tokenCount / BlockSize);
    }


    /// <summary>
    /// Makes room for <paramref name="newTokenCount"/> more tokens of <paramref name="sequenceId"/> under
    /// <see cref="Eviction"/>: when its cached tokens and the new ones would exceed
    /// <see cref="KvEvictionOptions.KeptTokenCount"/> + <see cref="BlockSize"/>, it drops tokens by the policy until
    /// exactly KeptTokenCount remain with the new ones, moves the kept tokens after the first dropped one down (their
    /// cache positions, hence their RoPE positions, are re-based) and releases the blocks no longer needed. The storage
    /// work is reported in <see cref="PendingCompactions"/>. Returns false, changing nothing, when a shared block that
    /// must be rewritten cannot get a private copy (too few free blocks).
    /// </summary>
    /// <param name="sequenceId">A sequence holding blocks.</param>
    /// <param name="newTokenCount">Tokens about to be appended, at most <see cref="KvEvictionOptions.RecentTokens"/>.</param>
    /// <param name="evictedCount">Tokens dropped (0 when nothing had to go).</param>
    /// <remarks>
    /// NOTE: eviction works a block's worth of tokens at a time, so the copying and re-rotation it costs (every kept
    /// token after the first dropped one) is paid once per block of generated tokens. The dropped tokens: the oldest
    /// after the sinks (<see cref="KvEvictionPolicy.AttentionSinks"/>), or the least attended among those neither sinks
    /// nor recent (<see cref="KvEvictionPolicy.HeavyHitters"/>, older first on ties).
    /// </remarks>
    public bool TryEvict(long sequenceId, int newTokenCount, out int evictedCount)
    {
        evictedCount = 0;
        var table = GetTable(sequenceId);
        if (_eviction is null || newTokenCount == 0) return true;
        int length = table.TokenCount, kept = _eviction.KeptTokenCount;
        if (length + newTokenCount <= kept + BlockSize) return true;
        if (newTokenCount > _eviction.RecentTokens)
            throw new ArgumentOutOfRangeException(nameof(newTokenCount), newTokenCount, $"an evicting sequence appends at most {_eviction.RecentTokens} tokens at a time (its recent window)");
        int drop = length + newTokenCount - kept;
        // Evictable: after the sinks and before the recent window (which the new tokens partly fill).
        int lo = _eviction.SinkTokens, hi = length - (_eviction.RecentTokens - newTokenCount);
        var dropped = new bool[length];
        if (_eviction.Policy == KvEvictionPolicy.AttentionSinks)
        {
            for (int i = lo; i < lo + drop; i++) dropped[i] = true;
        }
        else
        {
            var order = new int[hi - lo];
            var keys = new float[hi - lo];
            for (int i = 0; i < order.Length; i++)
            {
                order[i] = lo + i;
                keys[i] = table.Scores![lo + i];
            }
            // NOTE: a stable sort by score keeps older tokens first among equal scores.
            var stable = new (float Score, int Index)[order.Length];
            for (int i = 0; i < order.Length; i++) stable[i] = (keys[i], order[i]);
            Array.Sort(stable, static (a, b) => a.Score != b.Score ? a.Score.CompareTo(b.Score) : a.Index.CompareTo(b.Index));
            for (int i = 0; i < drop; i++) dropped[stable[i].Index] = true;
        }
        int first = Array.IndexOf(dropped, true);
        int newLength = length - drop;
        int firstBlock = first / BlockSize, oldBlocks = table.BlockCount, newBlocks = BlocksFor(newLength);

        // Shared blocks to rewrite need private copies; released tail blocks held by this sequence alone come back.
        int needed = 0, gained = 0;
        for (int b = firstBlock; b < newBlocks; b++)
            if (_pool.RefCount(table[b]) > 1) needed++;
        for (int b = newBlocks; b < oldBlocks; b++)
            if (_pool.RefCount(table[b]) == 1) gained++;
        if (needed > _pool.FreeCount + gained) return false;

        int baseIndex = firstBlock * BlockSize;
        var oldTokens = new int[length - baseIndex];
        for (int i = baseIndex; i < length; i++) oldTokens[i - baseIndex] = _pool.TokenIds(table[i / BlockSize])[i % BlockSize];
        var sources = new int[newLength - baseIndex];
        for (int i = baseIndex, j = 0; i < length; i++)
            if (!dropped[i]) sources[j++] = i;
        var sourceBlocks = table.BlockIds[firstBlock..oldBlocks].ToArray();

        if (table.Scores is { } scores)
            for (int j = 0; j < sources.Length; j++) scores[baseIndex + j] = scores[sources[j]];

        // NOTE: a released tail block keeps its hash when it has one: it was filled before any eviction, so its content
        // (which nothing rewrites) is still that prefix's keys and values.
        for (int b = newBlocks; b < oldBlocks; b++) _pool.Release(table[b]);
        var destinations = new int[newBlocks - firstBlock];
        for (int b = firstBlock; b < newBlocks; b++)
        {
            int block = table[b];
            if (_pool.RefCount(block) > 1)
            {
                int copy = _pool.Allocate();
                _pool.Release(block);
                block = copy;
                table[b] = block;
            }
            else
            {
                _pool.Unregister(block);
                _pool.TruncateTokens(block, 0);
            }
            destinations[b - firstBlock] = block;
            int end = Math.Min(BlockSize, newLength - b * BlockSize);
            for (int slot = 0; slot < end; slot++)
                _pool.SetToken(block, slot, oldTokens[sources[b * BlockSize + slot - baseIndex] - baseIndex]);
        }
        table.Truncate(newBlocks, newLength, firstBlock);
        table.Evicted = true;
        _pendingCompactions.Add(new KvCompaction(sequenceId, BlockSize, firstBlock, sourceBlocks, length, sources, destinations, _pendingCopies.Count));
        evictedCount = drop;
        return true;
    }

    /// <summary>
    /// The attention each cached token of <paramref name="sequenceId"/> received so far, by cache position
    /// (<see cref="KvEvictionPolicy.HeavyHitters"/> only; empty otherwise). The attention kernels' caller adds to it.
    /// </summary>
    internal Span<float> GetAttentionScores(long sequenceId)
    {
        var table = GetTable(sequenceId);
        return table.Scores is null ? Span<float>.Empty : table.Scores.AsSpan(0, table.TokenCount);
    }

    /// <summary>Whether <paramref name="sequenceId"/> has evicted tokens (its blocks are no longer offered as prefixes).</summary>
    public bool HasEvicted(long sequenceId) => GetTable(sequenceId).Evicted;

    /// <summary>
    /// Starts <paramref name="childId"/> as a copy of <paramref name="parentId"/> that shares all its blocks.
    /// Full blocks stay shared for good; the partly filled last block is copied on the first write by either side.
    /// </summary>
    /// <exception cref="InvalidOperationException">The child already holds blocks.</exception>
    public void Fork(long parentId, long childId)
    {
        var parent = GetTable(parentId);
        if (_tables.ContainsKey(childId)) throw new InvalidOperationException($"Sequence {childId} already holds KV blocks.");
        var child = parent.Clone();
        foreach (int id in child.BlockIds[child.ReleasedBlockCount..]) _pool.Acquire(id);
        _tables.Add(childId, child);
    }

    /// <summary>
    /// Releases every block of <paramref name="sequenceId"/>, last block first: full cached blocks stay hittable, and
    /// the tail of a sequence is evicted before its prefix, which other sequences are more likely to share.
    /// </summary>
    /// <exception cref="InvalidOperationException">The sequence holds no blocks (never allocated or freed twice).</exception>
    public void Free(long sequenceId) => Free(sequenceId, int.MaxValue);

    /// <summary>
    /// As <see cref="Free(long)"/>, for a sequence whose keys and values were written only for its first
    /// <paramref name="computedTokenCount"/> tokens (for example one preempted after it was given slots for a step that
    /// never ran): full blocks past that point are removed from the prefix cache instead of being offered to others.
    /// </summary>
    /// <exception cref="InvalidOperationException">The sequence holds no blocks (never allocated or freed twice).</exception>
    public void Free(long sequenceId, int computedTokenCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(computedTokenCount);
        if (!_tables.Remove(sequenceId, out var table))
            throw new InvalidOperationException($"Sequence {sequenceId} holds no KV blocks.");
        for (int i = table.BlockCount - 1; i >= table.ReleasedBlockCount; i--)
        {
            int block = table[i];
            // NOTE: a block filled by unwritten slots has ref count 1: nobody could hit it before it filled, and a
            // forked partial block is copied before its first write.
            if ((long)(i + 1) * BlockSize > computedTokenCount && _pool.RefCount(block) == 1) _pool.Unregister(block);
            _pool.Release(block);
        }
    }

    /// <summary>
    /// Physical block ids of <paramref name="sequenceId"/> in logical order: position p lives in block
    /// <c>table[p / BlockSize]</c>, slot <c>p % BlockSize</c>. Valid until the table next changes. Under a sliding window
    /// the leading entries may be <see cref="ReleasedBlock"/>.
    /// </summary>
    public ReadOnlySpan<int> GetBlockTable(long sequenceId) => GetTable(sequenceId).BlockIds;

    /// <summary>Token positions of <paramref name="sequenceId"/> that have a slot.</summary>
    public int GetTokenCount(long sequenceId) => GetTable(sequenceId).TokenCount;

    /// <summary>A snapshot of the counters.</summary>
    public KvCacheStats GetStats() =>
        new(TotalBlockCount, UsedBlockCount, CachedFreeBlockCount, _queriedTokenCount, _hitTokenCount);

    /// <summary>
    /// Checks pool invariants and that every block's ref count equals the number of block tables referencing it.
    /// O(blocks + slots); for tests and debugging.
    /// </summary>
    internal void CheckInvariants()
    {
        _pool.CheckInvariants();
        var refs = new int[_pool.BlockCount];
        foreach (var (id, table) in _tables)
        {
            if (table.BlockCount != BlocksFor(table.TokenCount))
                throw new InvalidOperationException($"Sequence {id}: {table.BlockCount} blocks for {table.TokenCount} tokens.");
            for (int i = 0; i < table.BlockCount; i++)
            {
                int b = table[i];
                if (i < table.ReleasedBlockCount)
                {
                    if (b != ReleasedBlock) throw new InvalidOperationException($"Sequence {id}: released entry {i} still names block {b}.");
                    continue;
                }
                refs[b]++;
                int expected = i < table.BlockCount - 1 ? BlockSize : table.TokenCount - i * BlockSize;
                if (_pool.TokenCount(b) < expected)
                    throw new InvalidOperationException($"Sequence {id}: block {b} has {_pool.TokenCount(b)} tokens, table needs {expected}.");
            }
        }
        for (int b = 0; b < refs.Length; b++)
            if (refs[b] != _pool.RefCount(b))
                throw new InvalidOperationException($"Block {b}: ref count {_pool.RefCount(b)}, referenced by {refs[b]} tables.");
    }

    /// <summary>Releases the blocks of <paramref name="table"/> wholly before the window of its next query (position TokenCount).</summary>
    private void ReleaseOutsideWindow(BlockTable table)
    {
        if (_slidingWindow == 0) return;
        // The next query sits at position TokenCount and sees TokenCount − W + 1 onward; later queries see less.
        int end = Math.Max(0, table.TokenCount + 1 - _slidingWindow) / BlockSize;
        // NOTE: released front to back, so the oldest block is evicted first; each keeps its hash and stays hittable
        // by an equal prefix until the pool hands it out again.
        for (int i = table.ReleasedBlockCount; i < end; i++)
        {
            _pool.Release(table[i]);
            table[i] = ReleasedBlock;
        }
        table.ReleasedBlockCount = Math.Max(table.ReleasedBlockCount, end);
    }

    private BlockTable GetTable(long sequenceId) =>
        _tables.TryGetValue(sequenceId, out var t) ? t : throw new InvalidOperationException($"Sequence {sequenceId} holds no KV blocks.");

    private int AppendBlockCount(BlockTable table, int tokenCount)
    {
        if (tokenCount == 0) return 0;
        int n = BlocksFor(table.TokenCount + tokenCount) - table.BlockCount;
        if (table.TokenCount % BlockSize != 0 && _pool.RefCount(table[table.BlockCount - 1]) > 1) n++;
        return n;
    }

    private void AppendSlots(BlockTable table, ReadOnlySpan<int> tokenIds)
    {
        if (_eviction?.Policy == KvEvictionPolicy.HeavyHitters)
        {
            int need = table.TokenCount + tokenIds.Length;
            if (table.Scores is null || table.Scores.Length < need)
            {
                var grown = new float[Math.Max(need, _eviction.KeptTokenCount + 2 * BlockSize)];
                table.Scores?.AsSpan(0, table.TokenCount).CopyTo(grown);
                table.Scores = grown;
            }
            table.Scores.AsSpan(table.TokenCount, tokenIds.Length).Clear();
        }
        foreach (int token in tokenIds)
        {
            int slot = table.TokenCount % BlockSize;
            if (slot == 0) table.Add(_pool.Allocate());
            int block = table[table.BlockCount - 1];
            _pool.SetToken(block, slot, token);
            table.TokenCount++;
            if (slot == BlockSize - 1 && PrefixCaching == PrefixCachingMode.Enabled && !table.Evicted)
            {
                // The block just filled: hash it now (not while scheduling) and offer it to later sequences.
                var hash = BlockHash.Compute(table.LastHash, _pool.TokenIds(block), _salt);
                table.AddHash(hash);
                _pool.Register(block, hash);
            }
        }
    }

    /// <summary>Fills _hitBlocks/_hitHashes with the cached full-block prefix of <paramref name="tokenIds"/>; returns its length in blocks.</summary>
    private int FindCachedBlocks(ReadOnlySpan<int> tokenIds)
    {
        if (PrefixCaching == PrefixCachingMode.Disabled || tokenIds.Length == 0) return 0;
        // NOTE: at most (n − 1) tokens can hit, so the last prompt token is always computed and yields logits.
        int maxBlocks = (tokenIds.Length - 1) / BlockSize;
        if (_hitBlocks.Length < maxBlocks)
        {
            _hitBlocks = new int[maxBlocks * 2];
            _hitHashes = new BlockHash[maxBlocks * 2];
        }
        var parent = BlockHash.Root;
        int count = 0;
        for (; count < maxBlocks; count++)
        {
            var tokens = tokenIds.Slice(count * BlockSize, BlockSize);
            var hash = BlockHash.Compute(parent, tokens, _salt);
            int id = _pool.Lookup(hash, tokens);
            if (id < 0) break;
            _hitBlocks[count] = id;
            _hitHashes[count] = hash;
            parent = hash;
        }
        return count;
    }
}
