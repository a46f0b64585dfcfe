using Inference.Chat;
using Inference.Sampling;

namespace Inference.Extensions.AI;

/// <summary>Options of an <see cref="InferenceChatClient"/>. Immutable.</summary>
public sealed record InferenceChatClientOptions
{
    private readonly SamplingOptions _defaultSampling = new();

    /// <summary>The chat template to use instead of the model's own; null uses the model's (<c>tokenizer.chat_template</c>).</summary>
    public ChatTemplate? Template { get; init; }

    /// <summary>The model id reported in responses and metadata; null uses the GGUF's <c>general.name</c>.</summary>
    public string? ModelId { get; init; }

    /// <summary>Sampling used where a request's <c>ChatOptions</c> says nothing (its values override these).</summary>
    public SamplingOptions DefaultSampling
    {
        get => _defaultSampling;
        init => _defaultSampling = value ?? throw new ArgumentNullException(nameof(DefaultSampling));
    }
}
