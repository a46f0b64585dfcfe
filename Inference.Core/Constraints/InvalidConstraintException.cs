namespace Inference.Constraints;

/// <summary>
/// A JSON schema, grammar, regular expression or choice list that cannot be used to constrain generation. The message
/// is one line naming what is wrong and where.
/// </summary>
public sealed class InvalidConstraintException : ArgumentException
{
    /// <summary>Creates the exception.</summary>
    public InvalidConstraintException(string message) : base(message) { }

    /// <summary>Creates the exception with its cause.</summary>
    public InvalidConstraintException(string message, Exception? innerException) : base(message, innerException) { }
}
