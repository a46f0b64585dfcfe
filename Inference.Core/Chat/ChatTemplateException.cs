namespace Inference.Chat;

/// <summary>
/// A chat template could not be parsed or rendered: a syntax error, an unsupported construct, a type error, or the
/// template called <c>raise_exception(...)</c> (for example because the roles do not alternate).
/// </summary>
public sealed class ChatTemplateException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ChatTemplateException(string message) : base(message) { }

    /// <summary>Creates the exception with an inner exception.</summary>
    public ChatTemplateException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>Creates the exception with a default message.</summary>
    public ChatTemplateException() : base("the chat template failed") { }

    /// <summary>Whether the template itself raised the error through <c>raise_exception(...)</c>.</summary>
    public bool RaisedByTemplate { get; init; }
}
