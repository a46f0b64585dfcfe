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
    private float _reservedDraw = -1;   // a draw taken for the device sampler, used by the next host draw when that fails

    /// <summary>Creates a sampler over a vocabulary of <paramref name="vocabSize"/> tokens.</summary>
    public Sampler(SamplingOptions options, int vocabSize)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(vocabSize, SamplingMath.MaxVocabSize);
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
            int keep = Kept(logits, scratch, out long total);
            double target = SamplingMath.DrawTarget(NextFloat(), total);
            long cumulative = 0;
            for (int i = 0; i < keep; i++)
            {
                cumulative += scratch.Weights[i];
                if (cumulative > target) return SamplingMath.IdOf(scratch.Keys[i]);
            }
            return SamplingMath.IdOf(scratch.Keys[keep - 1]);
        }
        finally
        {
            scratch.Return();
        }
    }

    /// <summary>
    /// The top-k, top-p and min-p cut of <paramref name="logits"/> (<see cref="SamplingMath"/>'s arithmetic): the kept
    /// candidates' rank keys, best first, in <c>scratch.Keys</c>, their tempered weights in <c>scratch.Weights</c> and
    /// the weights' sum in <paramref name="total"/>; returns how many are kept (at least one).
    /// </summary>
    private int Kept(ReadOnlySpan<float> logits, Scratch scratch, out long total)
    {
        int n = logits.Length;
        var keys = scratch.Keys;
        var w = scratch.Weights;
        for (int i = 0; i < n; i++) keys[i] = SamplingMath.Key(logits[i], i);
        int k = _options.TopK > 0 ? Math.Min(_options.TopK, n) : n;
        SortSmallest(keys, k, n);

        // Weights of the untempered logits decide top-p and min-p, as in llama.cpp.
        // (Only when top-p or min-p cuts: otherwise every top-k candidate is kept and only the tempered weights count.)
        float max = logits[SamplingMath.IdOf(keys[0])];
        int keep = k;
        if (_options.TopP < 1 || _options.MinP > 0)
        {
            long sum = 0;
            for (int i = 0; i < k; i++) sum += w[i] = SamplingMath.Weight(logits[SamplingMath.IdOf(keys[i])] - max);
            keep = Cut(w, k, sum);
        }

        float t = _options.Temperature, top = max / t;
        total = 0;
        for (int i = 0; i < keep; i++) total += w[i] = SamplingMath.Weight(logits[SamplingMath.IdOf(keys[i])] / t - top);
        return keep;
    }

    /// <summary>How many of the <paramref name="k"/> untempered weights <paramref name="w"/> (summing to <paramref name="sum"/>) top-p and min-p keep.</summary>
    private int Cut(long[] w, int k, long sum)
    {
        int keep = k;
        if (_options.TopP < 1)
        {
            double target = SamplingMath.TopPTarget(_options.TopP, sum);
            long mass = 0;
            for (int i = 0; i < k; i++)
            {
                mass += w[i];
                if (SamplingMath.ReachesTopP(mass, target)) { keep = i + 1; break; }
            }
        }
        if (_options.MinP > 0)
        {
            double threshold = SamplingMath.MinPThreshold(_options.MinP, w[0]);
            int m = 1;
            while (m < keep && w[m] >= threshold) m++;
            keep = m;
        }
        return keep;
    }

    /// <summary>Candidate rank keys and weights for one call, rented from <see cref="ArrayPool{T}.Shared"/>.</summary>
    private readonly record struct Scratch(ulong[] Keys, long[] Weights)
    {
        public static Scratch Rent(int n) => new(ArrayPool<ulong>.Shared.Rent(n), ArrayPool<long>.Shared.Rent(n));

        public void Return()
        {
            ArrayPool<ulong>.Shared.Return(Keys);
            ArrayPool<long>.Shared.Return(Weights);
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
            int keep = Kept(logits, scratch, out long total);
            for (int i = 0; i < keep; i++) probs[SamplingMath.IdOf(scratch.Keys[i])] = total > 0 ? (float)(scratch.Weights[i] / (double)total) : 0f;
            if (total == 0) probs[SamplingMath.IdOf(scratch.Keys[keep - 1])] = 1;
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

    // NOTE: OpenAI's frequency and presence penalties (and vLLM's) count generated tokens only, never the prompt;
    // llama.cpp's repeat penalty looks at the last repeat_last_n tokens, prompt included. Both are kept as users expect.
    private void ApplyPenalties(Span<float> logits, ReadOnlySpan<int> tokens, int promptLength)
    {
        var o = _options;
        if (o.RepetitionPenalty != 1 && o.PenaltyLastN > 0)
        {
            CountRepeated(tokens, o.PenaltyLastN);
            foreach (var (token, _) in _counts)
            {
                ref float l = ref logits[token];
                l = l > 0 ? l / o.RepetitionPenalty : l * o.RepetitionPenalty;
            }
        }
        if (o.FrequencyPenalty != 0 || o.PresencePenalty != 0)
        {
            CountGenerated(tokens, promptLength);
            foreach (var (token, count) in _counts)
                logits[token] -= count * o.FrequencyPenalty + o.PresencePenalty;
        }
    }

    /// <summary>The distinct tokens among the last <paramref name="lastN"/> (within the vocabulary) into <see cref="_counts"/>.</summary>
    private void CountRepeated(ReadOnlySpan<int> tokens, int lastN)
    {
        _counts.Clear();
        for (int i = Math.Max(0, tokens.Length - lastN); i < tokens.Length; i++)
        {
            int t = tokens[i];
            if ((uint)t < (uint)_vocabSize) _counts[t] = 1;
        }
    }

    /// <summary>How often each token (within the vocabulary) occurs after the prompt, into <see cref="_counts"/>.</summary>
    private void CountGenerated(ReadOnlySpan<int> tokens, int promptLength)
    {
        _counts.Clear();
        for (int i = promptLength; i < tokens.Length; i++)
        {
            int t = tokens[i];
            if ((uint)t < (uint)_vocabSize) _counts[t] = _counts.GetValueOrDefault(t) + 1;
        }
    }

    /// <summary>Moves the <paramref name="k"/> smallest of the first <paramref name="n"/> keys (all distinct) to the front, sorted.</summary>
    private static void SortSmallest(ulong[] keys, int k, int n)
    {
        if (k < n)
        {
            // Quickselect the k smallest into [0, k), then sort just those.
            int lo = 0, hi = n - 1;
            while (lo < hi)
            {
                ulong pivot = keys[(lo + hi) >>> 1];
                int i = lo, j = hi;
                while (i <= j)
                {
                    while (keys[i] < pivot) i++;
                    while (keys[j] > pivot) j--;
                    if (i <= j)
                    {
                        (keys[i], keys[j]) = (keys[j], keys[i]);
                        i++;
                        j--;
                    }
                }
                if (k - 1 <= j) hi = j;
                else if (k - 1 >= i) lo = i;
                else break;
            }
        }
        keys.AsSpan(0, k).Sort();
    }

    /// <summary>
    /// Describes the next choice to the device sampler as row <c>rows.Count</c> of <paramref name="rows"/>: options, the
    /// random draw <see cref="Sample(Span{float}, ReadOnlySpan{int}, int)"/> would take (reserved: if the device's result
    /// is not used, the next host choice takes the same draw; <see cref="CommitDeviceChoice"/> consumes it) and the
    /// penalties, as the host applies them.
    /// </summary>
    /// <param name="rows">The step's device rows.</param>
    /// <param name="logitRow">The row of the step's logits to sample.</param>
    /// <param name="tokens">The sequence so far (see <see cref="Sample(Span{float}, ReadOnlySpan{int}, int)"/>).</param>
    /// <param name="promptLength">How many of <paramref name="tokens"/> are the prompt.</param>
    internal void AddDeviceRow(DeviceSamplingRows rows, int logitRow, ReadOnlySpan<int> tokens, int promptLength)
    {
        var o = _options;
        float draw = 0;
        if (o.Temperature > 0)
        {
            if (_reservedDraw < 0) _reservedDraw = NextRawFloat();
            draw = _reservedDraw;
        }
        rows.AddRow(logitRow, o.Temperature, o.TopK, o.TopP, o.MinP, draw);
        promptLength = Math.Min(Math.Max(promptLength, 0), tokens.Length);
        if (o.RepetitionPenalty != 1 && o.PenaltyLastN > 0)
        {
            CountRepeated(tokens, o.PenaltyLastN);
            foreach (var (token, _) in _counts) rows.AddPenalty(logitRow, token, DeviceSamplingRows.Repeat, o.RepetitionPenalty, 0);
        }
        if (o.FrequencyPenalty != 0 || o.PresencePenalty != 0)
        {
            CountGenerated(tokens, promptLength);
            foreach (var (token, count) in _counts)
                rows.AddPenalty(logitRow, token, DeviceSamplingRows.Subtract, 1, count * o.FrequencyPenalty + o.PresencePenalty);
        }
    }

    /// <summary>The device's choice of the row <see cref="AddDeviceRow"/> described is used: its draw is spent.</summary>
    internal void CommitDeviceChoice() => _reservedDraw = -1;

    /// <summary>A float in [0, 1): the reserved draw if there is one, else the next of the random state.</summary>
    private float NextFloat()
    {
        if (_reservedDraw >= 0)
        {
            float r = _reservedDraw;
            _reservedDraw = -1;
            return r;
        }
        return NextRawFloat();
    }

    /// <summary>A float in [0, 1) from xorshift64* (deterministic across platforms and runtimes).</summary>
    private float NextRawFloat()
    {
        if (_state == 0) _state = 0x9E3779B97F4A7C15UL;
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        uint u = (uint)((_state * 0x2545F4914F6CDD1DUL) >> 32);
        return (u >> 8) / 16777216f;
    }
}
