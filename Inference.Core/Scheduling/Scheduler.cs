using Inference.Engine;
using Inference.KvCache;

namespace Inference.Scheduling;

/// <summary>
/// Continuous batching in the style of vLLM v1: decides each step which requests compute how many tokens, under a
/// sequence limit and a token budget, admitting, chunking and preempting as needed. Works on token and block ids only.
/// </summary>
/// <remarks>
/// <para>
/// NOTE: there is no prefill phase and no decode phase. Every request has known tokens (prompt + output) and computed
/// tokens (in the KV cache); each step the computed tokens catch up with the known ones as far as the budget allows.
/// A prompt is simply many uncomputed tokens (split into chunks when it does not fit), a decode is one.
/// </para>
/// <para>
/// One step: (1) running requests in admission order get slots for their uncomputed tokens; when the KV cache is full
/// the scheduler preempts (frees the blocks of, and requeues at the front) first requests whose consumer is not reading,
/// then the most recently admitted (or lowest priority) request, until the slots fit or the request itself was
/// preempted. (2) If nobody was preempted, waiting requests are admitted while sequences, budget and blocks last; a
/// running request whose consumer is not reading gives up its sequence slot and blocks to a waiting one that can run;
/// the longest cached prefix is reused, so recomputing a preempted request is cheap.
/// </para>
/// <para>
/// Threading: not thread-safe. The engine loop thread owns the scheduler and its <see cref="KvCacheManager"/>; other
/// threads hand requests and cancellations to that thread (for example through a channel).
/// </para>
/// </remarks>
public sealed class Scheduler
{
    private readonly SchedulerOptions _options;
    private readonly List<SchedulerRequest> _waiting = [];  // admission order: front first
    private readonly List<SchedulerRequest> _running = [];  // admission order: most recently admitted last
    private readonly Dictionary<long, SchedulerRequest> _live = new();
    private readonly SchedulerOutput _output = new();
    private long _arrivals;
    private long _steps;

