using System.Numerics.Tensors;

namespace Inference.Sampling;

/// <summary>
/// Picks the next token from logits following <see cref="SamplingOptions"/>. One sampler per request: it owns the
/// request's random state, so a seeded request is reproducible whatever else runs beside it.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly int[] _ids;          // [vocab] candidate token ids
    private readonly float[] _values;     // [vocab] candidate logits, then probabilities
    private readonly float[] _probs;      // [vocab] untempered probabilities of the candidates
    private readonly Dictionary<int, int> _counts = new();
    private ulong _state;

    /// <summary>Creates a sampler over a vocabulary of <paramref name="vocabSize"/> tokens.</summary>
    public Sampler(SamplingOptions options, int vocabSize)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        _options = options;
        _ids = new int[vocabSize];
        _values = new float[vocabSize];
        _probs = new float[vocabSize];
        Seed = options.Seed ?? (ulong)Random.Shared.NextInt64();
        _state = Seed;
    }

    /// <summary>The seed in use (the option's, or the one picked when it was null).</summary>
    public ulong Seed { get; }

    /// <summary>Chooses the next token. <paramref name="logits"/> is modified (penalties).</summary>
    /// <param name="logits">[vocab] logits of the last position.</param>
    /// <param name="history">Tokens so far (prompt and generated), for the penalties.</param>
    public int Sample(Span<float> logits, ReadOnlySpan<int> history)
    {
        if (logits.Length != _ids.Length) throw new ArgumentException($"expected {_ids.Length} logits, got {logits.Length}", nameof(logits));
        ApplyPenalties(logits, history);
        if (_options.Temperature <= 0) return TensorPrimitives.IndexOfMax(logits);

        // Candidates sorted by logit, best first, cut to top-k.
        int n = logits.Length;
        for (int i = 0; i < n; i++)
        {
            _ids[i] = i;
            _values[i] = logits[i];
        }
        int k = _options.TopK > 0 ? Math.Min(_options.TopK, n) : n;
        SortDescending(k, n);
        var vals = _values.AsSpan(0, k);

        // Probabilities of the untempered logits decide top-p and min-p, as in llama.cpp.
        var probs = _probs.AsSpan(0, k);
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

        var kept = vals[..keep];
        TensorPrimitives.Divide(kept, _options.Temperature, kept);
        TensorPrimitives.SoftMax(kept, kept);
        float r = NextFloat();
        float cumulative = 0;
        for (int i = 0; i < keep; i++)
        {
            cumulative += kept[i];
            if (r < cumulative) return _ids[i];
        }
        return _ids[keep - 1];
    }

    private void ApplyPenalties(Span<float> logits, ReadOnlySpan<int> history)
    {
        var o = _options;
        if (o.PenaltyLastN == 0 || (o.RepetitionPenalty == 1 && o.FrequencyPenalty == 0 && o.PresencePenalty == 0)) return;
        _counts.Clear();
        int from = Math.Max(0, history.Length - o.PenaltyLastN);
        for (int i = from; i < history.Length; i++)
        {
            int t = history[i];
            if ((uint)t < (uint)logits.Length) _counts[t] = _counts.GetValueOrDefault(t) + 1;
        }
        foreach (var (token, count) in _counts)
        {
            ref float l = ref logits[token];
            l = l > 0 ? l / o.RepetitionPenalty : l * o.RepetitionPenalty;
            l -= count * o.FrequencyPenalty + o.PresencePenalty;
        }
    }

    /// <summary>Moves the <paramref name="k"/> largest of the first <paramref name="n"/> candidates to the front, sorted.</summary>
    private void SortDescending(int k, int n)
    {
        if (k < n)
        {
            // Quickselect the k largest into [0, k), then sort just those.
            int lo = 0, hi = n - 1;
            while (lo < hi)
            {
                float pivot = _values[(lo + hi) >>> 1];
                int i = lo, j = hi;
                while (i <= j)
                {
                    while (_values[i] > pivot) i++;
                    while (_values[j] < pivot) j--;
                    if (i <= j)
                    {
                        (_values[i], _values[j]) = (_values[j], _values[i]);
                        (_ids[i], _ids[j]) = (_ids[j], _ids[i]);
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
        var keys = _values.AsSpan(0, k);
        var items = _ids.AsSpan(0, k);
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
