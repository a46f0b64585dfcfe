using System.IO.Hashing;
using Inference.KvCache;
using Inference.Loading;

namespace Inference.Engine;

/// <summary>
/// A shippable prefix: the full KV blocks of a computed prompt, their tokens and the identity of the model that made
/// them, so an application can ship a precomputed system prompt and skip its prefill.
/// </summary>
/// <remarks>
/// <code>
///  offset  field
///  0       magic "INFKVPF1"
///  8       uint32 version (2)
///  12      uint64 × 4 identity: model, tokenizer, RoPE, KV type
///  44      int32 blockSize, layerCount, kvHeads, headDim, dataType (0 = f32, 1 = f16), blockCount
///  68      uint128 hash of every weight (LlamaModel.HashWeights)
///  84      uint128 XXH3-128 of every other byte of the file (the header before it, then everything from offset 100)
///  100     int32 × (blockCount · blockSize) token ids
///  …       padding to 64
///  data    for each block, for each layer: K [blockSize, kvHeads, headDim], then V, in the data type
/// </code>
/// A file is refused (<see cref="ModelFormatException"/>) when any identity part, the weights hash or the layout differs
/// from the engine's, or when the checksum does not match its bytes (a corrupt or edited file).
/// </remarks>
internal static class PrefixFile
{
    private static ReadOnlySpan<byte> Magic => "INFKVPF1"u8;
    private const uint Version = 2;
    private const int HeaderBytes = 100;
    private const int WeightsOffset = 68, ChecksumOffset = 84;

