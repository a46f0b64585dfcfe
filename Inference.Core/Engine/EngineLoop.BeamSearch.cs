using Inference.Models;
using Inference.Sampling;
using Inference.Search;

namespace Inference.Engine;

internal sealed partial class EngineLoop
{
    /// <summary>A live beam: its sequence in the KV cache holds the prompt and every token but the last.</summary>
    private sealed record BeamState(long SequenceId, int[] Tokens, double Logprob);

    /// <summary>
    /// Beam search on the engine thread. The prompt is computed once; every beam is a fork of its parent's sequence,
    /// so beams share their common blocks (the prompt's held once) and a partly filled block is copied on write.
    /// </summary>
    /// <remarks>
    /// Each step: every parent's W likeliest next tokens (log-softmax of the raw logits) → the W candidates with the
    /// highest cumulative log-probability (ties: earlier parent, lower token id) → candidates ending in an
    /// end-of-generation token are complete, the others fork their parent → parents freed → one batched forward pass
    /// over the new beams' last tokens. Stops when W beams are complete, none is live, or at the token limit.
    /// NOTE: the whole search runs as one piece of engine-thread work: other requests wait for it.
    /// </remarks>
    public BeamSearchResult BeamSearch(int[] prompt, BeamSearchOptions options, Func<int, bool> isEnd, Func<int[], string> decode)
    {
        var manager = KvCache;
        int vocab = _config.VocabSize, width = options.BeamWidth;
        int maxTokens = Math.Min(options.MaxTokens, ContextLength - prompt.Length);
        if (maxTokens < 1) throw new ArgumentException($"the prompt has {prompt.Length} tokens and fills the context of {ContextLength}", nameof(prompt));
        var logits = new float[width * vocab];
        var batch = new ModelBatch();
        var complete = new List<(int[] Tokens, double Logprob)>();
        long root = _nextInternalId--;
        var parents = new List<BeamState>();
        var live = new List<BeamState>();
        var candidates = new List<(double Logprob, int Parent, int Token)>();
        int peak;
        try
        {
            Prefill(root, prompt, logits);
            peak = manager.UsedBlockCount;
            parents.Add(new BeamState(root, [], 0));
            for (int step = 0; ; step++)
            {
                candidates.Clear();
                for (int p = 0; p < parents.Count; p++)
                {
                    var row = logits.AsSpan(p * vocab, vocab);
                    foreach (var t in TokenLogprobs.Compute(row, 1f, 0, width).Top)
                        candidates.Add((parents[p].Logprob + t.Logprob, p, t.TokenId));
                }
                candidates.Sort(static (a, b) => a.Logprob != b.Logprob ? b.Logprob.CompareTo(a.Logprob) : a.Parent != b.Parent ? a.Parent.CompareTo(b.Parent) : a.Token.CompareTo(b.Token));
                live.Clear();
                foreach (var (logprob, p, token) in candidates)
                {
                    if (live.Count == width) break;
                    int[] tokens = [.. parents[p].Tokens, token];
                    if (options.StopAtEndOfSequence && isEnd(token))
                    {
                        complete.Add((tokens, logprob));
                        continue;
                    }
                    long child = _nextInternalId--;
                    manager.Fork(parents[p].SequenceId, child);
                    live.Add(new BeamState(child, tokens, logprob));
                }
                foreach (var parent in parents) manager.Free(parent.SequenceId);
                parents.Clear();
                if (complete.Count >= width || live.Count == 0 || step + 1 >= maxTokens) break;

                batch.Clear();
                foreach (var beam in live)
                {
                    if (!manager.TryAppendSlots(beam.SequenceId, beam.Tokens.AsSpan(^1)))
                        throw new InvalidOperationException("the KV cache has no room for the beams now; retry when fewer requests run");
                    batch.Add(beam.SequenceId, beam.Tokens.AsSpan(^1), prompt.Length + beam.Tokens.Length - 1, 1);
                }
                _executor.Storage.CopyBlocks(manager.PendingCopies);
                manager.ClearPendingCopies();
                _executor.Forward(batch, logits);
                peak = Math.Max(peak, manager.UsedBlockCount);
                parents.AddRange(live);
                live.Clear();
            }
        }
        finally
        {
            foreach (var b in parents) if (manager.Contains(b.SequenceId)) manager.Free(b.SequenceId);
            foreach (var b in live) if (manager.Contains(b.SequenceId)) manager.Free(b.SequenceId);
            if (manager.Contains(root)) manager.Free(root);
        }

        var all = new List<(int[] Tokens, double Logprob, bool Finished)>();
        foreach (var (tokens, logprob) in complete) all.Add((tokens, logprob, true));
        foreach (var b in live) all.Add((b.Tokens, b.Logprob, false));
        all.Sort((a, b) => options.Score(b.Logprob, b.Tokens.Length).CompareTo(options.Score(a.Logprob, a.Tokens.Length)));
        var beams = new List<Beam>(width);
        for (int i = 0; i < all.Count && i < width; i++)
        {
            var (tokens, logprob, finished) = all[i];
            var text = finished ? tokens.AsSpan(0, tokens.Length - 1) : tokens;
            beams.Add(new Beam(tokens, decode(text.ToArray()), logprob, options.Score(logprob, tokens.Length), finished));
        }
        return new BeamSearchResult(beams, peak);
    }
}
