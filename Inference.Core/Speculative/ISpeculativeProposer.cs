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

    /// <summary>
    /// Called with every step's chunks before the model runs them: a proposer that keeps state per request (a draft
    /// model's KV) computes the prompt tokens of the chunks now, in the step that computes them for the model, rather
    /// than after the first token. Does nothing by default.
    /// </summary>
    void Prefill(ReadOnlySpan<ScheduledChunk> chunks)
    {
    }

    /// <summary>Forgets whatever the proposer keeps for <paramref name="requestId"/> (the request ended).</summary>
    void Release(long requestId);
}
