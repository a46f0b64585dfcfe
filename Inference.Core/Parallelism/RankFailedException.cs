namespace Inference.Parallelism;

/// <summary>
/// A rank of a parallel layout failed during a step: every other rank left the collective it was in (none is left
/// waiting), and the step failed with this exception, whose <see cref="Exception.InnerException"/> is the rank's error.
/// </summary>
public sealed class RankFailedException : Exception
{
    /// <summary>Creates the exception for <paramref name="rank"/>'s <paramref name="error"/>.</summary>
    public RankFailedException(int rank, Exception error)
        : base($"rank {rank} of the parallel layout failed: {error.Message}", error)
    {
        Rank = rank;
    }

    /// <summary>The rank that failed (its index in the layout's grid).</summary>
    public int Rank { get; }
}

/// <summary>What a rank throws when it leaves a collective because another rank failed (<see cref="RankGroup.Abort"/>).</summary>
public sealed class RankAbortedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public RankAbortedException() : base("another rank of the group failed; the collective was abandoned")
    {
    }
}
