using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;

namespace Inference.KvCache;

/// <summary>
/// Identity of a full KV block: a 128-bit XxHash of (parent block hash, the block's token ids), seeded with a salt
/// that identifies everything else the keys and values depend on (model, tokenizer, RoPE configuration, KV dtype).
/// </summary>
/// <remarks>
/// Chaining makes the hash of block i stand for the whole prefix 0..i, so equal hashes mean equal prefixes
/// (up to collisions, which <see cref="KvCacheManager"/> guards against by comparing token ids on every hit).
/// </remarks>
public readonly struct BlockHash : IEquatable<BlockHash>
{
    /// <summary>Creates a hash from its 128-bit value.</summary>
    public BlockHash(UInt128 value) => Value = value;

    /// <summary>The parent of the first block of every sequence.</summary>
    public static BlockHash Root => default;

    /// <summary>The 128-bit hash value.</summary>
    public UInt128 Value { get; }

    /// <summary>Hash of a full block with token ids <paramref name="tokenIds"/> that follows <paramref name="parent"/>.</summary>
    /// <exception cref="ArgumentException">More than <see cref="KvCacheOptions.MaxBlockSize"/> token ids.</exception>
    public static BlockHash Compute(BlockHash parent, ReadOnlySpan<int> tokenIds, long salt)
    {
        if (tokenIds.Length > KvCacheOptions.MaxBlockSize)
            throw new ArgumentException($"A block holds at most {KvCacheOptions.MaxBlockSize} tokens.", nameof(tokenIds));
        // NOTE: explicit little-endian bytes so a hash means the same on every machine.
        Span<byte> buffer = stackalloc byte[16 + 4 * KvCacheOptions.MaxBlockSize];
        BinaryPrimitives.WriteUInt128LittleEndian(buffer, parent.Value);
        for (int i = 0; i < tokenIds.Length; i++)
            BinaryPrimitives.WriteInt32LittleEndian(buffer.Slice(16 + 4 * i, 4), tokenIds[i]);
        return new BlockHash(XxHash128.HashToUInt128(buffer[..(16 + 4 * tokenIds.Length)], salt));
    }

    /// <summary>
    /// Hashes of the leading full blocks of <paramref name="tokenIds"/>, chained from <see cref="Root"/> exactly as the
    /// KV cache chains them: <c>destination[i]</c> stands for tokens <c>0 .. (i + 1) · blockSize − 1</c>.
    /// </summary>
    /// <param name="tokenIds">The token ids (a prompt); a partial last block is not hashed.</param>
    /// <param name="blockSize">Tokens per block, 1 to <see cref="KvCacheOptions.MaxBlockSize"/>.</param>
    /// <param name="salt">The cache's salt (see <c>InferenceEngine.PrefixSalt</c>).</param>
    /// <param name="destination">Receives at most its length of hashes.</param>
    /// <returns>How many hashes were written: min(full blocks, destination length).</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="blockSize"/> is out of range.</exception>
    public static int ComputeChain(ReadOnlySpan<int> tokenIds, int blockSize, long salt, Span<BlockHash> destination)
    {
        if (blockSize is < 1 or > KvCacheOptions.MaxBlockSize)
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, $"blockSize must be in [1, {KvCacheOptions.MaxBlockSize}].");
        int count = Math.Min(tokenIds.Length / blockSize, destination.Length);
        var parent = Root;
        for (int i = 0; i < count; i++)
        {
            parent = Compute(parent, tokenIds.Slice(i * blockSize, blockSize), salt);
            destination[i] = parent;
        }
        return count;
    }

    /// <summary>
    /// A salt for <see cref="Compute"/> that keeps cached blocks of different models, tokenizers, RoPE settings or KV
    /// element types apart. Pass strings that change whenever the keys and values would (file hash, scaling settings...).
    /// </summary>
    public static long CreateSalt(string modelIdentity, string tokenizerIdentity, string ropeConfiguration, KvCacheDataType dataType)
    {
        ArgumentNullException.ThrowIfNull(modelIdentity);
        ArgumentNullException.ThrowIfNull(tokenizerIdentity);
        ArgumentNullException.ThrowIfNull(ropeConfiguration);
        var text = string.Join('\u001f', modelIdentity, tokenizerIdentity, ropeConfiguration, dataType.ToString());
        return (long)XxHash64.HashToUInt64(Encoding.UTF8.GetBytes(text));
    }

    /// <inheritdoc />
    public bool Equals(BlockHash other) => Value == other.Value;

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is BlockHash other && Equals(other);

    /// <inheritdoc />
    public override int GetHashCode() => (int)(ulong)Value ^ (int)((ulong)Value >> 32);

    /// <summary>Equality of hash values.</summary>
    public static bool operator ==(BlockHash left, BlockHash right) => left.Equals(right);

    /// <summary>Inequality of hash values.</summary>
    public static bool operator !=(BlockHash left, BlockHash right) => !left.Equals(right);

    /// <inheritdoc />
    public override string ToString() => Value.ToString("x32");
}
