using ILGPU;
using ILGPU.Runtime;
using Inference.KvCache;

namespace Inference.Cuda.Runner;

/// <summary>
/// The paged KV pool in device memory, indexed by the same physical block ids the engine's <see cref="KvCacheManager"/>
/// hands out, in the layout of <see cref="KvCacheStorage"/>.
/// </summary>
/// <remarks>
/// <code>
///   keys[layer], values[layer]   // [blockCount, blockSize, kvHeads, headDim], f32 or f16, one device buffer each
///                                // Q8_0, FP8: [blockCount, blockSize, kvHeads, headDim / 32, 34 bytes] (KvBlockFormat)
/// </code>
/// Block copies run device to device; prefix files read and write blocks through host copies.
/// </remarks>
internal sealed class DeviceKvStorage : IKvBlockStorage, IDisposable
{
    private readonly MemoryBuffer1D<byte, Stride1D.Dense>[] _keys;
    private readonly MemoryBuffer1D<byte, Stride1D.Dense>[] _values;

    /// <exception cref="NotSupportedException">A block format with a head size that is not a multiple of 32.</exception>
    public DeviceKvStorage(Accelerator accelerator, int layerCount, int blockCount, int blockSize, int kvHeadCount, int headDim, KvCacheDataType dataType)
    {
        KvBlockFormat.CheckHeadDim(dataType, headDim);
        LayerCount = layerCount;
        BlockCount = blockCount;
        BlockSize = blockSize;
        KvHeadCount = kvHeadCount;
        HeadDim = headDim;
        DataType = dataType;
        BlockBytes = KvBlockStorage.LayerBlockByteCount(this);
        _keys = new MemoryBuffer1D<byte, Stride1D.Dense>[layerCount];
        _values = new MemoryBuffer1D<byte, Stride1D.Dense>[layerCount];
        try
        {
            for (int l = 0; l < layerCount; l++)
            {
                _keys[l] = accelerator.Allocate1D<byte>((long)blockCount * BlockBytes);
                _values[l] = accelerator.Allocate1D<byte>((long)blockCount * BlockBytes);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public int LayerCount { get; }
    public int BlockCount { get; }
    public int BlockSize { get; }
    public int KvHeadCount { get; }
    public int HeadDim { get; }
    public KvCacheDataType DataType { get; }

    /// <summary>Bytes of one block of one layer's keys (or values).</summary>
    public int BlockBytes { get; }

    /// <summary>Device bytes of keys and values.</summary>
    public long ByteCount => 2L * LayerCount * BlockCount * BlockBytes;

    /// <summary>Keys of <paramref name="layer"/> as raw bytes (cast to the element type).</summary>
    public ArrayView<byte> Keys(int layer) => _keys[layer].View;

    /// <summary>Values of <paramref name="layer"/> as raw bytes.</summary>
    public ArrayView<byte> Values(int layer) => _values[layer].View;

    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        foreach (var c in copies)
        {
            Check(c.SourceBlockId);
            Check(c.DestinationBlockId);
            for (int l = 0; l < LayerCount; l++)
            {
                Block(_keys[l], c.SourceBlockId).CopyTo(Block(_keys[l], c.DestinationBlockId));
                Block(_values[l], c.SourceBlockId).CopyTo(Block(_values[l], c.DestinationBlockId));
            }
        }
    }

    public void ReadBlock(int layer, int blockId, Span<byte> keys, Span<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        Block(_keys[layer], blockId).CopyToCPU(keys);
        Block(_values[layer], blockId).CopyToCPU(values);
    }

    public void WriteBlock(int layer, int blockId, ReadOnlySpan<byte> keys, ReadOnlySpan<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        Block(_keys[layer], blockId).CopyFromCPU<byte, ArrayView<byte>>(keys);
        Block(_values[layer], blockId).CopyFromCPU<byte, ArrayView<byte>>(values);
    }

    private ArrayView<byte> Block(MemoryBuffer1D<byte, Stride1D.Dense> layer, int blockId) =>
        layer.View.SubView((long)blockId * BlockBytes, BlockBytes);

    private void Check(int blockId)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(blockId);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(blockId, BlockCount);
    }

    public void Dispose()
    {
        foreach (var b in _keys) b?.Dispose();
        foreach (var b in _values) b?.Dispose();
    }
}
