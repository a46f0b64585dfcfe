using Inference.KvCache;

namespace Inference.Parallelism;

/// <summary>
/// The ranks' KV pools seen as one (copy-on-write copies go to every rank; a prefix file's block holds every KV head in
/// the layout of an unsplit pool, each head read from the rank that holds it).
/// </summary>
internal sealed class TensorParallelKvStorage(TensorParallelLayout layout, KvCacheStorage[] ranks) : IKvBlockStorage
{
    private readonly KvCacheStorage _first = ranks[0];

    public int LayerCount => _first.LayerCount;

    public int BlockCount => _first.BlockCount;

    public int BlockSize => _first.BlockSize;

    public int KvHeadCount => layout.Full.KvHeadCount;

    public int HeadDim => _first.HeadDim;

    public KvCacheDataType DataType => _first.DataType;

    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        foreach (var r in ranks) r.CopyBlocks(copies);
    }

    public void ReadBlock(int layer, int blockId, Span<byte> keys, Span<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        var (rankKeys, rankValues) = RankBlock();
        for (int r = 0; r < ranks.Length; r++)
        {
            // A replicated head is read from its first holder.
            if (layout.KvHeadOwner(layout.KvHeadStart(r)) != r) continue;
            ((IKvBlockStorage)ranks[r]).ReadBlock(layer, blockId, rankKeys, rankValues);
            CopyHeads(r, rankKeys, keys, toFull: true);
            CopyHeads(r, rankValues, values, toFull: true);
        }
    }

    public void WriteBlock(int layer, int blockId, ReadOnlySpan<byte> keys, ReadOnlySpan<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        var (rankKeys, rankValues) = RankBlock();
        for (int r = 0; r < ranks.Length; r++)
        {
            // Every holder of a replicated head gets it.
            CopyHeads(r, keys, rankKeys, toFull: false);
            CopyHeads(r, values, rankValues, toFull: false);
            ((IKvBlockStorage)ranks[r]).WriteBlock(layer, blockId, rankKeys, rankValues);
        }
    }

    private (byte[] Keys, byte[] Values) RankBlock()
    {
        int bytes = KvBlockStorage.LayerBlockByteCount(_first);
        return (new byte[bytes], new byte[bytes]);
    }

    /// <summary>Copies rank <paramref name="rank"/>'s heads of every slot between the unsplit layout [slot, kvHead, headDim] and the rank's.</summary>
    private void CopyHeads(int rank, ReadOnlySpan<byte> from, Span<byte> to, bool toFull)
    {
        int head = KvBlockFormat.RowBytes(DataType, HeadDim), rankHeads = _first.KvHeadCount, firstHead = layout.KvHeadStart(rank);
        for (int slot = 0; slot < BlockSize; slot++)
        {
            int full = (slot * KvHeadCount + firstHead) * head, local = slot * rankHeads * head;
            if (toFull) from.Slice(local, rankHeads * head).CopyTo(to.Slice(full, rankHeads * head));
            else from.Slice(full, rankHeads * head).CopyTo(to.Slice(local, rankHeads * head));
        }
    }
}

/// <summary>
/// The pipeline stages' KV pools seen as one: layer l lives in the pool of the stage that runs it (renumbered from that
/// stage's first layer); copy-on-write copies go to every stage.
/// </summary>
internal sealed class PipelineKvStorage : IKvBlockStorage
{
    private readonly IKvBlockStorage[] _stages;
    private readonly int[] _firstLayers;

    /// <param name="stages">Each stage's pool (its layers only), in stage order.</param>
    public PipelineKvStorage(IKvBlockStorage[] stages)
    {
        _stages = stages;
        _firstLayers = new int[stages.Length];
        int layers = 0;
        for (int s = 0; s < stages.Length; s++)
        {
            _firstLayers[s] = layers;
            layers += stages[s].LayerCount;
        }
        LayerCount = layers;
    }

    public int LayerCount { get; }

    public int BlockCount => _stages[0].BlockCount;

    public int BlockSize => _stages[0].BlockSize;

    public int KvHeadCount => _stages[0].KvHeadCount;

    public int HeadDim => _stages[0].HeadDim;

    public KvCacheDataType DataType => _stages[0].DataType;

    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        foreach (var s in _stages) s.CopyBlocks(copies);
    }

    public void ReadBlock(int layer, int blockId, Span<byte> keys, Span<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        int s = StageOf(layer);
        _stages[s].ReadBlock(layer - _firstLayers[s], blockId, keys, values);
    }

    public void WriteBlock(int layer, int blockId, ReadOnlySpan<byte> keys, ReadOnlySpan<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        int s = StageOf(layer);
        _stages[s].WriteBlock(layer - _firstLayers[s], blockId, keys, values);
    }

    private int StageOf(int layer)
    {
        int s = _stages.Length - 1;
        while (_firstLayers[s] > layer) s--;
        return s;
    }
}

/// <summary>
/// The context-parallel ranks' KV pools seen as one: every rank holds every token's K/V (ring attention stores each
/// block it passes on), so a block is read from the first and written to all; copy-on-write copies go to all.
/// </summary>
internal sealed class ReplicatedKvStorage(IKvBlockStorage[] replicas) : IKvBlockStorage
{
    private readonly IKvBlockStorage _first = replicas[0];

    public int LayerCount => _first.LayerCount;

    public int BlockCount => _first.BlockCount;

    public int BlockSize => _first.BlockSize;

    public int KvHeadCount => _first.KvHeadCount;

    public int HeadDim => _first.HeadDim;

    public KvCacheDataType DataType => _first.DataType;

    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        foreach (var r in replicas) r.CopyBlocks(copies);
    }

    public void ReadBlock(int layer, int blockId, Span<byte> keys, Span<byte> values) => _first.ReadBlock(layer, blockId, keys, values);

    public void WriteBlock(int layer, int blockId, ReadOnlySpan<byte> keys, ReadOnlySpan<byte> values)
    {
        foreach (var r in replicas) r.WriteBlock(layer, blockId, keys, values);
    }
}
