namespace Inference.Chat;

/// <summary>
/// A chat template: the Jinja program a model ships (GGUF key <c>tokenizer.chat_template</c>) that turns a conversation
/// into the prompt text the model was trained on. Parsed once, rendered many times; immutable and thread-safe.
/// </summary>
/// <remarks>
/// <para>
/// Implements the subset of Jinja that the templates of Llama 2/3, Mistral, ChatML/Qwen2, Phi-3, Gemma, Zephyr and
/// their kin use: <c>{{ }}</c>, <c>{% if/elif/else %}</c>, <c>{% for %}</c> with <c>loop.*</c> and an optional
/// <c>if</c> filter, <c>{% set %}</c> (also <c>namespace()</c> attributes and block capture), <c>{% macro %}</c>,
/// whitespace control, Python-like operators, string/dict/list methods (<c>strip</c>, <c>startswith</c>,
/// <c>get</c>, <c>items</c>, …), the common filters and tests, and <c>raise_exception</c>. Whitespace follows Hugging
/// Face's <c>apply_chat_template</c> (<c>trim_blocks</c> and <c>lstrip_blocks</c> on).
/// </para>
/// <para>Template variables: <c>messages</c> (a list of dicts with <c>role</c> and <c>content</c>), <c>bos_token</c>,
/// <c>eos_token</c>, <c>add_generation_prompt</c>, plus <see cref="ChatTemplateOptions.Variables"/>.</para>
/// </remarks>
public sealed class ChatTemplate
{
    private readonly IReadOnlyList<TemplateNode> _nodes;

    private ChatTemplate(string source, IReadOnlyList<TemplateNode> nodes)
    {
        Source = source;
        _nodes = nodes;
    }

    /// <summary>The template text.</summary>
    public string Source { get; }

    /// <summary>Parses a template.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="source"/> is null.</exception>
    /// <exception cref="ChatTemplateException">The template has a syntax error or uses an unsupported statement.</exception>
    public static ChatTemplate Parse(string source)
    {
        ArgumentNullException.ThrowIfNull(source);
        try
        {
            return new ChatTemplate(source, TemplateParser.Parse(source));
        }
        catch (InsufficientExecutionStackException e)
        {
            throw new ChatTemplateException("the chat template nests too deeply", e);
        }
    }

    /// <summary>Renders <paramref name="messages"/> into prompt text.</summary>
    /// <param name="messages">The conversation so far.</param>
    /// <param name="options">BOS/EOS texts, whether to add the generation prompt, extra variables; null for defaults.</param>
    /// <exception cref="ArgumentNullException"><paramref name="messages"/> or one of its items is null.</exception>
    /// <exception cref="ChatTemplateException">
    /// Rendering failed: a type error, an unsupported filter, or the template raised an exception (for example because
    /// the roles do not alternate; then <see cref="ChatTemplateException.RaisedByTemplate"/> is true).
    /// </exception>
    public string Render(IReadOnlyList<ChatMessage> messages, ChatTemplateOptions? options = null) =>
        Render(messages, options, TemplateLimits.Default);

    /// <summary>Renders within <paramref name="limits"/> (the defaults, or tighter ones in tests).</summary>
    internal string Render(IReadOnlyList<ChatMessage> messages, ChatTemplateOptions? options, TemplateLimits limits)
    {
        ArgumentNullException.ThrowIfNull(messages);
        options ??= new ChatTemplateOptions();
        var messageValues = new List<object?>(messages.Count);
        foreach (var message in messages)
        {
            if (message is null) throw new ArgumentNullException(nameof(messages), "a message is null");
            var value = new Dictionary<string, object?>(StringComparer.Ordinal)
            {
                ["role"] = message.RoleName,
                ["content"] = message.Content,
            };
            if (message.ToolCalls.Count > 0)
            {
                var calls = new List<object?>(message.ToolCalls.Count);
                foreach (var call in message.ToolCalls)
                    calls.Add(new Dictionary<string, object?>(StringComparer.Ordinal)
                    {
                        ["id"] = call.Id,
                        ["type"] = "function",
                        ["function"] = new Dictionary<string, object?>(StringComparer.Ordinal)
                        {
                            ["name"] = call.Name,
                            // NOTE: templates expect the arguments as a mapping (they apply tojson); text that is not JSON stays text.
                            ["arguments"] = TemplateValues.FromJsonText(call.Arguments),
                        },
                    });
                value["tool_calls"] = calls;
            }
            if (message.ToolCallId is not null) value["tool_call_id"] = message.ToolCallId;
            messageValues.Add(value);
        }
        var globals = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (name, value) in options.Variables) globals[name] = TemplateValues.FromClr(value);
        globals["messages"] = messageValues;
        globals["bos_token"] = options.BosToken;
        globals["eos_token"] = options.EosToken;
        globals["add_generation_prompt"] = options.GenerationPrompt == GenerationPrompt.Add;
        try
        {
            return TemplateEvaluator.Render(_nodes, globals, limits);
        }
        catch (InvalidCastException e)
        {
            throw new ChatTemplateException("chat template type error: " + e.Message, e);
        }
        catch (OverflowException e)
        {
            throw new ChatTemplateException("chat template arithmetic overflow: " + e.Message, e);
        }
        catch (InsufficientExecutionStackException e)
        {
            throw new ChatTemplateException("the chat template nests too deeply to render", e);
        }
        catch (ArgumentOutOfRangeException e) when (e.ParamName is "requiredLength" or "capacity" or "repeatCount" or "valueCount")
        {
            // A builder refused to grow past TemplateLimits.MaxStringChars.
            throw new ChatTemplateException($"the chat template builds a string over {TemplateLimits.MaxStringChars} characters", e);
        }
    }

    /// <inheritdoc />
    public override string ToString() => Source;
}
