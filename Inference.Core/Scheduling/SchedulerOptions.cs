namespace Inference.Scheduling;

/// <summary>Limits and policy of the <see cref="Scheduler"/>. Immutable; every property is validated when set.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Most requests running (holding KV blocks) at once. Default 64.</summary>
    public int MaxNumSeqs
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            field = value;
        }
    } = 64;

    /// <summary>Token budget of one step: the most tokens computed together in one forward pass. Default 2048.</summary>
    public int MaxNumBatchedTokens
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            field = value;
        }
    } = 2048;

    /// <summary>Whether long prompts are split across steps. Default enabled.</summary>
    public ChunkedPrefillMode ChunkedPrefill
    {
        get;
        init
        {
            if (!Enum.IsDefined(value)) throw new ArgumentOutOfRangeException(nameof(value), value, "Unknown chunked prefill mode.");
            field = value;
        }
    } = ChunkedPrefillMode.Enabled;

    /// <summary>
    /// With chunked prefill, the most tokens one request may compute in a step (0: no limit beyond the budget), so that
    /// several long prompts share a step instead of one taking all of it. Default 0.
    /// </summary>
    public int LongPrefillTokenThreshold
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            field = value;
        }
    }

    /// <summary>Admission and preemption order. Default <see cref="SchedulingPolicy.FirstComeFirstServed"/>.</summary>
    public SchedulingPolicy Policy
    {
        get;
        init
        {
            if (!Enum.IsDefined(value)) throw new ArgumentOutOfRangeException(nameof(value), value, "Unknown scheduling policy.");
            field = value;
        }
    } = SchedulingPolicy.FirstComeFirstServed;
}
