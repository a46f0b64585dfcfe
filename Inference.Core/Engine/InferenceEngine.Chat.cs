using Inference.Chat;
using Inference.Sampling;

namespace Inference.Engine;

// Chat: conversations rendered through the model's chat template and tokenized with its special tokens.
public sealed partial class InferenceEngine
{
    private ChatState? _chat;

    /// <summary>The model's name: GGUF <c>general.name</c>, else the file or folder name.</summary>
    public string ModelName => _modelName;

    /// <summary>
    /// The chat template the model ships (GGUF key <c>tokenizer.chat_template</c>), parsed on first use; null when the
    /// model has none.
    /// </summary>
    /// <exception cref="ChatTemplateException">The model's template does not parse.</exception>
    public ChatTemplate? ChatTemplate
    {
        get
        {
            var chat = Chat;
            if (chat.TemplateError is not null) throw new ChatTemplateException("the model's chat template does not parse: " + chat.TemplateError.Message, chat.TemplateError);
            return chat.Template;
        }
    }

    /// <summary>Renders <paramref name="messages"/> into prompt text, ending with the header of the assistant's reply.</summary>
    /// <param name="messages">The conversation so far, oldest first.</param>
    /// <param name="prompt">An explicit template and extra variables; null uses the model's template.</param>
    /// <exception cref="InvalidOperationException">The model has no chat template and none was given.</exception>
    /// <exception cref="ChatTemplateException">The template failed (for example the roles do not alternate).</exception>
    public string RenderChat(IReadOnlyList<ChatMessage> messages, ChatPromptOptions? prompt = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var template = prompt?.Template ?? ChatTemplate
            ?? throw new InvalidOperationException("the model has no chat template (GGUF key tokenizer.chat_template); pass one in ChatPromptOptions.Template");
        return template.Render(messages, new ChatTemplateOptions
        {
            BosToken = Chat.Encoder.BosText,
            EosToken = Chat.Encoder.EosText,
            GenerationPrompt = GenerationPrompt.Add,
            Variables = prompt is { Tools.Count: > 0 } ? ToolCalls.WithTools(prompt.Variables, prompt.Tools) : prompt?.Variables ?? new Dictionary<string, object?>(),
        });
    }

    /// <summary>
    /// The prompt tokens of a conversation: the rendered template with its special-token texts as control tokens and
    /// BOS as the model says (never twice).
    /// </summary>
    /// <remarks>
    /// A multi-turn conversation re-sends its history each turn. Turn N's tokens are a prefix of turn N+1's when the
    /// template renders history the same way each turn and the reply's text tokenizes on its own (templates close a
    /// reply with a special token such as <c>&lt;/s&gt;</c> or <c>&lt;|im_end|&gt;</c>, which keeps the boundary), so
    /// the prefix cache can reuse the earlier turns' KV.
    /// </remarks>
    /// <exception cref="InvalidOperationException">The model has no chat template and none was given.</exception>
    /// <exception cref="ChatTemplateException">The template failed.</exception>
    public int[] TokenizeChat(IReadOnlyList<ChatMessage> messages, ChatPromptOptions? prompt = null) =>
        Chat.Encoder.Encode(RenderChat(messages, prompt));

    /// <summary>Streams the assistant's reply to a conversation, using the model's chat template.</summary>
    /// <exception cref="InvalidOperationException">The model has no chat template.</exception>
    /// <exception cref="ChatTemplateException">The template failed (for example the roles do not alternate).</exception>
    /// <exception cref="ArgumentException">The prompt does not fit the context (and truncation is off).</exception>
    public GenerationStream ChatAsync(IReadOnlyList<ChatMessage> messages, SamplingOptions? sampling = null, CancellationToken cancellationToken = default) =>
        ChatAsync(messages, sampling, prompt: null, cancellationToken);

    /// <summary>Streams the assistant's reply to a conversation, with an explicit template or extra template variables.</summary>
    /// <exception cref="InvalidOperationException">The model has no chat template and none was given.</exception>
    /// <exception cref="ChatTemplateException">The template failed (for example the roles do not alternate).</exception>
    /// <exception cref="ArgumentException">The prompt does not fit the context (and truncation is off).</exception>
    public GenerationStream ChatAsync(IReadOnlyList<ChatMessage> messages, SamplingOptions? sampling, ChatPromptOptions? prompt, CancellationToken cancellationToken = default) =>
        GenerateAsync(TokenizeChat(messages, prompt), sampling, cancellationToken);

    private ChatState Chat => LazyInitializer.EnsureInitialized(ref _chat, () => ChatState.Create(this));

    private sealed class ChatState
    {
        public required ChatPromptEncoder Encoder { get; init; }
        public ChatTemplate? Template { get; init; }
        public ChatTemplateException? TemplateError { get; init; }

        public static ChatState Create(InferenceEngine engine)
        {
            var encoder = ChatPromptEncoder.Create(engine._metadata, engine.Tokenizer);
            string? source = engine._metadata.GetString("tokenizer.chat_template");
            if (string.IsNullOrEmpty(source)) return new ChatState { Encoder = encoder };
            try
            {
                return new ChatState { Encoder = encoder, Template = Inference.Chat.ChatTemplate.Parse(source) };
            }
            catch (ChatTemplateException e)
            {
                return new ChatState { Encoder = encoder, TemplateError = e };
            }
        }
    }
}
