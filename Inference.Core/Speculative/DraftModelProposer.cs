using System.Numerics.Tensors;
using Inference.Engine;
using Inference.KvCache;
using Inference.Models;
using Inference.Scheduling;

namespace Inference.Speculative;

/// <summary>
/// A draft model proposes its greedy continuation. Its KV lives in its own paged pool (no prefix caching), one sequence
/// per request: each round the draft's sequence is cut back to what it shares with the request's known tokens
/// (<see cref="KvCacheManager.TruncateSlots"/>), catches up, and runs one batched draft step per proposed token.
/// </summary>
/// <remarks>
/// NOTE: the proposals are the draft's argmax, a point mass. The verification samples the model's own distribution and
/// keeps a proposal when the draw equals it, which is the standard rejection rule (accept with min(1, p/q), else
/// draw from the normalized max(0, p − q)) for a point-mass q: the output follows the model's distribution.
/// </remarks>
internal sealed class DraftModelProposer : ISpeculativeProposer
{
    private readonly DraftModel _draft;
    private readonly IForwardExecutor _executor;
    private readonly KvCacheManager _kv;
    private readonly int _vocab, _budget;
    private readonly float _minProbability, _stopMargin;
    private readonly Dictionary<long, List<int>> _computed = new(); // request id → token ids in the draft's KV
    private readonly ModelBatch _batch = new();
    private readonly List<(int Request, bool Logits)> _segments = [];
    private readonly List<Active> _active = [];
    private readonly List<Active> _spare = [];
    private float[] _logits = [];

    /// <summary>A request being proposed for in this round (reused across rounds: no allocation per step).</summary>
    private sealed class Active
    {
        public SchedulerRequest Request = null!;
        public int Limit;
        public readonly int[] Proposed = new int[SpeculativeOptions.MaxSpeculativeTokens];
        public int Count;
        public bool Stopped;
    }

    public DraftModelProposer(DraftModel draft, EngineOptions options, int contextLength, IForwardExecutorFactory? factory)
    {
        _draft = draft;
        var c = draft.Model.Config;
        _vocab = c.VocabSize;
        _budget = options.MaxNumBatchedTokens;
        _minProbability = options.Speculative?.DraftMinProbability ?? 0;
        _stopMargin = options.Speculative?.DraftStopMargin ?? 0;
        int perSequence = (contextLength + options.KvCache.BlockSize - 1) / options.KvCache.BlockSize;
        long cap = (long)options.MaxNumSeqs * perSequence * KvCacheStorage.GetBlockByteCount(c.LayerCount, options.KvCache.BlockSize, c.KvHeadCount, c.HeadDim, options.KvCache.DataType);
        var kvOptions = options.KvCache with { PoolBytes = Math.Min(options.KvCache.ResolvePoolBytes(), cap), PrefixCaching = PrefixCachingMode.Disabled };
        int blockCount = KvCacheStorage.GetRequiredBlockCount(kvOptions, c.LayerCount, c.KvHeadCount, c.HeadDim);
        _kv = new KvCacheManager(blockCount, kvOptions);
        var context = new ForwardExecutorContext(draft.Model, _kv, kvOptions, blockCount, contextLength, options.MaxNumBatchedTokens, options.MaxNumSeqs, options.Threads);
        _executor = factory is null ? new CpuForwardExecutor(context) : factory.Create(context);
    }

    /// <summary>The draft model (tests compare its configuration with the model's).</summary>
    internal DraftModel Draft => _draft;

    /// <summary>The draft's KV cache (tests check that its blocks come back).</summary>
    internal KvCacheManager KvCache => _kv;

    public void Propose(IReadOnlyList<SchedulerRequest> requests, ReadOnlySpan<int> limits)
    {
        _spare.AddRange(_active);
        _active.Clear();
        _batch.Clear();
        _segments.Clear();
        // Round 1: each sequence catches up with its request's known tokens; the last one's logits give proposal 1.
        for (int i = 0; i < requests.Count; i++)
        {
            var r = requests[i];
            r.SetSpeculativeTokens(default);
            if (limits[i] <= 0) continue;
            var known = r.TokenIds;
            if (!CatchUp(r.RequestId, known, computeLast: true, out int common)) continue;
            var active = _spare.Count > 0 ? _spare[^1] : new Active();
            if (_spare.Count > 0) _spare.RemoveAt(_spare.Count - 1);
            active.Request = r;
            active.Limit = Math.Min(Math.Min(limits[i], r.SpeculativeCapacity), SpeculativeOptions.MaxSpeculativeTokens);
            active.Count = 0;
            active.Stopped = false;
            _active.Add(active);
            AddSegments(r.RequestId, _active.Count - 1, known[common..], common, wantLogits: true);
        }
        Flush();
        // Rounds 2..k: one token per sequence, the previous proposal.
        for (int step = 1; ; step++)
        {
            for (int a = 0; a < _active.Count; a++)
            {
                var s = _active[a];
                if (s.Stopped || s.Count != step || step >= s.Limit) continue;
                long id = s.Request.RequestId;
                int token = s.Proposed[step - 1];
                if (!_kv.TryAppendSlots(id, [token]))
                {
                    s.Stopped = true;
                    continue;
                }
                var computed = _computed[id];
                AddSegments(id, a, [token], computed.Count, wantLogits: true);
                computed.Add(token);
            }
            if (_segments.Count == 0) break;
            Flush();
        }
        foreach (var s in _active) s.Request.SetSpeculativeTokens(s.Proposed.AsSpan(0, s.Count));
    }

