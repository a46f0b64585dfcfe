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

    /// <summary>The role as chat templates spell it: <c>system</c>, <c>user</c>, <c>assistant</c> or <c>tool</c>.</summary>
    public string RoleName => RoleNameOf(Role);

    /// <summary>A system message.</summary>
    public static ChatMessage System(string content) => new(ChatRole.System, content);

    /// <summary>A user message.</summary>
    public static ChatMessage User(string content) => new(ChatRole.User, content);

    /// <summary>An assistant message.</summary>
    public static ChatMessage Assistant(string content) => new(ChatRole.Assistant, content);

    internal static string RoleNameOf(ChatRole role) => role switch
    {
        ChatRole.System => "system",
        ChatRole.User => "user",
        ChatRole.Assistant => "assistant",
        ChatRole.Tool => "tool",
        _ => throw new ArgumentOutOfRangeException(nameof(role), role, null),
    };
}
