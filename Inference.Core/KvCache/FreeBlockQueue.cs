namespace Inference.KvCache;

/// <summary>
/// The free blocks of a <see cref="BlockPool"/> in eviction order: an intrusive doubly-linked list over block ids,
/// stored as one array of links. Every operation is O(1) and allocation-free.
/// </summary>
/// <remarks>
/// <code>
///   sentinel ⇄ [LRU: evicted first] ⇄ ... ⇄ [most recently freed] ⇄ sentinel
///   links[blockCount] is the sentinel: its Next is the front, its Prev the back.
/// </code>
/// A block that is not queued has Prev = Next = -1. Not thread-safe (owned by the engine loop thread).
/// </remarks>
internal sealed class FreeBlockQueue
{
    private struct Link
    {
        public int Prev;
        public int Next;
    }

    private readonly Link[] _links; // [blockCount + 1], the last entry is the sentinel
    private readonly int _sentinel;

    /// <summary>Creates a queue holding all <paramref name="blockCount"/> blocks in id order.</summary>
    public FreeBlockQueue(int blockCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 0);
        _links = new Link[blockCount + 1];
        _sentinel = blockCount;
        _links[_sentinel] = new Link { Prev = _sentinel, Next = _sentinel };
        for (int i = 0; i < blockCount; i++)
        {
            _links[i] = new Link { Prev = -1, Next = -1 };
            PushBack(i);
        }
    }

    /// <summary>Number of queued blocks.</summary>
    public int Count { get; private set; }

    /// <summary>The first block to be evicted, or -1 when empty.</summary>
    public int Front => Count == 0 ? -1 : _links[_sentinel].Next;

    /// <summary>Whether <paramref name="blockId"/> is queued.</summary>
    public bool Contains(int blockId) => _links[blockId].Next >= 0;

    /// <summary>Queues <paramref name="blockId"/> last (evicted after everything already queued).</summary>
    public void PushBack(int blockId) => InsertAfter(_links[_sentinel].Prev, blockId);

    /// <summary>Queues <paramref name="blockId"/> first (evicted before everything already queued).</summary>
    public void PushFront(int blockId) => InsertAfter(_sentinel, blockId);

    /// <summary>Removes and returns the front block.</summary>
    /// <exception cref="InvalidOperationException">The queue is empty.</exception>
    public int PopFront()
    {
        if (Count == 0) throw new InvalidOperationException("No free KV blocks.");
        int id = _links[_sentinel].Next;
        Remove(id);
        return id;
    }

    /// <summary>Removes <paramref name="blockId"/> from anywhere in the queue.</summary>
    /// <exception cref="InvalidOperationException">The block is not queued.</exception>
    public void Remove(int blockId)
    {
        ref var link = ref _links[blockId];
        if (link.Next < 0) throw new InvalidOperationException($"Block {blockId} is not in the free queue.");
        _links[link.Prev].Next = link.Next;
        _links[link.Next].Prev = link.Prev;
        link.Prev = link.Next = -1;
        Count--;
    }

    /// <summary>Copies the queued ids front to back into <paramref name="destination"/>; returns how many (for checks and tests).</summary>
    public int CopyTo(Span<int> destination)
    {
        int n = 0;
        for (int id = _links[_sentinel].Next; id != _sentinel; id = _links[id].Next)
        {
            if (n == destination.Length) throw new InvalidOperationException("Free queue is longer than its count (corrupt links).");
            destination[n++] = id;
        }
        return n;
    }

    private void InsertAfter(int prev, int blockId)
    {
        ref var link = ref _links[blockId];
        if (link.Next >= 0) throw new InvalidOperationException($"Block {blockId} is already in the free queue.");
        int next = _links[prev].Next;
        link.Prev = prev;
        link.Next = next;
        _links[prev].Next = blockId;
        _links[next].Prev = blockId;
        Count++;
    }
}
