namespace Inference.Chat;

/// <summary>One message of a conversation, as a chat template sees it (<c>message['role']</c>, <c>message['content']</c>).</summary>
public sealed record ChatMessage
{
    private readonly string _content = "";

    /// <summary>Creates a message.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="content"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="role"/> is not a defined <see cref="ChatRole"/>.</exception>
    public ChatMessage(ChatRole role, string content)
    {
        Role = role;
        Content = content;
    }

    /// <summary>Who wrote the message.</summary>
    public ChatRole Role
    {
        get;
        init => field = Enum.IsDefined(value) ? value : throw new ArgumentOutOfRangeException(nameof(Role), value, "Role must be a defined ChatRole.");
    }

    /// <summary>The message text.</summary>
    public string Content { get => _content; init => _content = value ?? throw new ArgumentNullException(nameof(Content)); }

    /// <summary>The tool calls of an assistant message (empty otherwise).</summary>
    public IReadOnlyList<ChatToolCall> ToolCalls { get; init => field = value ?? throw new ArgumentNullException(nameof(ToolCalls)); } = [];

    /// <summary>The call a tool message answers (<c>tool_call_id</c>); null on other messages.</summary>
    public string? ToolCallId { get; init; }

    /// <summary>The role as chat templates spell it: <c>system</c>, <c>user</c>, <c>assistant</c> or <c>tool</c>.</summary>
    public string RoleName => RoleNameOf(Role);

    /// <summary>A system message.</summary>
    public static ChatMessage System(string content) => new(ChatRole.System, content);

    /// <summary>A user message.</summary>
    public static ChatMessage User(string content) => new(ChatRole.User, content);

    /// <summary>An assistant message.</summary>
    public static ChatMessage Assistant(string content) => new(ChatRole.Assistant, content);

    /// <summary>An assistant message that calls tools.</summary>
    public static ChatMessage AssistantToolCalls(IReadOnlyList<ChatToolCall> calls, string content = "") => new(ChatRole.Assistant, content) { ToolCalls = calls };

    /// <summary>A tool's result for call <paramref name="toolCallId"/>.</summary>
    public static ChatMessage ToolResult(string toolCallId, string content) => new(ChatRole.Tool, content) { ToolCallId = toolCallId };

    internal static string RoleNameOf(ChatRole role) => role switch
    {
        ChatRole.System => "system",
        ChatRole.User => "user",
        ChatRole.Assistant => "assistant",
        ChatRole.Tool => "tool",
        _ => throw new ArgumentOutOfRangeException(nameof(role), role, null),
    };
}