    /// <summary>Writes the first <paramref name="blockCount"/> blocks of <paramref name="blockTable"/>.</summary>
    public static void Write(string path, PrefixIdentity identity, IKvBlockStorage storage, ReadOnlySpan<int> tokens, ReadOnlySpan<int> blockTable, int blockCount)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
        using var w = new BinaryWriter(stream);
        w.Write(Magic);
        w.Write(Version);
        w.Write(identity.Model);
        w.Write(identity.Tokenizer);
        w.Write(identity.Rope);
        w.Write(identity.Kv);
        w.Write(storage.BlockSize);
        w.Write(storage.LayerCount);
        w.Write(storage.KvHeadCount);
        w.Write(storage.HeadDim);
        w.Write((int)storage.DataType);
        w.Write(blockCount);
        WriteUInt128(w, identity.Weights?.Value ?? 0);
        WriteUInt128(w, 0); // the checksum, written last
        var body = new List<byte>();
        for (int i = 0; i < blockCount * storage.BlockSize; i++) body.AddRange(BitConverter.GetBytes(tokens[i]));
        while ((HeaderBytes + body.Count) % 64 != 0) body.Add(0);
        w.Write(body.ToArray());
        int bytes = KvBlockStorage.LayerBlockByteCount(storage);
        var keys = new byte[bytes];
        var values = new byte[bytes];
        foreach (int block in blockTable[..blockCount])
        {
            for (int l = 0; l < storage.LayerCount; l++)
            {
                storage.ReadBlock(l, block, keys, values);
                w.Write(keys);
                w.Write(values);
            }
        }
        w.Flush();
        // The checksum covers every byte but its own: the file is read back once (from the page cache).
        var checksum = new XxHash128();
        var buffer = new byte[1 << 20];
        stream.Position = 0;
        stream.ReadExactly(buffer, 0, ChecksumOffset);
        checksum.Append(buffer.AsSpan(0, ChecksumOffset));
        stream.Position = HeaderBytes;
        int read;
        while ((read = stream.Read(buffer)) > 0) checksum.Append(buffer.AsSpan(0, read));
        stream.Position = ChecksumOffset;
        WriteUInt128(w, checksum.GetCurrentHashAsUInt128());
    }

    private static void WriteUInt128(BinaryWriter w, UInt128 value)
    {
        w.Write((ulong)value);
        w.Write((ulong)(value >> 64));
    }

    private static unsafe UInt128 ReadUInt128(byte* p) => new(*(ulong*)(p + 8), *(ulong*)p);

    /// <summary>A validated prefix file, memory-mapped for reading.</summary>
    public sealed unsafe class Reader : IDisposable
    {
        private readonly MappedMemory _memory;
        private readonly long _dataOffset;

        private Reader(MappedMemory memory, int[] tokens, int blockCount, long dataOffset)
        {
            _memory = memory;
            Tokens = tokens;
            BlockCount = blockCount;
            _dataOffset = dataOffset;
        }

        public int[] Tokens { get; }
        public int BlockCount { get; }

        /// <summary>Opens <paramref name="path"/> and checks it against this engine's identity and cache layout.</summary>
        /// <exception cref="ModelFormatException">
        /// The file is malformed or corrupt (its checksum does not match), or was made by another model (other weights
        /// of the same shapes included), tokenizer, RoPE configuration or KV type.
        /// </exception>
        public static Reader Open(string path, PrefixIdentity identity, IKvBlockStorage storage)
        {
            var memory = MappedMemory.OpenFile(path, HeaderBytes, "prefix");
            try
            {
                byte* p = memory.Pointer;
                long length = memory.Length;
                if (!new ReadOnlySpan<byte>(p, 8).SequenceEqual(Magic)) throw new ModelFormatException(path, 0, "bad magic, expected 'INFKVPF1' (not a prefix file)");
                uint version = *(uint*)(p + 8);
                if (version != Version) throw new ModelFormatException(path, 8, $"unsupported prefix file version {version} (expected {Version}; save the prefix again)");
                var checksum = new XxHash128();
                checksum.Append(new ReadOnlySpan<byte>(p, ChecksumOffset));
                for (long at = HeaderBytes; at < length; at += 1 << 30)
                    checksum.Append(new ReadOnlySpan<byte>(p + at, (int)Math.Min(1 << 30, length - at)));
                if (ReadUInt128(p + ChecksumOffset) != checksum.GetCurrentHashAsUInt128())
                    throw new ModelFormatException(path, ChecksumOffset, "checksum mismatch: the file is corrupt, truncated or was edited; refusing it");
                Check(path, 12, *(ulong*)(p + 12), identity.Model, "another model");
                Check(path, 20, *(ulong*)(p + 20), identity.Tokenizer, "another tokenizer");
                Check(path, 28, *(ulong*)(p + 28), identity.Rope, "another RoPE configuration");
                Check(path, 36, *(ulong*)(p + 36), identity.Kv, "another KV cache type or block size");
                int[] layout = new ReadOnlySpan<int>(p + 44, 5).ToArray();
                int[] expected = [storage.BlockSize, storage.LayerCount, storage.KvHeadCount, storage.HeadDim, (int)storage.DataType];
                if (!layout.AsSpan().SequenceEqual(expected))
                    throw new ModelFormatException(path, 44, $"cache layout [{string.Join(", ", layout)}] differs from this engine's [{string.Join(", ", expected)}] (block size, layers, KV heads, head size, type)");
                int blockCount = *(int*)(p + 64);
                long blockBytes = KvCacheStorage.GetBlockByteCount(storage.LayerCount, storage.BlockSize, storage.KvHeadCount, storage.HeadDim, storage.DataType);
                if (blockCount < 1 || blockCount > (length - HeaderBytes) / (blockBytes + 4L * storage.BlockSize))
                    throw new ModelFormatException(path, 64, $"block count {blockCount} does not fit the file ({length} bytes)");
                int tokenCount = blockCount * storage.BlockSize;
                var tokens = new ReadOnlySpan<int>(p + HeaderBytes, tokenCount).ToArray();
                long dataOffset = (HeaderBytes + 4L * tokenCount + 63) / 64 * 64;
                if (dataOffset + blockCount * blockBytes != length)
                    throw new ModelFormatException(path, dataOffset, $"expected {blockCount * blockBytes} bytes of KV data after offset {dataOffset}, the file has {length - dataOffset}");
                if (identity.Weights is { } weights && ReadUInt128(p + WeightsOffset) != weights.Value)
                    throw new ModelFormatException(path, WeightsOffset, "the prefix was computed with other weights of the same shapes (a fine-tune or another quantization of this model?); refusing it");
                return new Reader(memory, tokens, blockCount, dataOffset);
            }
            catch
            {
                memory.Dispose();
                throw;
            }
        }

        private static void Check(string path, long offset, ulong actual, ulong expected, string what)
        {
            if (actual != expected) throw new ModelFormatException(path, offset, $"the prefix was computed with {what} (identity {actual:x16}, this engine {expected:x16}); refusing it");
        }

        /// <summary>Copies block <paramref name="index"/> of the file into pool block <paramref name="block"/>.</summary>
        public void CopyInto(IKvBlockStorage storage, int index, int block)
        {
            int bytes = KvBlockStorage.LayerBlockByteCount(storage);
            byte* p = _memory.Pointer + _dataOffset + (long)index * 2 * storage.LayerCount * bytes;
            for (int l = 0; l < storage.LayerCount; l++)
            {
                storage.WriteBlock(l, block, new ReadOnlySpan<byte>(p, bytes), new ReadOnlySpan<byte>(p + bytes, bytes));
                p += 2 * bytes;
            }
        }

        public void Dispose() => _memory.Dispose();
    }
}