    /// <summary>Creates a scheduler over <paramref name="kvCache"/>.</summary>
    public Scheduler(SchedulerOptions options, KvCacheManager kvCache)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(kvCache);
        _options = options;
        KvCache = kvCache;
    }

    /// <summary>The options.</summary>
    public SchedulerOptions Options => _options;

    /// <summary>The KV cache the scheduler allocates from (block tables for the forward pass come from here).</summary>
    public KvCacheManager KvCache { get; }

    /// <summary>Requests queued (new or preempted).</summary>
    public int WaitingCount => _waiting.Count;

    /// <summary>Requests holding KV blocks.</summary>
    public int RunningCount => _running.Count;

    /// <summary>Whether any request is waiting or running.</summary>
    public bool HasUnfinishedRequests => _live.Count > 0;

    /// <summary>Total preemptions so far.</summary>
    public long PreemptionCount { get; private set; }

    /// <summary>The live (waiting or running) request with <paramref name="requestId"/>, or null.</summary>
    public SchedulerRequest? Find(long requestId) => _live.GetValueOrDefault(requestId);

    /// <summary>Queues <paramref name="request"/>.</summary>
    /// <exception cref="ArgumentException">
    /// The id is in use, or the request could never be scheduled: it needs more blocks than the pool has, or (without
    /// chunked prefill) more tokens than a step's budget.
    /// </exception>
    public void AddRequest(SchedulerRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Status != RequestStatus.Waiting || request.ArrivalOrder != 0)
            throw new ArgumentException("A request can be added once.", nameof(request));
        if (_live.ContainsKey(request.RequestId))
            throw new ArgumentException($"Request id {request.RequestId} is in use.", nameof(request));
        int maxTokens = request.PromptTokenCount + request.MaxNewTokenCount;
        // NOTE: under KV eviction a sequence holds at most KeptTokenCount + a block of slack + a chunk (before it evicts).
        if (KvCache.Eviction is { } eviction) maxTokens = Math.Min(maxTokens, eviction.KeptTokenCount + KvCache.BlockSize + eviction.RecentTokens);
        if (KvCache.BlocksFor(maxTokens) > KvCache.TotalBlockCount)
            throw new ArgumentException($"Request {request.RequestId} may need {KvCache.BlocksFor(maxTokens)} KV blocks; the pool has {KvCache.TotalBlockCount}.", nameof(request));
        // NOTE: without chunking a preempted request is recomputed in one step, prompt and output together.
        if (_options.ChunkedPrefill == ChunkedPrefillMode.Disabled && maxTokens > _options.MaxNumBatchedTokens)
            throw new ArgumentException($"Request {request.RequestId} may need {maxTokens} tokens in one step; without chunked prefill the budget is {_options.MaxNumBatchedTokens}.", nameof(request));
        request.ArrivalOrder = ++_arrivals;
        _live.Add(request.RequestId, request);
        Enqueue(request, front: false);
    }

    /// <summary>
    /// Starts <paramref name="child"/> as a running copy of <paramref name="parent"/>, which has just computed all its
    /// known tokens (its prompt, say): the child shares the parent's blocks through <see cref="KvCacheManager.Fork"/>
    /// (the partly filled last block is copied on its first write) and samples its next token from the parent's logits.
    /// Returns false, changing nothing, when the sequence limit leaves no room; queue the child with
    /// <see cref="AddRequest"/> then. Call it between <see cref="Schedule"/> and the parent's <see cref="Update(SchedulerRequest, int)"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The child is not new, its id is in use, or its tokens differ from the parent's.</exception>
    /// <exception cref="InvalidOperationException">The parent is not running with all its tokens computed.</exception>
    public bool TryAddFork(SchedulerRequest parent, SchedulerRequest child)
    {
        ArgumentNullException.ThrowIfNull(parent);
        ArgumentNullException.ThrowIfNull(child);
        if (child.Status != RequestStatus.Waiting || child.ArrivalOrder != 0)
            throw new ArgumentException("A request can be added once.", nameof(child));
        if (_live.ContainsKey(child.RequestId))
            throw new ArgumentException($"Request id {child.RequestId} is in use.", nameof(child));
        if (!child.TokenIds.SequenceEqual(parent.TokenIds))
            throw new ArgumentException("A fork starts with its parent's tokens.", nameof(child));
        if (parent.Status != RequestStatus.Running || parent.ComputedTokenCount != parent.TokenCount)
            throw new InvalidOperationException($"Request {parent.RequestId} has not computed all its tokens; it cannot be forked.");
        if (_running.Count >= _options.MaxNumSeqs) return false;
        KvCache.Fork(parent.RequestId, child.RequestId);
        child.ArrivalOrder = ++_arrivals;
        child.Status = RequestStatus.Running;
        child.ComputedTokenCount = parent.ComputedTokenCount;
        child.EvictedTokenCount = parent.EvictedTokenCount;
        child.CachedTokenCount = parent.ComputedTokenCount;
        _live.Add(child.RequestId, child);
        _running.Add(child);
        return true;
    }

    /// <summary>
    /// Cancels a waiting or running request now, freeing its blocks; false when it is not live.
    /// Call it between steps (after <see cref="Update(SchedulerRequest, int)"/>, before <see cref="Schedule"/>): blocks
    /// of a request scheduled in the current step may be shared with requests of the same step.
    /// </summary>
    public bool Cancel(long requestId) => Finish(requestId, FinishReason.Cancelled);

    /// <summary>
    /// Finishes a live request now (a stop sequence found by the engine, a cancellation), freeing its blocks.
    /// Call it between steps, as <see cref="Cancel"/>. A sampled token for it is then ignored by
    /// <see cref="Update(SchedulerRequest, int)"/>.
    /// </summary>
    public bool Finish(long requestId, FinishReason reason)
    {
        if (!Enum.IsDefined(reason)) throw new ArgumentOutOfRangeException(nameof(reason));
        if (!_live.TryGetValue(requestId, out var request)) return false;
        if (request.Status == RequestStatus.Running)
        {
            _running.Remove(request);
            KvCache.Free(request.RequestId, request.ComputedTokenCount);
        }
        else
        {
            _waiting.Remove(request);
        }
        Retire(request, reason);
        return true;
    }

    /// <summary>
    /// Plans the next step. The returned object is reused: valid until the next call. It can be empty while requests
    /// are live, when all of them wait for consumers that are not reading.
    /// </summary>
    public SchedulerOutput Schedule()
    {
        _output.Reset(++_steps);
        int budget = _options.MaxNumBatchedTokens;
        int preempted = 0;

        // (1) Running requests, in admission order.
        for (int i = 0; i < _running.Count && budget > 0;)
        {
            var request = _running[i];
            int newCount = request.TokenCount + request.SpeculativeTokenCount - request.ComputedTokenCount;
            if (newCount <= 0 || IsIdle(request))
            {
                request.ClearSpeculativeTokens();
                i++;
                continue;
            }
            if (request.SpeculativeTokenCount > 0 && ClampChunk(request, newCount, budget) < newCount)
            {
                // NOTE: proposals are verified whole or not at all; without room for them the request decodes one token.
                request.ClearSpeculativeTokens();
                newCount = request.TokenCount - request.ComputedTokenCount;
            }
            newCount = ClampChunk(request, newCount, budget);
            if (newCount == 0)
            {
                i++;
                continue;
            }

            bool scheduled = false;
            while (true)
            {
                // NOTE: under KV eviction the sequence first gives up the tokens its policy drops (its cache positions
                // shift down by that many); an eviction that cannot copy a shared block counts as a full cache.
                bool evicted = KvCache.TryEvict(request.RequestId, newCount, out int evictedCount);
                request.EvictedTokenCount += evictedCount;
                if (evicted && KvCache.TryAppendSlots(request.RequestId, request.ScheduledTokenIds.Slice(request.ComputedTokenCount, newCount)))
                {
                    scheduled = true;
                    break;
                }
                int victimIndex = PickVictim();
                var victim = _running[victimIndex];
                budget += Preempt(victimIndex, out _);
                preempted++;
                if (victimIndex < i) i--;
                if (ReferenceEquals(victim, request)) break;
            }
            if (!scheduled) continue; // the request itself was preempted; _running[i] is now the next one
            AddChunk(request, request.ComputedTokenCount, newCount);
            budget -= newCount;
            i++;
        }

        // (2) Waiting requests, unless memory pressure preempted someone this step.
        if (preempted == 0)
        {
            for (int w = 0; w < _waiting.Count && budget > 0;)
            {
                var request = _waiting[w];
                if (IsIdle(request))
                {
                    w++;
                    continue;
                }
                if (_running.Count >= _options.MaxNumSeqs)
                {
                    // NOTE: a request whose consumer stopped reading yields its sequence slot (and its blocks) to one
                    // that can run; it is recomputed from its cached prefix once its consumer reads again.
                    int idleSlot = LastIdleRunning();
                    if (idleSlot < 0) break;
                    budget += Preempt(idleSlot, out int slotRequeuedAt);
                    if (slotRequeuedAt <= w) w++;
                    continue;
                }
                var tokens = request.TokenIds;
                // NOTE: an evicting sequence starts with at most what it may hold before its first eviction, so a prefix
                // hit never places a token past KeptTokenCount + a block; the rest is computed (and evicted) chunk by chunk.
                if (KvCache.Eviction is { } eviction) tokens = tokens[..Math.Min(tokens.Length, eviction.KeptTokenCount + KvCache.BlockSize)];
                int cached = request.ReusesCachedPrefix ? KvCache.GetCachedPrefixTokenCount(tokens) : 0;
                int remaining = tokens.Length - cached;
                int newCount = ClampChunk(request, remaining, budget);
                if (newCount == 0) break; // without chunking the rest does not fit this step; keep FCFS order

                if (!KvCache.TryAllocate(request.RequestId, tokens, newCount, request.ReusesCachedPrefix, out int hit))
                {
                    // Make room by preempting running requests whose consumer is not reading, if any; else wait.
                    int idle = LastIdleRunning();
                    if (idle < 0) break;
                    budget += Preempt(idle, out int requeuedAt);
                    if (requeuedAt <= w) w++; // keep pointing at the same waiting request, then retry it
                    continue;
                }
                newCount = Math.Min(newCount, tokens.Length - hit);
                _waiting.RemoveAt(w);
                _running.Add(request);
                request.Status = RequestStatus.Running;
                request.ComputedTokenCount = hit;
                request.CachedTokenCount = hit;
                AddChunk(request, hit, newCount);
                budget -= newCount;
            }
        }

        // The model computes what was scheduled: computed tokens advance now, sampled tokens arrive in Update.
        foreach (ref readonly var chunk in _output.Chunks)
            chunk.Request.ComputedTokenCount = chunk.StartPosition + chunk.TokenCount;
        _output.AddCopies(KvCache.PendingCopies);
        _output.AddCompactions(KvCache.PendingCompactions);
        KvCache.ClearPendingCopies();
        return _output;
    }

    /// <summary>
    /// Appends the token sampled for <paramref name="request"/> after the model ran its chunk, and finishes the request
    /// (freeing its blocks) on a stop token or when <see cref="SchedulerRequest.MaxNewTokenCount"/> is reached.
    /// Returns the finish reason, null while it continues. A request finished or cancelled in
    /// the meantime ignores the token and returns its reason.
    /// </summary>
    /// <exception cref="InvalidOperationException">The request is not waiting for a sampled token.</exception>
    public FinishReason? Update(SchedulerRequest request, int sampledTokenId)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Status == RequestStatus.Finished) return request.FinishReason;
        if (request.Status != RequestStatus.Running || request.ComputedTokenCount != request.TokenCount || request.SpeculativeTokenCount != 0)
            throw new InvalidOperationException($"Request {request.RequestId} did not compute its last token; no token can be sampled for it.");
        return Append(request, sampledTokenId);
    }

    /// <summary>
    /// After a step that verified <paramref name="request"/>'s proposed tokens: <paramref name="sampledTokenIds"/> are
    /// the tokens sampled from its logits rows, in order: the proposed tokens the verification accepted (a prefix of
    /// them) and the one sampled after the last accepted. The KV of the rejected proposals is rolled back
    /// (<see cref="KvCacheManager.TruncateSlots"/>), then the tokens are appended as by
    /// <see cref="Update(SchedulerRequest, int)"/>, stopping at a stop token or the length limit.
    /// </summary>
    /// <exception cref="ArgumentException">The tokens are empty, more than the proposals + 1, or do not start with the proposals.</exception>
    /// <exception cref="InvalidOperationException">The request did not compute its proposals in the last step.</exception>
    public FinishReason? Update(SchedulerRequest request, ReadOnlySpan<int> sampledTokenIds)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Status == RequestStatus.Finished) return request.FinishReason;
        int proposed = request.SpeculativeTokenCount, known = request.TokenCount;
        if (request.Status != RequestStatus.Running || request.ComputedTokenCount != known + proposed)
            throw new InvalidOperationException($"Request {request.RequestId} did not compute its proposed tokens; they cannot be verified.");
        if (sampledTokenIds.IsEmpty || sampledTokenIds.Length > proposed + 1)
            throw new ArgumentException($"1 to {proposed + 1} tokens are expected after verifying {proposed} proposed tokens, got {sampledTokenIds.Length}.", nameof(sampledTokenIds));
        int accepted = sampledTokenIds.Length - 1;
        if (!sampledTokenIds[..accepted].SequenceEqual(request.SpeculativeTokenIds[..accepted]))
            throw new ArgumentException("Every sampled token but the last must equal the proposed token at its position.", nameof(sampledTokenIds));
        // The accepted proposals' KV is kept; the rejected ones' slots are given back (at cache indices, which trail the
        // text by the tokens evicted so far).
        KvCache.TruncateSlots(request.RequestId, known + accepted - request.EvictedTokenCount);
        request.ComputedTokenCount = known + accepted;
        request.ClearSpeculativeTokens();
        FinishReason? reason = null;
        foreach (int token in sampledTokenIds)
            if ((reason = Append(request, token)) is not null) break;
        return reason;
    }

    private FinishReason? Append(SchedulerRequest request, int sampledTokenId)
    {
        request.AppendToken(sampledTokenId);
        FinishReason? reason =
            request.IsStopToken(sampledTokenId) ? FinishReason.EndOfSequence :
            request.OutputTokenCount >= request.MaxNewTokenCount ? FinishReason.Length :
            null;
        if (reason is { } r) Finish(request.RequestId, r);
        return reason;
    }

    /// <summary>
    /// <see cref="Update(SchedulerRequest, int)"/> for every chunk of <paramref name="output"/> that samples a token;
    /// <paramref name="sampledTokenIds"/> is aligned with <see cref="SchedulerOutput.Chunks"/> (other entries ignored).
    /// </summary>
    public void Update(SchedulerOutput output, ReadOnlySpan<int> sampledTokenIds)
    {
        ArgumentNullException.ThrowIfNull(output);
        var chunks = output.Chunks;
        if (sampledTokenIds.Length != chunks.Length) throw new ArgumentException("One sampled token per chunk is expected.", nameof(sampledTokenIds));
        for (int i = 0; i < chunks.Length; i++)
            if (chunks[i].SamplesToken) Update(chunks[i].Request, sampledTokenIds[i]);
    }

    /// <summary>A request whose consumer is not reading and which already produced output: leave it alone.</summary>
    private static bool IsIdle(SchedulerRequest r) => r.ConsumerState == ConsumerState.NotReading && r.OutputTokenCount > 0;

    private int ClampChunk(SchedulerRequest request, int count, int budget)
    {
        if (_options.ChunkedPrefill == ChunkedPrefillMode.Disabled) return count <= budget ? count : 0;
        if (_options.LongPrefillTokenThreshold > 0) count = Math.Min(count, _options.LongPrefillTokenThreshold);
        // NOTE: an evicting sequence appends at most its recent window at a time (see KvCacheManager.TryEvict).
        if (KvCache.Eviction is { } eviction) count = Math.Min(count, eviction.RecentTokens);
        if (request.MaxChunkTokenCount > 0) count = Math.Min(count, request.MaxChunkTokenCount);
        return Math.Min(count, budget);
    }

    private void AddChunk(SchedulerRequest request, int start, int count)
    {
        int end = request.TokenCount + request.SpeculativeTokenCount;
        _output.AddChunk(new ScheduledChunk(request, start, count, start + count == end)
        {
            SpeculativeTokenCount = start + count == end ? request.SpeculativeTokenCount : 0,
            EvictedTokenCount = request.EvictedTokenCount,
        });
    }

    /// <summary>Index in _running of the request to preempt next.</summary>
    private int PickVictim()
    {
        for (int i = _running.Count - 1; i >= 0; i--)
            if (_running[i].ConsumerState == ConsumerState.NotReading) return i;
        if (_options.Policy == SchedulingPolicy.FirstComeFirstServed) return _running.Count - 1;
        int victim = _running.Count - 1;
        for (int i = _running.Count - 2; i >= 0; i--)
        {
            var r = _running[i];
            var v = _running[victim];
            if (r.Priority > v.Priority || (r.Priority == v.Priority && r.ArrivalOrder > v.ArrivalOrder)) victim = i;
        }
        return victim;
    }

    private int LastIdleRunning()
    {
        for (int i = _running.Count - 1; i >= 0; i--)
            if (IsIdle(_running[i])) return i;
        return -1;
    }

    /// <summary>Frees the blocks of _running[index] and requeues it at the front; returns the tokens it gives back to this step's budget.</summary>
    private int Preempt(int index, out int requeuedAt)
    {
        var request = _running[index];
        _running.RemoveAt(index);
        // NOTE: computed tokens advance at the end of Schedule, so here they count only tokens whose keys and values
        // were written by earlier steps; blocks filled by this step's dropped chunk leave the prefix cache.
        KvCache.Free(request.RequestId, request.ComputedTokenCount);
        request.ClearSpeculativeTokens();
        int refund = _output.RemoveChunk(request);
        request.ComputedTokenCount = 0;
        request.EvictedTokenCount = 0;
        request.Status = RequestStatus.Preempted;
        request.PreemptionCount++;
        PreemptionCount++;
        _output.AddPreempted(request.RequestId);
        requeuedAt = Enqueue(request, front: true);
        return refund;
    }

    /// <summary>Queues <paramref name="request"/>; returns its index in the waiting queue.</summary>
    private int Enqueue(SchedulerRequest request, bool front)
    {
        if (_options.Policy == SchedulingPolicy.FirstComeFirstServed)
        {
            if (front) _waiting.Insert(0, request);
            else _waiting.Add(request);
            return front ? 0 : _waiting.Count - 1;
        }
        // Priority: keep the queue sorted by (priority, arrival); a preempted request keeps its original arrival.
        int at = _waiting.Count;
        while (at > 0 && Before(request, _waiting[at - 1])) at--;
        _waiting.Insert(at, request);
        return at;
    }

    private static bool Before(SchedulerRequest a, SchedulerRequest b) =>
        a.Priority < b.Priority || (a.Priority == b.Priority && a.ArrivalOrder < b.ArrivalOrder);

    private void Retire(SchedulerRequest request, FinishReason reason)
    {
        _live.Remove(request.RequestId);
        request.Status = RequestStatus.Finished;
        request.FinishReason = reason;
    }
}
