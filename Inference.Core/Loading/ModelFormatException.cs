namespace Inference.Loading;

/// <summary>
/// Thrown when a model file is malformed, truncated, or describes something this library does not support.
/// The message is one line naming the file, the byte offset and what was expected.
/// </summary>
public sealed class ModelFormatException : Exception
{
    /// <summary>Creates the exception for <paramref name="filePath"/> at byte <paramref name="offset"/>.</summary>
    /// <param name="filePath">The file that failed to load.</param>
    /// <param name="offset">The byte offset where the problem was found, or -1 when it concerns the whole file.</param>
    /// <param name="reason">What was wrong, as a short phrase.</param>
    public ModelFormatException(string filePath, long offset, string reason)
        : base(offset >= 0 ? $"{filePath}: at offset {offset}: {reason}" : $"{filePath}: {reason}")
    {
        FilePath = filePath;
        Offset = offset;
        Reason = reason;
    }

    /// <summary>The file that failed to load.</summary>
    public string FilePath { get; }

    /// <summary>The byte offset of the problem, or -1 when it concerns the whole file.</summary>
    public long Offset { get; }

    /// <summary>What was wrong, without the file name and offset.</summary>
    public string Reason { get; }
}
