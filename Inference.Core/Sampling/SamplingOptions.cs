using Inference.Constraints;

namespace Inference.Sampling;

/// <summary>
/// How tokens are chosen and when generation stops. Immutable; every value is validated when set and an invalid one
/// throws <see cref="ArgumentOutOfRangeException"/> naming the option. Defaults follow llama.cpp's.
/// </summary>
/// <remarks>
/// The chain, in order: the repetition penalty over the last <see cref="PenaltyLastN"/> tokens (prompt included, as
/// llama.cpp's repeat_penalty) → frequency and presence penalties over the generated tokens (as OpenAI's) → top-k →
/// top-p → min-p → temperature → a draw from the remaining distribution. Temperature 0 is greedy (argmax after the
/// penalties). Log-probabilities (<see cref="Logprobs"/>) are those of the penalized logits divided by the temperature
/// (1 when greedy), over the whole vocabulary, before the top-k/top-p/min-p cut.
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
    private readonly int? _logprobs;
    private readonly int? _promptLogprobs;

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

    /// <summary>
    /// llama.cpp's repeat_penalty: divides positive (multiplies negative) logits of the tokens among the last
    /// <see cref="PenaltyLastN"/> (prompt included), once whatever their count; 1 disables. Range (0, 10].
    /// </summary>
    public float RepetitionPenalty { get => _repetitionPenalty; init => _repetitionPenalty = value > 0 && value <= 10 ? value : throw Out(nameof(RepetitionPenalty), value, "must be in (0, 10]"); }

    /// <summary>OpenAI's frequency_penalty: subtracted from a token's logit once per occurrence among the generated tokens (never the prompt's). Range [-2, 2].</summary>
    public float FrequencyPenalty { get => _frequencyPenalty; init => _frequencyPenalty = InRange(value, -2, 2, nameof(FrequencyPenalty)); }

    /// <summary>OpenAI's presence_penalty: subtracted from a token's logit if it occurs among the generated tokens (never the prompt's). Range [-2, 2].</summary>
    public float PresencePenalty { get => _presencePenalty; init => _presencePenalty = InRange(value, -2, 2, nameof(PresencePenalty)); }

    /// <summary>llama.cpp's repeat_last_n: how many recent tokens (prompt included) the repetition penalty looks at; 0 disables it.</summary>
    public int PenaltyLastN { get => _penaltyLastN; init => _penaltyLastN = value >= 0 ? value : throw Out(nameof(PenaltyLastN), value, "must be ≥ 0"); }

    /// <summary>
    /// Log-probabilities per generated token: null for none, 0 for the chosen token's only, N for it and the N most
    /// likely alternatives (vLLM's and OpenAI's <c>logprobs</c>). Range [0, 20].
    /// </summary>
    public int? Logprobs { get => _logprobs; init => _logprobs = value is null or (>= 0 and <= MaxLogprobs) ? value : throw Out(nameof(Logprobs), value, $"must be in [0, {MaxLogprobs}]"); }

    /// <summary>
    /// Log-probabilities of the prompt's tokens (each given the tokens before it; the first has none), with the N most
    /// likely alternatives at each position: null for none (vLLM's <c>prompt_logprobs</c>). Range [0, 20].
    /// </summary>
    public int? PromptLogprobs { get => _promptLogprobs; init => _promptLogprobs = value is null or (>= 0 and <= MaxLogprobs) ? value : throw Out(nameof(PromptLogprobs), value, $"must be in [0, {MaxLogprobs}]"); }

    /// <summary>Most alternatives <see cref="Logprobs"/> and <see cref="PromptLogprobs"/> may ask for.</summary>
    public const int MaxLogprobs = 20;

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

    /// <summary>
    /// What the generated text must match (a JSON schema, any JSON object, a GBNF grammar, a regex or a choice of
    /// strings); null leaves it free. Tokens that cannot continue a match are masked out before the penalties and the
    /// chain above, and generation ends once the match is complete and nothing can follow it.
    /// </summary>
    public Constraint? Constraint { get; init; }

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
