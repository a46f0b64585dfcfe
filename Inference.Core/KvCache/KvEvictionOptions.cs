namespace Inference.KvCache;

/// <summary>Which cached tokens a sequence gives up when it outgrows its KV budget (see <see cref="KvEvictionOptions"/>).</summary>
public enum KvEvictionPolicy
{
    /// <summary>
    /// StreamingLLM's attention sinks: keep the first <see cref="KvEvictionOptions.SinkTokens"/> tokens and the most
    /// recent <see cref="KvEvictionOptions.RecentTokens"/>; the oldest tokens between them go first.
    /// </summary>
    AttentionSinks,

    /// <summary>
    /// H2O's heavy hitters: besides the sinks and the recent window, keep the <see cref="KvEvictionOptions.HeavyHitterTokens"/>
    /// tokens that received the most attention so far (summed over every query, head and layer); the least attended go first.
    /// </summary>
    HeavyHitters,
}

/// <summary>
/// Generation past the context window: a sequence keeps at most <see cref="KeptTokenCount"/> tokens in the KV cache
/// (plus up to one block of slack), evicting the rest by <see cref="Policy"/> and re-basing the positions of the tokens
/// it keeps, as StreamingLLM does: the cache holds tokens at positions 0 … n − 1 whatever their place in the text, so
/// RoPE never sees a position beyond the cache. Blocks go back to the pool as tokens are evicted, so the KV memory of a
/// sequence stays bounded however long it generates. Immutable; validated when set.
/// </summary>
/// <remarks>
/// Keys are stored rotated (RoPE applied at their position), so an evicted token's successors are rotated back by the
/// number of positions they move (a rotation by −d; rotations compose), the context shift llama.cpp performs. See
/// docs/kv-cache.md.
/// </remarks>
public sealed record KvEvictionOptions
{
    /// <summary>The policy. Default <see cref="KvEvictionPolicy.AttentionSinks"/>.</summary>
    public KvEvictionPolicy Policy
    {
        get;
        init => field = Enum.IsDefined(value) ? value : throw new ArgumentOutOfRangeException(nameof(Policy), value, "Unknown KV eviction policy.");
    }

    /// <summary>Leading tokens never evicted (the attention sinks). Default 4, as in the StreamingLLM paper.</summary>
    public int SinkTokens
    {
        get;
        init => field = value is >= 0 and <= 1 << 20 ? value : throw new ArgumentOutOfRangeException(nameof(SinkTokens), value, "SinkTokens must be in [0, 1048576].");
    } = 4;

    /// <summary>Most recent tokens never evicted; also the longest prefill chunk of an evicting sequence. Default 1,020.</summary>
    public int RecentTokens
    {
        get;
        init => field = value is >= 1 and <= 1 << 20 ? value : throw new ArgumentOutOfRangeException(nameof(RecentTokens), value, "RecentTokens must be in [1, 1048576].");
    } = 1020;

    /// <summary>With <see cref="KvEvictionPolicy.HeavyHitters"/>: tokens kept for the attention they received. Default 0 (must be set for that policy).</summary>
    public int HeavyHitterTokens
    {
        get;
        init => field = value is >= 0 and <= 1 << 20 ? value : throw new ArgumentOutOfRangeException(nameof(HeavyHitterTokens), value, "HeavyHitterTokens must be in [0, 1048576].");
    }

    /// <summary>Tokens a sequence keeps after an eviction: sinks + heavy hitters (H2O) + recent.</summary>
    public int KeptTokenCount => SinkTokens + RecentTokens + (Policy == KvEvictionPolicy.HeavyHitters ? HeavyHitterTokens : 0);

    /// <summary>Throws <see cref="ArgumentException"/> unless the options fit a context of <paramref name="contextLength"/> positions and blocks of <paramref name="blockSize"/>.</summary>
    public void Validate(int contextLength, int blockSize)
    {
        if (Policy == KvEvictionPolicy.HeavyHitters && HeavyHitterTokens < 1)
            throw new ArgumentException("KV eviction by heavy hitters needs HeavyHitterTokens ≥ 1");
        if (Policy == KvEvictionPolicy.AttentionSinks && HeavyHitterTokens != 0)
            throw new ArgumentException("HeavyHitterTokens applies to the heavy-hitter policy only; the attention-sink policy keeps sinks and recent tokens");
        // NOTE: a sequence holds up to KeptTokenCount + blockSize tokens between evictions; positions stay below that.
        if ((long)KeptTokenCount + blockSize > contextLength)
            throw new ArgumentException($"KV eviction keeps {KeptTokenCount} tokens plus a block of {blockSize} between evictions; the context holds {contextLength} positions");
    }
}
