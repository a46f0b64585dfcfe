using System.Runtime.InteropServices;
using Inference.KvCache;

namespace Inference.Scheduling;

/// <summary>
/// What one <see cref="Scheduler.Schedule"/> step decided. The scheduler reuses one instance: its contents are valid
/// until the next call to <see cref="Scheduler.Schedule"/>.
/// </summary>
/// <remarks>
/// The engine, per step: copy <see cref="BlockCopies"/> in the KV storage, run the model over <see cref="Chunks"/>
/// (tokens of all chunks batched, each with its block table from <see cref="KvCacheManager.GetBlockTable"/>), then
/// call <see cref="Scheduler.Update(SchedulerRequest, int)"/> for every chunk that samples a token.
/// A chunk may reuse cached blocks that an earlier chunk of the same step fills: per layer, write the keys and values
/// of all chunks before running attention, or run the chunks in this order.
/// </remarks>
public sealed class SchedulerOutput
{
    private readonly List<ScheduledChunk> _chunks = [];
    private readonly List<BlockCopy> _blockCopies = [];
    private readonly List<long> _preemptedRequestIds = [];
    private readonly List<KvCompaction> _compactions = [];

    /// <summary>Requests to compute this step, running ones first, in scheduling order.</summary>
    public ReadOnlySpan<ScheduledChunk> Chunks => CollectionsMarshal.AsSpan(_chunks);

    /// <summary>KV block copies (copy-on-write) to perform before the forward pass.</summary>
    public ReadOnlySpan<BlockCopy> BlockCopies => CollectionsMarshal.AsSpan(_blockCopies);

    /// <summary>
    /// KV compactions (tokens evicted under <see cref="KvCacheManager.Eviction"/>) to perform before the forward pass,
    /// each after the first <see cref="KvCompaction.CopiesBefore"/> of <see cref="BlockCopies"/>.
    /// </summary>
    internal ReadOnlySpan<KvCompaction> Compactions => CollectionsMarshal.AsSpan(_compactions);

    /// <summary>Requests preempted in this step: their blocks were freed and they will be recomputed later.</summary>
    public ReadOnlySpan<long> PreemptedRequestIds => CollectionsMarshal.AsSpan(_preemptedRequestIds);

    /// <summary>Sum of <see cref="ScheduledChunk.TokenCount"/> over <see cref="Chunks"/>.</summary>
    public int TotalTokenCount { get; private set; }

    /// <summary>Step number, counting from 1.</summary>
    public long StepNumber { get; private set; }

    /// <summary>Whether nothing is to be computed.</summary>
    public bool IsEmpty => _chunks.Count == 0;

    internal void Reset(long step)
    {
        _chunks.Clear();
        _blockCopies.Clear();
        _compactions.Clear();
        _preemptedRequestIds.Clear();
        TotalTokenCount = 0;
        StepNumber = step;
    }

    internal void AddChunk(in ScheduledChunk chunk)
    {
        _chunks.Add(chunk);
        TotalTokenCount += chunk.TokenCount;
    }

    /// <summary>Removes the chunk of <paramref name="request"/>, if any; returns its token count (0 when none).</summary>
    internal int RemoveChunk(SchedulerRequest request)
    {
        for (int i = 0; i < _chunks.Count; i++)
        {
            if (!ReferenceEquals(_chunks[i].Request, request)) continue;
            int n = _chunks[i].TokenCount;
            _chunks.RemoveAt(i);
            TotalTokenCount -= n;
            return n;
        }
        return 0;
    }

    internal void AddPreempted(long requestId) => _preemptedRequestIds.Add(requestId);

    internal void AddCompactions(ReadOnlySpan<KvCompaction> compactions)
    {
        foreach (var c in compactions) _compactions.Add(c);
    }

    internal void AddCopies(ReadOnlySpan<BlockCopy> copies)
    {
        foreach (var c in copies) _blockCopies.Add(c);
    }
}
