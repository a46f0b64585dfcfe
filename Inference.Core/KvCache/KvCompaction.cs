namespace Inference.KvCache;

/// <summary>
/// What the KV storage must do after <see cref="KvCacheManager.TryEvict"/> dropped tokens of one sequence: move the
/// kept tokens after the first dropped one down to close the gaps (all layers, keys and values) and rotate each moved
/// key back by the positions it moved. Performed before the next forward pass, in the order recorded, after the first
/// <see cref="CopiesBefore"/> pending block copies.
/// </summary>
/// <remarks>
/// <code>
///  logical blocks  [FirstBlock, old end) read: SourceBlocks          (old cache indices FirstBlock·bs … OldTokenCount − 1)
///  logical blocks  [FirstBlock, new end) written: DestinationBlocks  (new index j holds old index Sources[j − FirstBlock·bs])
///  key of new index j rotated by j − Sources[j − FirstBlock·bs] positions (≤ 0)
/// </code>
/// Every source block is read (per layer) before any destination block is written, so a destination may be a block
/// that was a source (the same block rewritten in place, or a released tail block handed out again).
/// </remarks>
internal sealed record KvCompaction(long SequenceId, int BlockSize, int FirstBlock, int[] SourceBlocks, int OldTokenCount, int[] Sources, int[] DestinationBlocks, int CopiesBefore)
{
    /// <summary>First cache index the compaction rewrites (the start of <see cref="FirstBlock"/>).</summary>
    public int FirstIndex => FirstBlock * BlockSize;

    /// <summary>Tokens of the sequence after the compaction.</summary>
    public int NewTokenCount => FirstIndex + Sources.Length;
}
