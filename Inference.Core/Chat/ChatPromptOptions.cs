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

    /// <summary>
    /// Tools the model may call, rendered by the template as its <c>tools</c> variable (OpenAI's
    /// <c>{"type":"function","function":{"name","description","parameters"}}</c> objects). Empty renders none.
    /// </summary>
    public IReadOnlyList<ChatTool> Tools { get; init => field = value ?? throw new ArgumentNullException(nameof(Tools)); } = [];
}
