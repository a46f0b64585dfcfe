namespace Inference.Sampling;

/// <summary>
/// How tokens are chosen and when generation stops. Immutable; every value is validated when set and an invalid one
/// throws <see cref="ArgumentOutOfRangeException"/> naming the option. Defaults follow llama.cpp's.
/// </summary>
/// <remarks>
/// The chain, in order: repetition/frequency/presence penalties over the last <see cref="PenaltyLastN"/> tokens →
/// top-k → top-p → min-p → temperature → a draw from the remaining distribution. Temperature 0 is greedy (argmax after
/// the penalties).
/// </remarks>
public sealed record SamplingOptions
{
    private readonly float _temperature = 0.8f;
    private readonly int _topK = 40;
    private readonly float _topP = 0.95f;
    private readonly float _minP = 0.05f;
    private readonly float _repetitionPenalty = 1f;
    private readonly float _frequencyPenalty;
    private readonly float _presencePenalty;
    private readonly int _penaltyLastN = 64;
    private readonly int _maxTokens = 256;
    private readonly IReadOnlyList<string> _stopStrings = [];

    /// <summary>Greedy decoding: always the most likely token.</summary>
    public static SamplingOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>Softmax temperature; 0 means greedy. Range [0, 100].</summary>
    public float Temperature { get => _temperature; init => _temperature = InRange(value, 0, 100, nameof(Temperature)); }

    /// <summary>Keep only the K most likely tokens; 0 keeps all.</summary>
    public int TopK { get => _topK; init => _topK = value >= 0 ? value : throw Out(nameof(TopK), value, "must be ≥ 0"); }

    /// <summary>Keep the smallest set of tokens whose probability mass reaches P; 1 keeps all. Range (0, 1].</summary>
    public float TopP { get => _topP; init => _topP = value > 0 && value <= 1 ? value : throw Out(nameof(TopP), value, "must be in (0, 1]"); }

    /// <summary>Drop tokens less likely than MinP × the top token's probability; 0 keeps all. Range [0, 1].</summary>
    public float MinP { get => _minP; init => _minP = InRange(value, 0, 1, nameof(MinP)); }

    /// <summary>Divides positive (multiplies negative) logits of recently seen tokens; 1 disables. Range (0, 10].</summary>
    public float RepetitionPenalty { get => _repetitionPenalty; init => _repetitionPenalty = value > 0 && value <= 10 ? value : throw Out(nameof(RepetitionPenalty), value, "must be in (0, 10]"); }

    /// <summary>Subtracted from a token's logit once per recent occurrence. Range [-2, 2].</summary>
    public float FrequencyPenalty { get => _frequencyPenalty; init => _frequencyPenalty = InRange(value, -2, 2, nameof(FrequencyPenalty)); }

    /// <summary>Subtracted from a token's logit if it occurred recently. Range [-2, 2].</summary>
    public float PresencePenalty { get => _presencePenalty; init => _presencePenalty = InRange(value, -2, 2, nameof(PresencePenalty)); }

    /// <summary>How many recent tokens (prompt included) the penalties look at; 0 disables them.</summary>
    public int PenaltyLastN { get => _penaltyLastN; init => _penaltyLastN = value >= 0 ? value : throw Out(nameof(PenaltyLastN), value, "must be ≥ 0"); }

    /// <summary>Seed of the random draw; the same seed, prompt and options give the same text. Null picks one.</summary>
    public ulong? Seed { get; init; }

    /// <summary>Most tokens to generate. Range [1, 1,000,000].</summary>
    public int MaxTokens { get => _maxTokens; init => _maxTokens = value is >= 1 and <= 1_000_000 ? value : throw Out(nameof(MaxTokens), value, "must be in [1, 1000000]"); }

    /// <summary>Generation stops when the text contains one of these; the stop string itself is not returned.</summary>
    public IReadOnlyList<string> StopStrings
    {
        get => _stopStrings;
        init
        {
            ArgumentNullException.ThrowIfNull(value, nameof(StopStrings));
            foreach (var s in value)
                if (string.IsNullOrEmpty(s)) throw Out(nameof(StopStrings), s, "must not contain null or empty strings");
            _stopStrings = value.ToArray();
        }
    }

    /// <summary>What to do when the model produces an end-of-generation token.</summary>
    public EndOfSequenceHandling EndOfSequence { get; init; } = EndOfSequenceHandling.Stop;

    private static float InRange(float value, float min, float max, string name) =>
        value >= min && value <= max ? value : throw Out(name, value, $"must be in [{min}, {max}]");

    private static ArgumentOutOfRangeException Out(string name, object? value, string rule) =>
        new(name, value, $"{name} {rule}.");
}

/// <summary>What generation does on an end-of-generation token.</summary>
public enum EndOfSequenceHandling
{
    /// <summary>Stop (the token is not returned).</summary>
    Stop,
    /// <summary>Keep generating until another stop condition.</summary>
    Ignore,
}
