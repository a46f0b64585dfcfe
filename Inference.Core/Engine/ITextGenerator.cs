using Inference.Chat;
using Inference.Sampling;

namespace Inference.Engine;

/// <summary>
/// What a front end (an HTTP server, an <c>IChatClient</c>) needs from whatever generates text: tokenize, render a
/// conversation, stream a continuation. <see cref="InferenceEngine"/> implements it in-process; a cluster client
/// (<c>Inference.Cluster</c>) implements it over remote engine replicas.
/// </summary>
public interface ITextGenerator
{
    /// <summary>The model's name (what <c>/v1/models</c> reports by default).</summary>
    string ModelName { get; }

    /// <summary>Tokenizes a prompt as <see cref="InferenceEngine.Tokenize"/> does (BOS as the model says).</summary>
    Task<int[]> TokenizeAsync(string prompt, CancellationToken cancellationToken = default);

    /// <summary>The prompt tokens of a conversation, as <see cref="InferenceEngine.TokenizeChat"/> computes them.</summary>
    /// <exception cref="InvalidOperationException">The model has no chat template and none was given.</exception>
    /// <exception cref="ChatTemplateException">The template failed.</exception>
    Task<int[]> TokenizeChatAsync(IReadOnlyList<ChatMessage> messages, ChatPromptOptions? prompt = null, CancellationToken cancellationToken = default);

    /// <summary>
    /// The model's own chat template (what <see cref="InferenceEngine.ChatTemplate"/> returns); null when it has none.
    /// Front ends read it to learn the template's tool-call format.
    /// </summary>
    /// <exception cref="ChatTemplateException">The model's template does not parse.</exception>
    Task<ChatTemplate?> GetChatTemplateAsync(CancellationToken cancellationToken = default);

    /// <summary>Streams the continuation of a tokenized prompt (cold: it starts when enumerated).</summary>
    GenerationStream GenerateAsync(IReadOnlyList<int> promptTokens, SamplingOptions? sampling = null, CancellationToken cancellationToken = default);
}
