using Inference.KvCache;
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
    /// <summary>
    /// Proposed tokens at the end of the chunk (<see cref="SchedulerRequest.SpeculativeTokenIds"/>): the engine wants
    /// logits at the chunk's last <see cref="SpeculativeTokenCount"/> + 1 positions and verifies them. Zero otherwise.
    /// </summary>
    public int SpeculativeTokenCount { get; init; }

    /// <summary>
    /// Tokens of the request evicted from the KV cache before this chunk (<see cref="KvCacheManager.Eviction"/>): the
    /// chunk's tokens sit at cache positions <see cref="CachePosition"/> onward, which is where RoPE places them.
    /// </summary>
    public int EvictedTokenCount { get; init; }

    /// <summary>Cache (and RoPE) position of the chunk's first token: <see cref="StartPosition"/> − <see cref="EvictedTokenCount"/>.</summary>
    public int CachePosition => StartPosition - EvictedTokenCount;

    /// <summary>The request id (also its KV sequence id).</summary>
    public long RequestId => Request.RequestId;

    /// <summary>The token ids to compute: the request's known tokens, then its proposed ones, from StartPosition.</summary>
    public ReadOnlySpan<int> TokenIds => Request.ScheduledTokenIds.Slice(StartPosition, TokenCount);
}