    /// <summary>
    /// The prompt tokens of this step's chunks, computed in the draft's KV now (no logits): by the first decode step the
    /// draft holds the whole prompt and catches up one token, so its prompt costs the time to the first token rather
    /// than the decode's. Requests that have generated tokens (a prompt recomputed after preemption) catch up in
    /// <see cref="Propose"/> as usual.
    /// </summary>
    public void Prefill(ReadOnlySpan<ScheduledChunk> chunks)
    {
        foreach (ref readonly var chunk in chunks)
        {
            var r = chunk.Request;
            if (chunk.SpeculativeTokenCount > 0 || r.OutputTokenCount > 0 || r.MaxNewTokenCount < 2) continue;
            var known = r.TokenIds[..(chunk.StartPosition + chunk.TokenCount)];
            if (!CatchUp(r.RequestId, known, computeLast: false, out int common)) continue;
            AddSegments(r.RequestId, -1, known[common..], common, wantLogits: false);
        }
        Flush();
    }

    /// <summary>
    /// Cuts the draft's sequence for <paramref name="id"/> back to the prefix it shares with <paramref name="known"/>
    /// (leaving at least the last token to compute when <paramref name="computeLast"/>: its logits give the next
    /// proposal) and gives it slots for the rest; false when its pool is full.
    /// </summary>
    private bool CatchUp(long id, ReadOnlySpan<int> known, bool computeLast, out int common)
    {
        common = 0;
        if (_computed.TryGetValue(id, out var computed))
        {
            int max = Math.Min(computed.Count, computeLast ? known.Length - 1 : known.Length);
            while (common < max && computed[common] == known[common]) common++;
            _kv.TruncateSlots(id, common);
            computed.RemoveRange(common, computed.Count - common);
            if (_kv.TryAppendSlots(id, known[common..]))
            {
                computed.AddRange(known[common..]);
                return true;
            }
            Release(id);
            return false;
        }
        if (!_kv.TryAllocate(id, known, out _)) return false;
        _computed.Add(id, [.. known]);
        return true;
    }

    /// <summary>
    /// Adds <paramref name="tokens"/> of sequence <paramref name="id"/> (active request <paramref name="active"/>, or −1
    /// for a prompt chunk) from <paramref name="start"/>, in pieces within the step budget, with logits at the last when
    /// <paramref name="wantLogits"/>.
    /// </summary>
    private void AddSegments(long id, int active, ReadOnlySpan<int> tokens, int start, bool wantLogits)
    {
        for (int done = 0; done < tokens.Length;)
        {
            int room = _budget - _batch.TokenCount;
            if (room == 0)
            {
                Flush();
                room = _budget;
            }
            int n = Math.Min(room, tokens.Length - done);
            bool logits = wantLogits && done + n == tokens.Length;
            _batch.Add(id, tokens.Slice(done, n), start + done, logits ? 1 : 0);
            _segments.Add((active, logits));
            done += n;
        }
    }

    /// <summary>Runs the batch and takes each segment's argmax as its request's next proposal.</summary>
    private void Flush()
    {
        if (_segments.Count == 0) return;
        if (_logits.Length < _batch.LogitCount * _vocab) _logits = new float[_batch.LogitCount * _vocab];
        _executor.Storage.CopyBlocks(_kv.PendingCopies);
        _kv.ClearPendingCopies();
        _executor.Forward(_batch, _logits);
        for (int i = 0; i < _segments.Count; i++)
        {
            var (a, logits) = _segments[i];
            if (!logits) continue;
            var s = _active[a];
            var row = _logits.AsSpan(_batch.Segments[i].LogitIndex * _vocab, _vocab);
            int token = TensorPrimitives.IndexOfMax(row);
            // The argmax's softmax probability is 1 / Σ exp(l − max).
            if (_minProbability > 0 && 1 / SumExp(row, row[token]) < _minProbability)
            {
                s.Stopped = true;
                continue;
            }
            s.Proposed[s.Count++] = token;
            if (_stopMargin > 0 && row[token] - RunnerUp(row, token) < _stopMargin) s.Stopped = true;
        }
        _batch.Clear();
        _segments.Clear();
    }

    /// <summary>The largest logit of <paramref name="row"/> other than the one at <paramref name="top"/>.</summary>
    private static float RunnerUp(Span<float> row, int top)
    {
        if (row.Length == 1) return float.NegativeInfinity;
        float max = row[top];
        row[top] = float.NegativeInfinity;
        float second = TensorPrimitives.Max(row);
        row[top] = max;
        return second;
    }

    private static double SumExp(ReadOnlySpan<float> logits, float max)
    {
        double sum = 0;
        foreach (float l in logits) sum += Math.Exp(l - max);
        return sum;
    }

    public void Release(long requestId)
    {
        if (_computed.Remove(requestId)) _kv.Free(requestId);
    }

    public void Dispose()
    {
        _executor.Dispose();
        _draft.Dispose();
    }
}
