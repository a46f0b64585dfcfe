using Inference.Scheduling;

namespace Inference.Speculative;

/// <summary>
/// Proposes the next tokens of running requests, before the step that verifies them. Owned by the engine thread.
/// </summary>
internal interface ISpeculativeProposer : IDisposable
{
    /// <summary>
    /// Sets proposed tokens on each of <paramref name="requests"/> (<see cref="SchedulerRequest.SetSpeculativeTokens"/>),
    /// at most <paramref name="limits"/>[i] for request i, possibly none.
    /// </summary>
    void Propose(IReadOnlyList<SchedulerRequest> requests, ReadOnlySpan<int> limits);

    /// <summary>Forgets whatever the proposer keeps for <paramref name="requestId"/> (the request ended).</summary>
    void Release(long requestId);
}
