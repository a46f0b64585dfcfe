using Inference.Sampling;
using Inference.Scheduling;
using Inference.Search;

namespace Inference.Engine;

/// <summary>
/// A beam search in progress, carried by one request: every live beam is a scheduled sequence of its own, so the search
/// shares the engine's steps with other requests, waits for blocks and can be preempted like them. Engine thread only.
/// </summary>
/// <remarks>
/// Each generation of beams: every beam computes its last token (one decode chunk) and hands its logits row in; when
/// the last one has, its W likeliest next tokens (log-softmax of the raw logits) → the W candidates with the highest
/// cumulative log-probability (ties: earlier parent, lower token id) → candidates ending in an end-of-generation token
/// are complete, the others start as copy-on-write forks of their parent (or, when it was preempted or no sequence slot
/// is free, as new sequences that find their full blocks in the prefix cache) → the parents end. Stops when W beams are
/// complete, none is live, or at the token limit.
/// </remarks>
internal sealed class BeamSearchRun(int[] prompt, BeamSearchOptions options, int maxTokens, Func<int, bool> isEnd, Func<int[], string> decode)
{
    /// <summary>A live beam: its sequence holds the prompt and every token of the beam, the last not yet computed.</summary>
    internal sealed class Seq(SchedulerRequest scheduled, int[] tokens, double logprob)
    {
        public SchedulerRequest Scheduled { get; } = scheduled;
        public int[] Tokens { get; } = tokens;
        public double Logprob { get; } = logprob;
        public bool HasLogits { get; set; }
    }

    private readonly Dictionary<long, int> _index = [];  // sequence id → index in Beams

    public int[] Prompt { get; } = prompt;
    public BeamSearchOptions Options { get; } = options;
    public int MaxTokens { get; } = maxTokens;
    public Func<int, bool> IsEnd { get; } = isEnd;
    public Func<int[], string> Decode { get; } = decode;
    public int Width => Options.BeamWidth;
    public GenerationRequest Carrier { get; private set; } = null!;

    /// <summary>The current generation of beams.</summary>
    public List<Seq> Beams { get; } = [];
    public float[] Rows { get; private set; } = [];
    public int Reported { get; set; }
    public int Step { get; set; }
    public int Peak { get; set; }
    public List<(int[] Tokens, double Logprob)> Complete { get; } = [];
    public List<(double Logprob, int Parent, int Token)> Candidates { get; } = [];

    /// <summary>The result, set on the engine thread before the carrier completes.</summary>
    public BeamSearchResult? Result { get; set; }

    /// <summary>The carrier was admitted: its prompt is the first beam.</summary>
    public void Start(GenerationRequest carrier, SchedulerRequest root)
    {
        Carrier = carrier;
        SetBeams([new Seq(root, [], 0)]);
    }

    public void SetBeams(List<Seq> beams)
    {
        Beams.Clear();
        _index.Clear();
        Beams.AddRange(beams);
        for (int i = 0; i < beams.Count; i++) _index.Add(beams[i].Scheduled.RequestId, i);
        Reported = 0;
    }

    public bool TryFind(long id, out int index) => _index.TryGetValue(id, out index);

    /// <summary>Whether the beam's logits are in and it waits for its siblings'.</summary>
    public bool IsParked(long id) => _index.TryGetValue(id, out int i) && Beams[i].HasLogits;

    public Span<float> Row(int index, int vocab)
    {
        if (Rows.Length < Width * vocab) Rows = new float[Width * vocab];
        return Rows.AsSpan(index * vocab, vocab);
    }
}

internal sealed partial class EngineLoop
{
    /// <summary>Refuses a search that could never run here (engine thread, at admission).</summary>
    /// <exception cref="ArgumentException">More beams than sequences, or more blocks than the pool holds.</exception>
    private void CheckBeamSearchFits(BeamSearchRun run)
    {
        if (run.Width > _scheduler.Options.MaxNumSeqs)
            throw new ArgumentException($"beam width {run.Width} is more than MaxNumSeqs ({_scheduler.Options.MaxNumSeqs}): every beam is a running sequence");
        // The prompt's full blocks are shared by every beam; each beam holds the rest on its own.
        int shared = run.Prompt.Length / KvCache.BlockSize;
        long need = shared + (long)run.Width * (KvCache.BlocksFor(run.Prompt.Length + run.MaxTokens) - shared);
        if (need > KvCache.TotalBlockCount)
            throw new ArgumentException($"a search of {run.Width} beams of up to {run.MaxTokens} tokens after a {run.Prompt.Length}-token prompt may need {need} KV blocks; the pool has {KvCache.TotalBlockCount}");
    }

    /// <summary>A beam computed its last token: keeps its logits row, and moves the search on once every beam's is in.</summary>
    private void BeamLogits(BeamSearchRun run, SchedulerRequest scheduled, ReadOnlySpan<float> row)
    {
        if (!run.TryFind(scheduled.RequestId, out int k)) return;
        var beam = run.Beams[k];
        // NOTE: a beam recomputed after a preemption yields the same row (a row's bits do not depend on its batch).
        if (beam.HasLogits) return;
        row.CopyTo(run.Row(k, _config.VocabSize));
        beam.HasLogits = true;
        run.Peak = Math.Max(run.Peak, KvCache.UsedBlockCount);
        if (++run.Reported == run.Beams.Count) AdvanceBeams(run);
    }

