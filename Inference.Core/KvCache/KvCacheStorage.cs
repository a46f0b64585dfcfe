using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Inference.KvCache;

/// <summary>
/// The memory of the paged KV cache: for every layer one key and one value tensor
/// <c>[blockCount, blockSize, kvHeads, headDim]</c> in native, 64-byte aligned memory, as f32, f16 or one of the 34-byte
/// block formats (<see cref="KvBlockFormat"/>: Q8_0, FP8 E4M3), whose rows are headDim / 32 blocks.
/// </summary>
/// <remarks>
/// <code>
///   keys[layer]   // [blockCount, blockSize, kvHeads, headDim]
///   values[layer] // [blockCount, blockSize, kvHeads, headDim]
///   element of (block b, slot s, kv head g, dim d) = ((b·blockSize + s)·kvHeads + g)·headDim + d
/// </code>
/// NOTE: the memory is not cleared: attention only reads slots that were written, and clearing would commit the whole
/// budget up front. Not thread-safe for writes; the engine decides who writes which slots.
/// </remarks>
public sealed unsafe class KvCacheStorage : IDisposable, IKvBlockStorage
{
    private readonly void*[] _keys;   // [layerCount] → [blockCount, blockSize, kvHeads, headDim]
    private readonly void*[] _values; // [layerCount] → [blockCount, blockSize, kvHeads, headDim]
    private bool _disposed;

