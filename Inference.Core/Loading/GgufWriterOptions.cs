namespace Inference.Loading;

/// <summary>Options of a <see cref="GgufWriter"/>.</summary>
public sealed record GgufWriterOptions
{
    private readonly uint _alignment = GgufWriter.DefaultAlignment;

    /// <summary>
    /// Alignment of the data section and of every tensor offset: a power of two from 1 to <see cref="GgufFile.MaxAlignment"/>.
    /// Defaults to 32, the GGUF default.
    /// </summary>
    public uint Alignment
    {
        get => _alignment;
        init
        {
            if (value == 0 || (value & (value - 1)) != 0 || value > GgufFile.MaxAlignment)
                throw new ArgumentOutOfRangeException(nameof(Alignment), value, $"alignment must be a power of two from 1 to {GgufFile.MaxAlignment}");
            _alignment = value;
        }
    }

    /// <summary>When to write the <c>general.alignment</c> key. Defaults to <see cref="AlignmentKeyMode.WhenNotDefault"/>.</summary>
    public AlignmentKeyMode AlignmentKey { get; init; } = AlignmentKeyMode.WhenNotDefault;
}

// NOTE: the two small enums below only make sense together with GgufWriter, so they live beside its options.

/// <summary>When a <see cref="GgufWriter"/> writes the <c>general.alignment</c> key.</summary>
public enum AlignmentKeyMode
{
    /// <summary>Only when the alignment differs from the GGUF default of 32.</summary>
    WhenNotDefault,
    /// <summary>Always, as the first metadata entry.</summary>
    Always,
}

/// <summary>Whether a writer disposes the stream it was given.</summary>
public enum StreamOwnership
{
    /// <summary>The caller keeps ownership; the stream stays open.</summary>
    LeaveOpen,
    /// <summary>The writer disposes the stream when it is disposed.</summary>
    Dispose,
}
