namespace Inference.Speculative;

/// <summary>Where proposed tokens come from (vLLM's <c>speculative_config.method</c>).</summary>
public enum SpeculativeMethod
{
    /// <summary>
    /// Prompt lookup (vLLM's <c>ngram</c>, llama.cpp's lookup decoding): the tokens that followed the latest earlier
    /// occurrence of the sequence's last n tokens, n from <see cref="SpeculativeOptions.PromptLookupMax"/> down to
    /// <see cref="SpeculativeOptions.PromptLookupMin"/>. No second model.
    /// </summary>
    NGram,

    /// <summary>A smaller (or quantized) model with the same vocabulary proposes its greedy continuation (<see cref="SpeculativeOptions.DraftModel"/>).</summary>
    DraftModel,
}

/// <summary>
/// Speculative decoding: a cheap proposer guesses the next <see cref="NumSpeculativeTokens"/> tokens of a request and
/// one forward pass of the model computes the logits after each guess; the guesses the model's own sampling agrees with
/// are kept, so a step can produce several tokens. Greedy output is the same as without speculation, and sampled output
/// follows the same distribution. Immutable; invalid values throw when set.
/// </summary>
/// <example>
/// <code>
/// new EngineOptions { Speculative = SpeculativeOptions.NGram(numSpeculativeTokens: 4) }
/// new EngineOptions { Speculative = SpeculativeOptions.Draft("model-q8_0.gguf", numSpeculativeTokens: 4) }
/// </code>
/// </example>
public sealed record SpeculativeOptions
{
    /// <summary>Most tokens proposed per step.</summary>
    public const int MaxSpeculativeTokens = 32;

    /// <summary>Longest n-gram prompt lookup can match.</summary>
    public const int MaxPromptLookup = 64;

    /// <summary>The proposer. Default <see cref="SpeculativeMethod.NGram"/>.</summary>
    public SpeculativeMethod Method
    {
        get;
        init => field = Enum.IsDefined(value) ? value : throw Out(nameof(Method), value, "must be NGram or DraftModel");
    } = SpeculativeMethod.NGram;

    /// <summary>
    /// The draft model for <see cref="SpeculativeMethod.DraftModel"/> (vLLM's <c>speculative_config.model</c>, the CLI's
    /// <c>--draft-model</c>): a .gguf file or a Hugging Face checkpoint folder with the same vocabulary as the model.
    /// </summary>
    public string? DraftModel
    {
        get;
        init => field = value is null || value.Trim().Length > 0 ? value : throw new ArgumentException("DraftModel must be a path or null.", nameof(DraftModel));
    }

    /// <summary>Tokens proposed per step (vLLM's <c>num_speculative_tokens</c>), 1 to 32. Default 4.</summary>
    public int NumSpeculativeTokens
    {
        get;
        init => field = value is >= 1 and <= MaxSpeculativeTokens ? value : throw Out(nameof(NumSpeculativeTokens), value, $"must be in [1, {MaxSpeculativeTokens}]");
    } = 4;

    /// <summary>Shortest n-gram prompt lookup matches (vLLM's <c>prompt_lookup_min</c>), 1 to 64. Default 1.</summary>
    public int PromptLookupMin
    {
        get;
        init => field = value is >= 1 and <= MaxPromptLookup ? value : throw Out(nameof(PromptLookupMin), value, $"must be in [1, {MaxPromptLookup}]");
    } = 1;

    /// <summary>Longest n-gram prompt lookup matches first (vLLM's <c>prompt_lookup_max</c>), 1 to 64, at least <see cref="PromptLookupMin"/>. Default 3.</summary>
    public int PromptLookupMax
    {
        get;
        init => field = value is >= 1 and <= MaxPromptLookup ? value : throw Out(nameof(PromptLookupMax), value, $"must be in [1, {MaxPromptLookup}]");
    } = 3;

    /// <summary>
    /// With a draft model: the draft stops proposing at a token whose probability under the draft (softmax of its logits)
    /// is below this (llama.cpp's <c>--draft-p-min</c>), so unlikely proposals cost neither draft steps nor rows of the
    /// verification. 0 to 1; default 0 (always propose <see cref="NumSpeculativeTokens"/>).
    /// </summary>
    public float DraftMinProbability
    {
        get;
        init => field = value is >= 0 and <= 1 ? value : throw Out(nameof(DraftMinProbability), value, "must be in [0, 1]");
    }

    /// <summary>
    /// With a draft model: the draft proposes no further token after one whose logit exceeds the draft's runner-up by
    /// less than this (the log of the ratio of their probabilities, in nats). Such a near tie is where the model most
    /// often picks another token (on the benchmark model about half the time, against 1-4% elsewhere), so the tokens
    /// the draft would add after it are likely wasted draft steps and rows of the verification; the near-tie token itself is
    /// still proposed. With it, a larger <see cref="NumSpeculativeTokens"/> pays: the draft runs on while it is sure.
    /// 0 or more, finite; default 0 (off).
    /// </summary>
    public float DraftStopMargin
    {
        get;
        init => field = value >= 0 && float.IsFinite(value) ? value : throw Out(nameof(DraftStopMargin), value, "must be finite and not negative");
    }

    /// <summary>Prompt lookup proposing <paramref name="numSpeculativeTokens"/> tokens per step.</summary>
    public static SpeculativeOptions NGram(int numSpeculativeTokens = 4) => new() { Method = SpeculativeMethod.NGram, NumSpeculativeTokens = numSpeculativeTokens };

    /// <summary>The draft model at <paramref name="path"/> proposing <paramref name="numSpeculativeTokens"/> tokens per step.</summary>
    public static SpeculativeOptions Draft(string path, int numSpeculativeTokens = 4) => new() { Method = SpeculativeMethod.DraftModel, DraftModel = path, NumSpeculativeTokens = numSpeculativeTokens };

    /// <summary>Checks the options that depend on each other.</summary>
    /// <exception cref="ArgumentException">A draft model without <see cref="SpeculativeMethod.DraftModel"/> or the reverse, or <see cref="PromptLookupMin"/> above <see cref="PromptLookupMax"/>.</exception>
    public void Validate()
    {
        if (Method == SpeculativeMethod.DraftModel && DraftModel is null)
            throw new ArgumentException("speculative decoding with a draft model needs DraftModel (--draft-model PATH)");
        if (Method == SpeculativeMethod.NGram && DraftModel is not null)
            throw new ArgumentException("n-gram speculation takes no draft model; set Method = DraftModel to use one");
        if (PromptLookupMin > PromptLookupMax)
            throw new ArgumentException($"PromptLookupMin ({PromptLookupMin}) must not exceed PromptLookupMax ({PromptLookupMax})");
    }

    private static ArgumentOutOfRangeException Out(string name, object? value, string rule) => new(name, value, $"{name} {rule}.");
}
