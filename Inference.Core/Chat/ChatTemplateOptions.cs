namespace Inference.Chat;

/// <summary>Whether a rendered chat prompt ends with the header that opens the assistant's reply.</summary>
public enum GenerationPrompt
{
    /// <summary>Append it (<c>add_generation_prompt = true</c>): the prompt asks the model to answer.</summary>
    Add,
    /// <summary>Leave it out (<c>add_generation_prompt = false</c>): the conversation is rendered as it stands.</summary>
    Omit,
}

/// <summary>The variables a chat template is rendered with besides <c>messages</c>. Immutable.</summary>
public sealed record ChatTemplateOptions
{
    private readonly string _bosToken = "";
    private readonly string _eosToken = "";
    private readonly IReadOnlyDictionary<string, object?> _variables = new Dictionary<string, object?>();

    /// <summary>The text of the model's BOS token (<c>bos_token</c>), for example <c>&lt;s&gt;</c>.</summary>
    public string BosToken { get => _bosToken; init => _bosToken = value ?? throw new ArgumentNullException(nameof(BosToken)); }

    /// <summary>The text of the model's EOS token (<c>eos_token</c>), for example <c>&lt;/s&gt;</c>.</summary>
    public string EosToken { get => _eosToken; init => _eosToken = value ?? throw new ArgumentNullException(nameof(EosToken)); }

    /// <summary>Whether to open the assistant's turn at the end (<c>add_generation_prompt</c>).</summary>
    public GenerationPrompt GenerationPrompt { get; init; } = GenerationPrompt.Add;

    /// <summary>
    /// Extra variables (for example <c>tools</c>). Values may be null, strings, booleans, integers, doubles, lists and
    /// string-keyed dictionaries of those.
    /// </summary>
    public IReadOnlyDictionary<string, object?> Variables
    {
        get => _variables;
        init => _variables = value ?? throw new ArgumentNullException(nameof(Variables));
    }
}