    private void AdvanceBeams(BeamSearchRun run)
    {
        int vocab = _config.VocabSize, width = run.Width;
        try
        {
            var candidates = run.Candidates;
            candidates.Clear();
            for (int p = 0; p < run.Beams.Count; p++)
                foreach (var t in TokenLogprobs.Compute(run.Row(p, vocab), 1f, 0, width).Top)
                    candidates.Add((run.Beams[p].Logprob + t.Logprob, p, t.TokenId));
            candidates.Sort(static (a, b) => a.Logprob != b.Logprob ? b.Logprob.CompareTo(a.Logprob) : a.Parent != b.Parent ? a.Parent.CompareTo(b.Parent) : a.Token.CompareTo(b.Token));
            var chosen = new List<(int Parent, int[] Tokens, double Logprob)>(width);
            foreach (var (logprob, p, token) in candidates)
            {
                if (chosen.Count == width) break;
                int[] tokens = [.. run.Beams[p].Tokens, token];
                if (run.Options.StopAtEndOfSequence && run.IsEnd(token)) run.Complete.Add((tokens, logprob));
                else chosen.Add((p, tokens, logprob));
            }
            run.Step++;
            bool done = run.Complete.Count >= width || chosen.Count == 0 || run.Step >= run.MaxTokens;
            var next = new List<BeamSearchRun.Seq>(done ? 0 : chosen.Count);
            if (!done)
            {
                foreach (var (p, tokens, logprob) in chosen)
                    next.Add(new BeamSearchRun.Seq(StartBeam(run, run.Beams[p].Scheduled, tokens[^1]), tokens, logprob));
            }
            foreach (var parent in run.Beams)
                if (_live.Remove(parent.Scheduled.RequestId)) _scheduler.Finish(parent.Scheduled.RequestId, FinishReason.Length);
            run.SetBeams(next);
            if (!done) return;
            run.Result = BeamResult(run, chosen);
            EndBeamSearch(run, FinishReason.Length, null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            EndBeamSearch(run, FinishReason.Cancelled, e);
        }
    }

    /// <summary>
    /// A child of <paramref name="parent"/> ending in <paramref name="token"/>: a fork of its KV when the parent still
    /// holds all of it and a sequence slot is free, else a new sequence (its full blocks come from the prefix cache).
    /// </summary>
    private SchedulerRequest StartBeam(BeamSearchRun run, SchedulerRequest parent, int token)
    {
        long id = _nextInternalId--;
        // NOTE: room for one token more than known, so appending the chosen token does not reach the length limit.
        var child = new SchedulerRequest(id, parent.TokenIds, 2);
        if (parent.Status == RequestStatus.Running && parent.ComputedTokenCount == parent.TokenCount && _scheduler.TryAddFork(parent, child))
        {
            _scheduler.Update(child, token);
        }
        else
        {
            child.AppendToken(token);
            _scheduler.AddRequest(child);
        }
        _live.Add(id, (run.Carrier, child));
        return child;
    }

    private static BeamSearchResult BeamResult(BeamSearchRun run, List<(int Parent, int[] Tokens, double Logprob)> live)
    {
        var options = run.Options;
        var all = new List<(int[] Tokens, double Logprob, bool Finished)>();
        foreach (var (tokens, logprob) in run.Complete) all.Add((tokens, logprob, true));
        foreach (var (_, tokens, logprob) in live) all.Add((tokens, logprob, false));
        all.Sort((a, b) => options.Score(b.Logprob, b.Tokens.Length).CompareTo(options.Score(a.Logprob, a.Tokens.Length)));
        var beams = new List<Beam>(run.Width);
        for (int i = 0; i < all.Count && i < run.Width; i++)
        {
            var (tokens, logprob, finished) = all[i];
            var text = finished ? tokens.AsSpan(0, tokens.Length - 1) : tokens;
            beams.Add(new Beam(tokens, run.Decode(text.ToArray()), logprob, options.Score(logprob, tokens.Length), finished));
        }
        return new BeamSearchResult(beams, run.Peak);
    }

    /// <summary>Ends every sequence of the search and completes its carrier (with <paramref name="error"/> when it failed).</summary>
    private void EndBeamSearch(BeamSearchRun run, FinishReason reason, Exception? error)
    {
        foreach (var beam in run.Beams)
            if (_live.Remove(beam.Scheduled.RequestId)) _scheduler.Finish(beam.Scheduled.RequestId, reason);
        run.SetBeams([]);
        var carrier = run.Carrier;
        if (error is not null) carrier.Finish(FinishReason.Cancelled, error);
        else if (reason == FinishReason.Cancelled) carrier.Finish(reason, new OperationCanceledException("the request was cancelled"));
        else carrier.Finish(reason);
        _metrics.RequestFinished(carrier);
    }
}
