namespace Inference.Search;

/// <summary>How <c>InferenceEngine.BeamSearchAsync</c> searches. Immutable; values are validated when set.</summary>
public sealed record BeamSearchOptions
{
    private readonly int _beamWidth = 4;
    private readonly int _maxTokens = 64;
    private readonly float _lengthPenalty = 1f;

    /// <summary>Beams kept at each step, and beams returned. Range [1, 64].</summary>
    public int BeamWidth { get => _beamWidth; init => _beamWidth = value is >= 1 and <= 64 ? value : throw new ArgumentOutOfRangeException(nameof(BeamWidth), value, "BeamWidth must be in [1, 64]."); }

    /// <summary>Most tokens a beam generates. Range [1, 100,000].</summary>
    public int MaxTokens { get => _maxTokens; init => _maxTokens = value is >= 1 and <= 100_000 ? value : throw new ArgumentOutOfRangeException(nameof(MaxTokens), value, "MaxTokens must be in [1, 100000]."); }

    /// <summary>
    /// Beams are ranked by cumulative log-probability / (generated tokens ^ LengthPenalty), as vLLM and Hugging Face do:
    /// above 1 favours longer beams, 0 ranks by the plain sum. Range [-10, 10].
    /// </summary>
    public float LengthPenalty { get => _lengthPenalty; init => _lengthPenalty = value is >= -10 and <= 10 ? value : throw new ArgumentOutOfRangeException(nameof(LengthPenalty), value, "LengthPenalty must be in [-10, 10]."); }

    /// <summary>Whether an end-of-generation token ends a beam (it is then complete); false keeps searching through it.</summary>
    public bool StopAtEndOfSequence { get; init; } = true;

    /// <summary>The score of a beam of <paramref name="length"/> tokens and cumulative log-probability <paramref name="logprob"/>.</summary>
    public double Score(double logprob, int length) => logprob / Math.Pow(Math.Max(1, length), LengthPenalty);
}

/// <summary>One beam: generated tokens, their text and scores.</summary>
/// <param name="TokenIds">The generated tokens (an ending end-of-generation token included).</param>
/// <param name="Text">Their text.</param>
/// <param name="CumulativeLogprob">Sum of the tokens' log-probabilities (log-softmax of the raw logits).</param>
/// <param name="Score">The rank: <see cref="BeamSearchOptions.Score"/>.</param>
/// <param name="Finished">Whether the beam ended with an end-of-generation token.</param>
public sealed record Beam(IReadOnlyList<int> TokenIds, string Text, double CumulativeLogprob, double Score, bool Finished);

/// <summary>The result of a beam search.</summary>
/// <param name="Beams">The best beams, best first (at most the beam width).</param>
/// <param name="PeakUsedBlockCount">The most KV blocks in use during the search (all sequences of the engine).</param>
public sealed record BeamSearchResult(IReadOnlyList<Beam> Beams, int PeakUsedBlockCount);
