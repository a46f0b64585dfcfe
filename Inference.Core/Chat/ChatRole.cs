namespace Inference.Chat;

/// <summary>Who wrote a <see cref="ChatMessage"/>.</summary>
public enum ChatRole
{
    /// <summary>Instructions that frame the conversation (<c>"system"</c> in templates).</summary>
    System,
    /// <summary>The person talking to the model (<c>"user"</c>).</summary>
    User,
    /// <summary>The model (<c>"assistant"</c>).</summary>
    Assistant,
    /// <summary>The result of a tool call (<c>"tool"</c>).</summary>
    Tool,
}