    /// <summary>Allocates storage for exactly <paramref name="blockCount"/> blocks.</summary>
    /// <exception cref="NotSupportedException">A block format (<see cref="KvCacheDataType.Q8_0"/>, <see cref="KvCacheDataType.Fp8E4M3"/>) with a head size that is not a multiple of 32.</exception>
    public KvCacheStorage(int layerCount, int blockCount, int blockSize, int kvHeadCount, int headDim, KvCacheDataType dataType)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(layerCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(blockSize, KvCacheOptions.MaxBlockSize);
        ArgumentOutOfRangeException.ThrowIfLessThan(kvHeadCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        if (!Enum.IsDefined(dataType)) throw new ArgumentOutOfRangeException(nameof(dataType));
        KvBlockFormat.CheckHeadDim(dataType, headDim);
        long layerElements = (long)blockCount * blockSize * kvHeadCount * headDim;
        if (layerElements > Array.MaxLength || (KvBlockFormat.IsBlockFormat(dataType) && KvBlockFormat.ByteCount(dataType, layerElements) > Array.MaxLength))
            throw new ArgumentOutOfRangeException(nameof(blockCount), blockCount, $"One layer would hold {layerElements} elements; at most {Array.MaxLength} elements (or bytes, for a block format) are addressable.");

        LayerCount = layerCount;
        BlockCount = blockCount;
        BlockSize = blockSize;
        KvHeadCount = kvHeadCount;
        HeadDim = headDim;
        DataType = dataType;
        ElementsPerLayer = (int)layerElements;
        _keys = new void*[layerCount];
        _values = new void*[layerCount];
        BytesPerLayer = KvBlockFormat.ByteCount(dataType, layerElements);
        nuint bytes = (nuint)BytesPerLayer;
        try
        {
            for (int l = 0; l < layerCount; l++)
            {
                _keys[l] = NativeMemory.AlignedAlloc(bytes, 64);
                _values[l] = NativeMemory.AlignedAlloc(bytes, 64);
            }
        }
        catch
        {
            Free();
            _disposed = true;
            GC.SuppressFinalize(this);
            throw;
        }
        GC.AddMemoryPressure(ByteCount);
    }

    /// <summary>Layers.</summary>
    public int LayerCount { get; }

    /// <summary>Blocks per layer.</summary>
    public int BlockCount { get; }

    /// <summary>Slots (tokens) per block.</summary>
    public int BlockSize { get; }

    /// <summary>Key/value heads.</summary>
    public int KvHeadCount { get; }

    /// <summary>Elements per head.</summary>
    public int HeadDim { get; }

    /// <summary>Element type.</summary>
    public KvCacheDataType DataType { get; }

    /// <summary>Elements of one layer's key (or value) tensor.</summary>
    public int ElementsPerLayer { get; }

    /// <summary>Bytes of one layer's key (or value) tensor.</summary>
    public long BytesPerLayer { get; }

    /// <summary>Total bytes of keys and values.</summary>
    public long ByteCount => 2L * LayerCount * BytesPerLayer;

    /// <summary>Bytes of one head's row (one token's <see cref="HeadDim"/> keys or values of one KV head).</summary>
    public int RowBytes => KvBlockFormat.RowBytes(DataType, HeadDim);

    /// <summary>Bytes one block takes across all layers, keys and values.</summary>
    /// <exception cref="NotSupportedException">A block format with a head size that is not a multiple of 32.</exception>
    public static long GetBlockByteCount(int layerCount, int blockSize, int kvHeadCount, int headDim, KvCacheDataType dataType) =>
        blockSize * GetTokenByteCount(layerCount, kvHeadCount, headDim, dataType);

    /// <summary>Bytes of K and V of one token across all layers: 2 · layers · kvHeads · (bytes of one head's row).</summary>
    /// <exception cref="NotSupportedException">A block format with a head size that is not a multiple of 32.</exception>
    public static long GetTokenByteCount(int layerCount, int kvHeadCount, int headDim, KvCacheDataType dataType)
    {
        KvBlockFormat.CheckHeadDim(dataType, headDim);
        return 2L * layerCount * kvHeadCount * KvBlockFormat.ByteCount(dataType, headDim);
    }

    /// <summary>Blocks that fit the byte budget of <paramref name="options"/>.</summary>
    public static int GetBlockCount(KvCacheOptions options, int layerCount, int kvHeadCount, int headDim)
    {
        ArgumentNullException.ThrowIfNull(options);
        long perBlock = GetBlockByteCount(layerCount, options.BlockSize, kvHeadCount, headDim, options.DataType);
        long perLayerLimit = Array.MaxLength / ((long)options.BlockSize * kvHeadCount * headDim);
        if (KvBlockFormat.IsBlockFormat(options.DataType))
            perLayerLimit = Math.Min(perLayerLimit, Array.MaxLength / (options.BlockSize * kvHeadCount * KvBlockFormat.ByteCount(options.DataType, headDim)));
        return (int)Math.Min(Math.Min(options.ResolvePoolBytes() / perBlock, perLayerLimit), int.MaxValue);
    }

    /// <summary>Allocates as many blocks as the byte budget of <paramref name="options"/> allows.</summary>
    /// <exception cref="ArgumentException">The budget does not hold a single block.</exception>
    public static KvCacheStorage Create(KvCacheOptions options, int layerCount, int kvHeadCount, int headDim) =>
        new(layerCount, GetRequiredBlockCount(options, layerCount, kvHeadCount, headDim), options.BlockSize, kvHeadCount, headDim, options.DataType);

    /// <summary><see cref="GetBlockCount"/>, refusing a budget that holds no block.</summary>
    /// <exception cref="ArgumentException">The budget does not hold a single block.</exception>
    internal static int GetRequiredBlockCount(KvCacheOptions options, int layerCount, int kvHeadCount, int headDim)
    {
        int blocks = GetBlockCount(options, layerCount, kvHeadCount, headDim);
        if (blocks < 1)
            throw new ArgumentException($"A KV budget of {options.ResolvePoolBytes()} bytes holds no block of {GetBlockByteCount(layerCount, options.BlockSize, kvHeadCount, headDim, options.DataType)} bytes.", nameof(options));
        return blocks;
    }

    /// <summary>Keys of <paramref name="layer"/>: <c>[blockCount, blockSize, kvHeads, headDim]</c>. T is float or Half, matching <see cref="DataType"/>.</summary>
    public Span<T> GetKeys<T>(int layer) where T : unmanaged => Layer<T>(_keys, layer);

    /// <summary>Values of <paramref name="layer"/>: <c>[blockCount, blockSize, kvHeads, headDim]</c>. T is float or Half, matching <see cref="DataType"/>.</summary>
    public Span<T> GetValues<T>(int layer) where T : unmanaged => Layer<T>(_values, layer);

    /// <summary>The bytes of <paramref name="layer"/>'s keys, whatever <see cref="DataType"/> is: <c>[blockCount, blockSize, kvHeads, row]</c>.</summary>
    public Span<byte> GetKeyBytes(int layer) => LayerBytes(_keys, layer);

    /// <summary>The bytes of <paramref name="layer"/>'s values, whatever <see cref="DataType"/> is: <c>[blockCount, blockSize, kvHeads, row]</c>.</summary>
    public Span<byte> GetValueBytes(int layer) => LayerBytes(_values, layer);

    /// <summary>
    /// Stores the key and value of one token, converting to <see cref="DataType"/>.
    /// <paramref name="key"/> and <paramref name="value"/> are <c>[kvHeads, headDim]</c>.
    /// </summary>
    public void Write(int layer, int blockId, int slot, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(blockId);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(blockId, BlockCount);
        ArgumentOutOfRangeException.ThrowIfNegative(slot);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(slot, BlockSize);
        int n = KvHeadCount * HeadDim;
        if (key.Length != n) throw new ArgumentException($"key must be [kvHeads, headDim] = {n} elements.", nameof(key));
        if (value.Length != n) throw new ArgumentException($"value must be [kvHeads, headDim] = {n} elements.", nameof(value));
        int offset = (blockId * BlockSize + slot) * n;
        if (DataType == KvCacheDataType.Float32)
        {
            key.CopyTo(GetKeys<float>(layer).Slice(offset, n));
            value.CopyTo(GetValues<float>(layer).Slice(offset, n));
        }
        else if (DataType == KvCacheDataType.Float16)
        {
            TensorPrimitives.ConvertToHalf(key, GetKeys<Half>(layer).Slice(offset, n));
            TensorPrimitives.ConvertToHalf(value, GetValues<Half>(layer).Slice(offset, n));
        }
        else
        {
            int bytes = KvBlockFormat.RowBytes(DataType, n), at = (blockId * BlockSize + slot) * bytes;
            KvBlockFormat.Quantize(DataType, key, GetKeyBytes(layer).Slice(at, bytes));
            KvBlockFormat.Quantize(DataType, value, GetValueBytes(layer).Slice(at, bytes));
        }
    }

    /// <summary>Copies block <paramref name="sourceBlockId"/> to <paramref name="destinationBlockId"/> in every layer, keys and values.</summary>
    public void CopyBlock(int sourceBlockId, int destinationBlockId)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sourceBlockId);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(sourceBlockId, BlockCount);
        ArgumentOutOfRangeException.ThrowIfNegative(destinationBlockId);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(destinationBlockId, BlockCount);
        ObjectDisposedException.ThrowIf(_disposed, this);
        int blockBytes = BlockSize * KvHeadCount * RowBytes;
        for (int l = 0; l < LayerCount; l++)
        {
            CopyBytes(_keys[l], sourceBlockId, destinationBlockId, blockBytes);
            CopyBytes(_values[l], sourceBlockId, destinationBlockId, blockBytes);
        }
    }

    /// <summary>Performs every copy of <paramref name="copies"/> (see <see cref="KvCacheManager.PendingCopies"/>).</summary>
    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        foreach (var c in copies) CopyBlock(c.SourceBlockId, c.DestinationBlockId);
    }

    void IKvBlockStorage.ReadBlock(int layer, int blockId, Span<byte> keys, Span<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        ObjectDisposedException.ThrowIf(_disposed, this);
        long offset = (long)blockId * keys.Length;
        new ReadOnlySpan<byte>((byte*)_keys[layer] + offset, keys.Length).CopyTo(keys);
        new ReadOnlySpan<byte>((byte*)_values[layer] + offset, values.Length).CopyTo(values);
    }

    void IKvBlockStorage.WriteBlock(int layer, int blockId, ReadOnlySpan<byte> keys, ReadOnlySpan<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        ObjectDisposedException.ThrowIf(_disposed, this);
        long offset = (long)blockId * keys.Length;
        keys.CopyTo(new Span<byte>((byte*)_keys[layer] + offset, keys.Length));
        values.CopyTo(new Span<byte>((byte*)_values[layer] + offset, values.Length));
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Free();
        GC.RemoveMemoryPressure(ByteCount);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the native memory of a storage that was not disposed.</summary>
    ~KvCacheStorage()
    {
        // NOTE: a constructor that threw on its arguments left nothing allocated (and no memory pressure added).
        if (_disposed || _keys is null) return;
        Free();
        GC.RemoveMemoryPressure(ByteCount);
    }

    private static void CopyBytes(void* layer, int src, int dst, int blockBytes)
    {
        var from = new ReadOnlySpan<byte>((byte*)layer + (long)src * blockBytes, blockBytes);
        from.CopyTo(new Span<byte>((byte*)layer + (long)dst * blockBytes, blockBytes));
    }

    private Span<T> Layer<T>(void*[] tensors, int layer) where T : unmanaged
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, LayerCount);
        bool ok = DataType switch
        {
            KvCacheDataType.Float32 => typeof(T) == typeof(float),
            KvCacheDataType.Float16 => typeof(T) == typeof(Half),
            _ => false,
        };
        if (!ok) throw new InvalidOperationException($"The KV cache holds {DataType}; {typeof(T).Name} was requested.");
        return new Span<T>(tensors[layer], ElementsPerLayer);
    }

    private Span<byte> LayerBytes(void*[] tensors, int layer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, LayerCount);
        return new Span<byte>(tensors[layer], checked((int)BytesPerLayer));
    }

    private void Free()
    {
        for (int l = 0; l < LayerCount; l++)
        {
            if (_keys[l] != null) NativeMemory.AlignedFree(_keys[l]);
            if (_values[l] != null) NativeMemory.AlignedFree(_values[l]);
            _keys[l] = _values[l] = null;
        }
    }
}
