using Inference.Sampling;

namespace Inference.Engine;

/// <summary>One generated token and the text it completes.</summary>
/// <param name="TokenId">The token id.</param>
/// <param name="Text">Text that became complete with this token (may be empty while a UTF-8 character or a possible
/// stop string is pending, or hold several tokens' worth once it resolves).</param>
/// <param name="Logprobs">The token's log-probability and alternatives when <see cref="SamplingOptions.Logprobs"/> asks
/// for them; null otherwise, and on the last item that only flushes held-back text.</param>
public readonly record struct GeneratedToken(int TokenId, string Text, TokenLogprobs? Logprobs = null);

/// <summary>Why generation ended.</summary>
public enum FinishReason
{
    /// <summary>The model produced an end-of-generation token.</summary>
    EndOfSequence,
    /// <summary>A stop string appeared.</summary>
    StopString,
    /// <summary>The token limit or the context was reached.</summary>
    Length,
    /// <summary>The request was cancelled.</summary>
    Cancelled,
}

/// <summary>The seed's latency metrics of one request.</summary>
/// <param name="PromptTokens">Tokens in the prompt (BOS included).</param>
/// <param name="GeneratedTokens">Tokens generated.</param>
/// <param name="QueueTime">From submission to the first forward pass that included the request.</param>
/// <param name="TimeToFirstToken">TTFT: from submission to the first generated token.</param>
/// <param name="TimePerOutputToken">TPOT: mean time between later tokens ((latency − TTFT) / (n − 1)).</param>
/// <param name="Latency">From submission to the last token: TTFT + TPOT·(n − 1).</param>
/// <param name="PrefixHitTokens">Prompt tokens whose KV came from the prefix cache.</param>
public sealed record GenerationMetrics(
    int PromptTokens,
    int GeneratedTokens,
    TimeSpan QueueTime,
    TimeSpan TimeToFirstToken,
    TimeSpan TimePerOutputToken,
    TimeSpan Latency,
    int PrefixHitTokens)
{
    /// <summary>Output tokens per second over the request's latency.</summary>
    public double TokensPerSecond => Latency > TimeSpan.Zero ? GeneratedTokens / Latency.TotalSeconds : 0;

    /// <summary>Decode speed: tokens after the first per second.</summary>
    public double DecodeTokensPerSecond => TimePerOutputToken > TimeSpan.Zero ? 1.0 / TimePerOutputToken.TotalSeconds : 0;

    /// <summary>
    /// Speculative decoding of this request (acceptance rate, mean accepted tokens per step) when
    /// <see cref="EngineOptions.Speculative"/> proposed tokens for it; null otherwise.
    /// </summary>
    public Speculative.SpeculationMetrics? Speculation { get; init; }
}

/// <summary>The whole result of a request.</summary>
/// <param name="Text">The generated text (stop string excluded).</param>
/// <param name="TokenIds">The generated token ids.</param>
/// <param name="PromptTokenIds">The prompt as tokenized.</param>
/// <param name="FinishReason">Why generation ended.</param>
/// <param name="Seed">The sampling seed used.</param>
/// <param name="Metrics">Timing.</param>
public sealed record Completion(
    string Text,
    IReadOnlyList<int> TokenIds,
    IReadOnlyList<int> PromptTokenIds,
    FinishReason FinishReason,
    ulong Seed,
    GenerationMetrics Metrics)
{
    /// <summary>Per entry of <see cref="TokenIds"/>, its log-probabilities, when <see cref="SamplingOptions.Logprobs"/> asked for them.</summary>
    public IReadOnlyList<TokenLogprobs>? Logprobs { get; init; }

    /// <summary>
    /// Per prompt token after the first, its log-probability given the tokens before it and the most likely
    /// alternatives there, when <see cref="SamplingOptions.PromptLogprobs"/> asked for them (from the raw logits: no
    /// penalties, temperature 1).
    /// </summary>
    public IReadOnlyList<TokenLogprobs>? PromptLogprobs { get; init; }
}
