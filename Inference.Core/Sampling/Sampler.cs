using System.Buffers;
using System.Numerics.Tensors;

namespace Inference.Sampling;

/// <summary>
/// Picks the next token from logits following <see cref="SamplingOptions"/>. One sampler per request: it owns the
/// request's random state, so a seeded request is reproducible whatever else runs beside it.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly int _vocabSize;
    private readonly Dictionary<int, int> _counts = new();
    private ulong _state;

    /// <summary>Creates a sampler over a vocabulary of <paramref name="vocabSize"/> tokens.</summary>
    public Sampler(SamplingOptions options, int vocabSize)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        _options = options;
        // NOTE: the vocabulary-sized scratch (candidate ids, logits, probabilities) is rented from the shared pool for
        // the duration of one call, so a waiting or paused request holds none of it.
        _vocabSize = vocabSize;
        Seed = options.Seed ?? (ulong)Random.Shared.NextInt64();
        _state = Seed;
    }

    /// <summary>The seed in use (the option's, or the one picked when it was null).</summary>
    public ulong Seed { get; }

    /// <summary>
    /// Chooses the next token after <paramref name="history"/>, all of it counted as generated (see
    /// <see cref="Sample(Span{float}, ReadOnlySpan{int}, int)"/>).
    /// </summary>
    public int Sample(Span<float> logits, ReadOnlySpan<int> history) => Sample(logits, history, 0);

    /// <summary>Chooses the next token. <paramref name="logits"/> is modified: it holds the penalized logits afterwards.</summary>
    /// <param name="logits">[vocab] logits of the last position.</param>
    /// <param name="tokens">The sequence so far: the prompt, then the generated tokens.</param>
    /// <param name="promptLength">How many of <paramref name="tokens"/> are the prompt: frequency and presence
    /// penalties count only the tokens after it; the repetition penalty looks at the last
    /// <see cref="SamplingOptions.PenaltyLastN"/> of all of them.</param>
    public int Sample(Span<float> logits, ReadOnlySpan<int> tokens, int promptLength)
    {
        if (logits.Length != _vocabSize) throw new ArgumentException($"expected {_vocabSize} logits, got {logits.Length}", nameof(logits));
        ArgumentOutOfRangeException.ThrowIfNegative(promptLength);
        ApplyPenalties(logits, tokens, Math.Min(promptLength, tokens.Length));
        if (_options.Temperature <= 0) return TensorPrimitives.IndexOfMax(logits);
        var scratch = Scratch.Rent(_vocabSize);
        try
        {
            var kept = KeptDistribution(logits, scratch);
            int keep = kept.Length;
            float r = NextFloat();
            float cumulative = 0;
            for (int i = 0; i < keep; i++)
            {
                cumulative += kept[i];
                if (r < cumulative) return scratch.Ids[i];
            }
            return scratch.Ids[keep - 1];
        }
        finally
        {
            scratch.Return();
        }
    }

    /// <summary>
    /// The top-k, top-p and min-p cut of <paramref name="logits"/> into <paramref name="scratch"/>, divided by the
    /// temperature and normalised: the probabilities of the kept candidates, whose ids are <c>scratch.Ids</c>.
    /// </summary>
    private Span<float> KeptDistribution(ReadOnlySpan<float> logits, Scratch scratch)
    {
        var kept = scratch.Values.AsSpan(0, Truncate(logits, scratch));
        TensorPrimitives.Divide(kept, _options.Temperature, kept);
        TensorPrimitives.SoftMax(kept, kept);
        return kept;
    }

    /// <summary>Candidate ids, values and probabilities for one call, rented from <see cref="ArrayPool{T}.Shared"/>.</summary>
    private readonly record struct Scratch(int[] Ids, float[] Values, float[] Probs)
    {
        public static Scratch Rent(int n) => new(ArrayPool<int>.Shared.Rent(n), ArrayPool<float>.Shared.Rent(n), ArrayPool<float>.Shared.Rent(n));

        public void Return()
        {
            ArrayPool<int>.Shared.Return(Ids);
            ArrayPool<float>.Shared.Return(Values);
            ArrayPool<float>.Shared.Return(Probs);
        }
    }

    /// <summary>
    /// The log-probability of <paramref name="tokenId"/> and the <paramref name="topCount"/> most likely tokens under
    /// the distribution the sampler draws from: log-softmax of the penalized logits divided by the temperature (1 when
    /// greedy), over the whole vocabulary, before the top-k, top-p and min-p cut.
    /// </summary>
    /// <param name="penalizedLogits">[vocab] the logits as <see cref="Sample(Span{float}, ReadOnlySpan{int}, int)"/> left them.</param>
    /// <param name="tokenId">The chosen token.</param>
    /// <param name="topCount">How many alternatives to list, most likely first (0 for none).</param>
    public TokenLogprobs GetLogprobs(ReadOnlySpan<float> penalizedLogits, int tokenId, int topCount)
    {
        float t = _options.Temperature > 0 ? _options.Temperature : 1f;
        return TokenLogprobs.Compute(penalizedLogits, t, tokenId, topCount);
    }

    /// <summary>
    /// Writes the sampler's whole distribution over the vocabulary for <paramref name="logits"/> to
    /// <paramref name="probs"/> ([vocab]; tokens cut by top-k, top-p or min-p get 0, greedy puts 1 on the argmax). The
    /// penalties are applied to <paramref name="logits"/> first, as in <see cref="Sample(Span{float}, ReadOnlySpan{int}, int)"/>.
    /// </summary>
    public void GetDistribution(Span<float> logits, ReadOnlySpan<int> tokens, int promptLength, Span<float> probs)
    {
        if (logits.Length != _vocabSize || probs.Length != _vocabSize) throw new ArgumentException($"expected {_vocabSize} logits and probabilities");
        ApplyPenalties(logits, tokens, Math.Min(promptLength, tokens.Length));
        probs.Clear();
        if (_options.Temperature <= 0)
        {
            probs[TensorPrimitives.IndexOfMax(logits)] = 1;
            return;
        }
        var scratch = Scratch.Rent(_vocabSize);
        try
        {
            var kept = KeptDistribution(logits, scratch);
            for (int i = 0; i < kept.Length; i++) probs[scratch.Ids[i]] = kept[i];
        }
        finally
        {
            scratch.Return();
        }
    }

    /// <summary>Draws a token from <paramref name="probs"/> (non-negative, summing to about 1) with the sampler's random state.</summary>
    public int Draw(ReadOnlySpan<float> probs)
    {
        float r = NextFloat();
        double sum = 0;
        for (int i = 0; i < probs.Length; i++) sum += probs[i];
        double target = r * sum, cumulative = 0;
        int last = -1;
        for (int i = 0; i < probs.Length; i++)
        {
            if (probs[i] <= 0) continue;
            cumulative += probs[i];
            last = i;
            if (target < cumulative) return i;
        }
        return last >= 0 ? last : TensorPrimitives.IndexOfMax(probs);
    }

    /// <summary>A uniform float in [0, 1) from the sampler's random state.</summary>
    public float NextUniform() => NextFloat();

    /// <summary>Sorts the candidates into the scratch ids/values and applies top-k, top-p and min-p; returns how many are kept.</summary>
    private int Truncate(ReadOnlySpan<float> logits, Scratch scratch)
    {
        // Candidates sorted by logit, best first, cut to top-k.
        int n = logits.Length;
        var ids = scratch.Ids;
        var values = scratch.Values;
        for (int i = 0; i < n; i++)
        {
            ids[i] = i;
            values[i] = logits[i];
        }
        int k = _options.TopK > 0 ? Math.Min(_options.TopK, n) : n;
        SortDescending(ids, values, k, n);
        var vals = values.AsSpan(0, k);

        // Probabilities of the untempered logits decide top-p and min-p, as in llama.cpp.
        var probs = scratch.Probs.AsSpan(0, k);
        TensorPrimitives.SoftMax(vals, probs);
        int keep = k;
        if (_options.TopP < 1)
        {
            double mass = 0;
            for (int i = 0; i < k; i++)
            {
                mass += probs[i];
                if (mass >= _options.TopP) { keep = i + 1; break; }
            }
        }
        if (_options.MinP > 0)
        {
            float threshold = probs[0] * _options.MinP;
            int m = 1;
            while (m < keep && probs[m] >= threshold) m++;
            keep = m;
        }
        return keep;
    }

    // NOTE: OpenAI's frequency and presence penalties (and vLLM's) count generated tokens only, never the prompt;
    // llama.cpp's repeat penalty looks at the last repeat_last_n tokens, prompt included. Both are kept as users expect.
    private void ApplyPenalties(Span<float> logits, ReadOnlySpan<int> tokens, int promptLength)
    {
        var o = _options;
        if (o.RepetitionPenalty != 1 && o.PenaltyLastN > 0)
        {
            _counts.Clear();
            for (int i = Math.Max(0, tokens.Length - o.PenaltyLastN); i < tokens.Length; i++)
            {
                int t = tokens[i];
                if ((uint)t < (uint)logits.Length) _counts[t] = 1;
            }
            foreach (var (token, _) in _counts)
            {
                ref float l = ref logits[token];
                l = l > 0 ? l / o.RepetitionPenalty : l * o.RepetitionPenalty;
            }
        }
        if (o.FrequencyPenalty != 0 || o.PresencePenalty != 0)
        {
            _counts.Clear();
            for (int i = promptLength; i < tokens.Length; i++)
            {
                int t = tokens[i];
                if ((uint)t < (uint)logits.Length) _counts[t] = _counts.GetValueOrDefault(t) + 1;
            }
            foreach (var (token, count) in _counts)
                logits[token] -= count * o.FrequencyPenalty + o.PresencePenalty;
        }
    }

    /// <summary>Moves the <paramref name="k"/> largest of the first <paramref name="n"/> candidates to the front, sorted.</summary>
    private static void SortDescending(int[] ids, float[] values, int k, int n)
    {
        if (k < n)
        {
            // Quickselect the k largest into [0, k), then sort just those.
            int lo = 0, hi = n - 1;
            while (lo < hi)
            {
                float pivot = values[(lo + hi) >>> 1];
                int i = lo, j = hi;
                while (i <= j)
                {
                    while (values[i] > pivot) i++;
                    while (values[j] < pivot) j--;
                    if (i <= j)
                    {
                        (values[i], values[j]) = (values[j], values[i]);
                        (ids[i], ids[j]) = (ids[j], ids[i]);
                        i++;
                        j--;
                    }
                }
                if (k - 1 <= j) hi = j;
                else if (k - 1 >= i) lo = i;
                else break;
            }
        }
        // Descending by value, ties by lower id, so results do not depend on the selection's order.
        var keys = values.AsSpan(0, k);
        var items = ids.AsSpan(0, k);
        for (int i = 0; i < k; i++) keys[i] = -keys[i];
        keys.Sort(items);
        for (int i = 0; i < k; i++) keys[i] = -keys[i];
        for (int i = 1; i < k; i++)
        {
            int j = i;
            while (j > 0 && keys[j] == keys[j - 1] && items[j] < items[j - 1])
            {
                (items[j], items[j - 1]) = (items[j - 1], items[j]);
                j--;
            }
        }
    }

    /// <summary>A float in [0, 1) from xorshift64* (deterministic across platforms and runtimes).</summary>
    private float NextFloat()
    {
        if (_state == 0) _state = 0x9E3779B97F4A7C15UL;
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        uint u = (uint)((_state * 0x2545F4914F6CDD1DUL) >> 32);
        return (u >> 8) / 16777216f;
    }
}
