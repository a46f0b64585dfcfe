namespace Inference.Scheduling;

/// <summary>Whether a long prompt may be computed over several steps.</summary>
public enum ChunkedPrefillMode
{
    /// <summary>A prompt is split to fit each step's token budget, so running decodes are never stalled by it.</summary>
    Enabled,

    /// <summary>A prompt is computed in one step; it waits until the whole remainder fits the token budget.</summary>
    Disabled,
}
