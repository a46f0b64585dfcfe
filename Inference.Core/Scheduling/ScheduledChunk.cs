namespace Inference.Scheduling;

/// <summary>
/// One request's work in a step: compute the keys, values (and, when <see cref="SamplesToken"/>, the logits) of
/// tokens at positions <see cref="StartPosition"/> .. <see cref="StartPosition"/> + <see cref="TokenCount"/> − 1.
/// </summary>
/// <param name="Request">The request; its <see cref="SchedulerRequest.TokenIds"/> hold the tokens.</param>
/// <param name="StartPosition">First position computed (tokens before it are in the KV cache).</param>
/// <param name="TokenCount">Tokens computed this step.</param>
/// <param name="SamplesToken">
/// Whether the chunk reaches the request's last known token, so the engine samples the next token from its logits and
/// passes it to <see cref="Scheduler.Update(SchedulerRequest, int)"/>. False for a partial prefill chunk.
/// </param>
public readonly record struct ScheduledChunk(SchedulerRequest Request, int StartPosition, int TokenCount, bool SamplesToken)
{
    /// <summary>The request id (also its KV sequence id).</summary>
    public long RequestId => Request.RequestId;

    /// <summary>The token ids to compute: Request.TokenIds[StartPosition .. StartPosition + TokenCount].</summary>
    public ReadOnlySpan<int> TokenIds => Request.TokenIds.Slice(StartPosition, TokenCount);
}
