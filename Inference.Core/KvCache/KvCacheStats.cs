namespace Inference.KvCache;

/// <summary>A snapshot of <see cref="KvCacheManager"/> counters.</summary>
/// <param name="TotalBlockCount">Blocks in the pool.</param>
/// <param name="UsedBlockCount">Blocks referenced by at least one sequence.</param>
/// <param name="CachedFreeBlockCount">Free blocks that still hold a hashed full block and can be hit until reused.</param>
/// <param name="PrefixQueriedTokenCount">Prompt tokens looked up in the prefix cache since creation.</param>
/// <param name="PrefixHitTokenCount">Of those, tokens found cached (not recomputed).</param>
public sealed record KvCacheStats(
    int TotalBlockCount,
    int UsedBlockCount,
    int CachedFreeBlockCount,
    long PrefixQueriedTokenCount,
    long PrefixHitTokenCount)
{
    /// <summary>Blocks not referenced by any sequence (cached or empty).</summary>
    public int FreeBlockCount => TotalBlockCount - UsedBlockCount;

    /// <summary>Fraction of used blocks, 0 to 1.</summary>
    public double Usage => TotalBlockCount == 0 ? 0 : (double)UsedBlockCount / TotalBlockCount;

    /// <summary><see cref="PrefixHitTokenCount"/> / <see cref="PrefixQueriedTokenCount"/>, 0 when nothing was queried.</summary>
    public double PrefixHitRate => PrefixQueriedTokenCount == 0 ? 0 : (double)PrefixHitTokenCount / PrefixQueriedTokenCount;
}
