namespace Inference.KvCache;

/// <summary>
/// Block-level access to the memory of the paged KV cache wherever it lives — host memory for the CPU path
/// (<see cref="KvCacheStorage"/>), device memory for a GPU executor. Copy-on-write copies and prefix files go through it.
/// </summary>
/// <remarks>
/// One block of one layer, keys or values: <c>[blockSize, kvHeads, headDim]</c> in <see cref="DataType"/>, the bytes
/// exactly as <see cref="KvCacheStorage"/> lays them out, so a prefix file does not depend on where it was computed.
/// Engine thread only.
/// </remarks>
internal interface IKvBlockStorage
{
    /// <summary>Layers.</summary>
    int LayerCount { get; }

    /// <summary>Blocks per layer.</summary>
    int BlockCount { get; }

    /// <summary>Slots (tokens) per block.</summary>
    int BlockSize { get; }

    /// <summary>Key/value heads.</summary>
    int KvHeadCount { get; }

    /// <summary>Elements per head.</summary>
    int HeadDim { get; }

    /// <summary>Element type.</summary>
    KvCacheDataType DataType { get; }

    /// <summary>Performs every copy of <paramref name="copies"/> in every layer, keys and values.</summary>
    void CopyBlocks(ReadOnlySpan<BlockCopy> copies);

    /// <summary>Copies block <paramref name="blockId"/> of <paramref name="layer"/> out: keys and values, <see cref="KvBlockStorage.LayerBlockByteCount"/> bytes each.</summary>
    void ReadBlock(int layer, int blockId, Span<byte> keys, Span<byte> values);

    /// <summary>Overwrites block <paramref name="blockId"/> of <paramref name="layer"/>: keys and values, <see cref="KvBlockStorage.LayerBlockByteCount"/> bytes each.</summary>
    void WriteBlock(int layer, int blockId, ReadOnlySpan<byte> keys, ReadOnlySpan<byte> values);
}

/// <summary>Arithmetic shared by the <see cref="IKvBlockStorage"/> implementations.</summary>
internal static class KvBlockStorage
{
    /// <summary>Bytes of one block of one layer's keys (or values).</summary>
    public static int LayerBlockByteCount(IKvBlockStorage storage) =>
        storage.BlockSize * storage.KvHeadCount * KvBlockFormat.RowBytes(storage.DataType, storage.HeadDim);

    /// <summary>Throws unless <paramref name="blockId"/> and <paramref name="layer"/> are in range and both spans hold one block.</summary>
    public static void CheckBlockAccess(IKvBlockStorage storage, int layer, int blockId, int keyBytes, int valueBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, storage.LayerCount);
        ArgumentOutOfRangeException.ThrowIfNegative(blockId);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(blockId, storage.BlockCount);
        int bytes = LayerBlockByteCount(storage);
        if (keyBytes != bytes || valueBytes != bytes)
            throw new ArgumentException($"a block of one layer's keys or values is {bytes} bytes; got {keyBytes} and {valueBytes}");
    }
}
