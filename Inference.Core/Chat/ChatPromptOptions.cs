namespace Inference.Chat;

/// <summary>How a conversation becomes a prompt in <c>InferenceEngine.ChatAsync</c>. Immutable.</summary>
public sealed record ChatPromptOptions
{
    private readonly IReadOnlyDictionary<string, object?> _variables = new Dictionary<string, object?>();

    /// <summary>The template to use instead of the model's own (<c>tokenizer.chat_template</c>); null uses the model's.</summary>
    public ChatTemplate? Template { get; init; }

    /// <summary>Extra template variables (for example <c>tools</c>); see <see cref="ChatTemplateOptions.Variables"/>.</summary>
    public IReadOnlyDictionary<string, object?> Variables
    {
        get => _variables;
        init => _variables = value ?? throw new ArgumentNullException(nameof(Variables));
    }
}
