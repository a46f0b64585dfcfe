namespace Inference.Speculative;

/// <summary>The draft model cannot propose tokens for the model: its vocabulary differs.</summary>
public sealed class DraftModelMismatchException : ArgumentException
{
    /// <summary>Creates the exception with a one-line <paramref name="message"/>.</summary>
    public DraftModelMismatchException(string message) : base(message)
    {
    }
}
