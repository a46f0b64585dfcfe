using Inference.Engine;
namespace Inference.Scheduling;

/// <summary>
/// A generation request as the <see cref="Scheduler"/> sees it: token ids, limits and progress, no text and no model.
/// </summary>
/// <remarks>
/// Vocabulary: the <em>known</em> tokens are the prompt followed by the sampled output (<see cref="TokenIds"/>); the
/// <em>computed</em> tokens are those whose keys and values are in the KV cache. Each step the computed tokens catch up
/// with the known ones. Owned by the engine loop thread like the scheduler.
/// </remarks>
public sealed class SchedulerRequest
{
    private readonly int[] _tokenIds; // [prompt + maxNewTokens], filled up to TokenCount
    private readonly int[] _stopTokenIds = [];
    private readonly IReadOnlyList<int> _stopTokenView = Array.Empty<int>();

    /// <summary>Creates a request.</summary>
    /// <param name="requestId">Unique among live requests; also the KV cache sequence id.</param>
    /// <param name="promptTokenIds">At least one token.</param>
    /// <param name="maxNewTokenCount">Most tokens to generate, at least 1.</param>
    public SchedulerRequest(long requestId, ReadOnlySpan<int> promptTokenIds, int maxNewTokenCount)
    {
        if (promptTokenIds.IsEmpty) throw new ArgumentException("A prompt has at least one token.", nameof(promptTokenIds));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxNewTokenCount, 1);
        RequestId = requestId;
        MaxNewTokenCount = maxNewTokenCount;
        PromptTokenCount = promptTokenIds.Length;
        // NOTE: room for every output token up front, so appending a token never allocates.
        _tokenIds = new int[checked(promptTokenIds.Length + maxNewTokenCount)];
        promptTokenIds.CopyTo(_tokenIds);
        TokenCount = promptTokenIds.Length;
    }

    /// <summary>Request id.</summary>
    public long RequestId { get; }

    /// <summary>Most tokens to generate.</summary>
    public int MaxNewTokenCount { get; }

    /// <summary>Scheduling priority under <see cref="SchedulingPolicy.Priority"/>: lower values go first. Default 0.</summary>
    public int Priority { get; init; }

    /// <summary>Tokens that end generation when sampled (end of sequence and the like). Default none.</summary>
    public IReadOnlyList<int> StopTokenIds
    {
        get => _stopTokenView;
        init
        {
            ArgumentNullException.ThrowIfNull(value);
            _stopTokenIds = [.. value];
            _stopTokenView = Array.AsReadOnly(_stopTokenIds);
        }
    }

    /// <summary>
    /// Whether admission reuses the longest cached prefix of the known tokens (default). False makes every token be
    /// computed, for work that needs the logits at every prompt position (prompt log-probabilities).
    /// </summary>
    public bool ReusesCachedPrefix { get; set; } = true;

    /// <summary>
    /// Most tokens of one chunk of this request under chunked prefill, 0 for no limit beyond the step's budget (work
    /// that keeps the logits of every position bounds the rows of one step with it).
    /// </summary>
    public int MaxChunkTokenCount
    {
        get;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            field = value;
        }
    }

    /// <summary>Whether the consumer keeps up with the output; the engine sets it (see <see cref="Scheduling.ConsumerState"/>).</summary>
    public ConsumerState ConsumerState
    {
        get;
        set
        {
            if (!Enum.IsDefined(value)) throw new ArgumentOutOfRangeException(nameof(value));
            field = value;
        }
    }

    /// <summary>Prompt length.</summary>
    public int PromptTokenCount { get; }

    /// <summary>Known tokens: prompt then output.</summary>
    public int TokenCount { get; private set; }

    /// <summary>Known token ids: prompt then output.</summary>
    public ReadOnlySpan<int> TokenIds => _tokenIds.AsSpan(0, TokenCount);

    /// <summary>Generated token ids.</summary>
    public ReadOnlySpan<int> OutputTokenIds => _tokenIds.AsSpan(PromptTokenCount, TokenCount - PromptTokenCount);

    /// <summary>Generated tokens.</summary>
    public int OutputTokenCount => TokenCount - PromptTokenCount;

    /// <summary>Leading known tokens whose keys and values are in the KV cache (or scheduled to be written this step).</summary>
    public int ComputedTokenCount { get; internal set; }

    /// <summary>
    /// Computed tokens no longer in the KV cache (evicted under <see cref="KvCache.KvCacheManager.Eviction"/>): known token
    /// i ≥ <see cref="ComputedTokenCount"/> will sit at cache position i − EvictedTokenCount. Zero without eviction.
    /// </summary>
    public int EvictedTokenCount { get; internal set; }

    /// <summary>Where the request stands.</summary>
    public RequestStatus Status { get; internal set; }

    /// <summary>Why it finished, or null while it has not.</summary>
    public FinishReason? FinishReason { get; internal set; }

    /// <summary>Arrival number assigned by <see cref="Scheduler.AddRequest"/> (FCFS order).</summary>
    public long ArrivalOrder { get; internal set; }

    /// <summary>How often the request was preempted.</summary>
    public int PreemptionCount { get; internal set; }

    /// <summary>Cached prompt tokens found at the latest admission.</summary>
    public int CachedTokenCount { get; internal set; }

    /// <summary>
    /// Proposed (speculative) tokens after the known ones, verified by the next step: they are computed with the last
    /// known token and the model's logits after each are sampled. Zero when none are proposed.
    /// </summary>
    public int SpeculativeTokenCount { get; private set; }

    /// <summary>The proposed tokens (see <see cref="SpeculativeTokenCount"/>).</summary>
    public ReadOnlySpan<int> SpeculativeTokenIds => _tokenIds.AsSpan(TokenCount, SpeculativeTokenCount);

    /// <summary>Most tokens that can be proposed now: the room left before <see cref="MaxNewTokenCount"/>, less the token the verification samples itself.</summary>
    public int SpeculativeCapacity => Math.Max(0, _tokenIds.Length - TokenCount - 1);

    /// <summary>Known tokens followed by the proposed ones: what a step computes from.</summary>
    internal ReadOnlySpan<int> ScheduledTokenIds => _tokenIds.AsSpan(0, TokenCount + SpeculativeTokenCount);

    /// <summary>
    /// Sets the tokens proposed for the next step (at most <see cref="SpeculativeCapacity"/>); empty clears them.
    /// Only for a running request that is decoding: all its known tokens computed but the last sampled one.
    /// </summary>
    /// <exception cref="InvalidOperationException">The request is not decoding.</exception>
    public void SetSpeculativeTokens(ReadOnlySpan<int> tokenIds)
    {
        if (tokenIds.Length > SpeculativeCapacity)
            throw new ArgumentException($"at most {SpeculativeCapacity} tokens can be proposed for request {RequestId}", nameof(tokenIds));
        if (!tokenIds.IsEmpty && (Status != RequestStatus.Running || ComputedTokenCount != TokenCount - 1))
            throw new InvalidOperationException($"Request {RequestId} is not decoding (all its tokens computed but the last); nothing can be proposed for it.");
        tokenIds.CopyTo(_tokenIds.AsSpan(TokenCount));
        SpeculativeTokenCount = tokenIds.Length;
    }

    internal void ClearSpeculativeTokens() => SpeculativeTokenCount = 0;

    internal void AppendToken(int tokenId) => _tokenIds[TokenCount++] = tokenId;

    internal bool IsStopToken(int tokenId)
    {
        foreach (int t in _stopTokenIds)
            if (t == tokenId) return true;
        return false;
    }
}
