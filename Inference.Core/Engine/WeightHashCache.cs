using System.IO.Hashing;
using System.Text;
using Inference.Loading;
using Inference.Models;

namespace Inference.Engine;

/// <summary>
/// The hash of every weight that prefix files carry (<see cref="LlamaModel.HashWeights"/>), with its per-tensor hashes
/// cached in a small file between runs so that it is not recomputed from every weight byte each time a model is loaded.
/// </summary>
/// <remarks>
/// <para>
/// The cache file is keyed by the model's files (name, size, last write time, and an XXH3-128 of their first and last
/// 64 KiB) and the quantization the weights were bound with. It is read only when its own checksum, its key and the
/// model's tensor list (names, types, shapes, in order) all match, and even then it is not trusted blindly: a random
/// sample of tensors (at least two, about one in sixteen) is hashed again and must match, so a model edited in place
/// with its size and time kept is caught when an edited tensor is sampled. Anything else (no file, a stale, corrupt or
/// edited one) means every tensor is hashed and the file rewritten; a file that cannot be written is not an error.
/// </para>
/// <code>
///  offset  field
///  0       magic "INFWHASH"
///  8       uint32 version (1)
///  12      uint128 key
///  28      int32 tensor count n
///  32      n × (uint16 length, UTF-8 "name/type/rowsxcols", uint128 hash)
///  …       uint128 XXH3-128 of every byte before it
/// </code>
/// </remarks>
internal sealed class WeightHashCache
{
    private static ReadOnlySpan<byte> Magic => "INFWHASH"u8;
    private const uint Version = 1;
    private const int MaxFileBytes = 64 << 20;
    private const int EdgeBytes = 64 << 10;

    private readonly LlamaModel _model;
    private readonly string? _path;
    private readonly IReadOnlyList<string> _sources;
    private readonly string _binding;

    /// <param name="model">The model whose bound weights are hashed.</param>
    /// <param name="path">The cache file, or null to hash every time.</param>
    /// <param name="sources">The files the weights were read from (key of the cache).</param>
    /// <param name="binding">How the weights were bound (a quantization preset, or the stored types).</param>
    public WeightHashCache(LlamaModel model, string? path, IReadOnlyList<string> sources, string binding)
    {
        _model = model;
        _path = path;
        _sources = sources;
        _binding = binding;
    }

    /// <summary>What the latest <see cref="GetHash"/> did: tests read it.</summary>
    public WeightHashCacheOutcome Outcome { get; private set; }

    /// <summary>Tensors hashed by the latest <see cref="GetHash"/> (the sample, or all of them).</summary>
    public int TensorsHashed { get; private set; }

    /// <summary>The cache file for <paramref name="modelPath"/> in <paramref name="directory"/> (null: the user's cache folder; "": none).</summary>
    public static string? PathFor(string modelPath, string? directory)
    {
        if (directory is { Length: 0 }) return null;
        directory ??= DefaultDirectory();
        if (directory is null) return null;
        string full = System.IO.Path.GetFullPath(modelPath);
        ulong id = XxHash64.HashToUInt64(Encoding.UTF8.GetBytes(full));
        return System.IO.Path.Combine(directory, $"{System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(full))}-{id:x16}.whash");
    }

    private static string? DefaultDirectory()
    {
        string? root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (string.IsNullOrEmpty(root))
        {
            root = OperatingSystem.IsWindows()
                ? Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData)
                : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile) is { Length: > 0 } home ? System.IO.Path.Combine(home, ".cache") : null;
        }
        return string.IsNullOrEmpty(root) ? null : System.IO.Path.Combine(root, "inference", "weight-hashes");
    }

    /// <summary>The hash of every weight, from the cache when it holds and passes the checks, else computed (and cached).</summary>
    public UInt128 GetHash()
    {
        var descriptors = _model.DescribeWeights();
        UInt128 key;
        try
        {
            key = Key();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The model's files cannot be read for the key: no cache.
            return Compute(descriptors, null, default, WeightHashCacheOutcome.NotCached);
        }
        if (_path is null) return Compute(descriptors, null, key, WeightHashCacheOutcome.NotCached);
        var cached = Read(_path, key, descriptors, out var why);
        if (cached is null) return Compute(descriptors, _path, key, why);
        // NOTE: never trusted blindly: a random sample of tensors is hashed again.
        int n = descriptors.Length, sample = Math.Min(n, Math.Max(2, n / 16));
        var picked = new HashSet<int>();
        while (picked.Count < sample) picked.Add(Random.Shared.Next(n));
        foreach (int i in picked)
        {
            if (_model.HashWeight(i) != cached[i]) return Compute(descriptors, _path, key, WeightHashCacheOutcome.RebuiltSampleMismatch);
        }
        TensorsHashed = sample;
        Outcome = WeightHashCacheOutcome.FromCache;
        return LlamaModel.CombineWeightHashes(descriptors, cached);
    }

    private UInt128 Compute(string[] descriptors, string? path, UInt128 key, WeightHashCacheOutcome outcome)
    {
        var hashes = new UInt128[descriptors.Length];
        Parallel.For(0, hashes.Length, i => hashes[i] = _model.HashWeight(i));
        TensorsHashed = hashes.Length;
        Outcome = outcome;
        if (path is not null) TryWrite(path, key, descriptors, hashes);
        return LlamaModel.CombineWeightHashes(descriptors, hashes);
    }

    internal string[] DescribeForTests() => _model.DescribeWeights();

    internal UInt128 KeyForTests() => Key();

    /// <summary>The cache key: each source file's name, size, time and edges, and the binding.</summary>
    private UInt128 Key()
    {
        var key = new XxHash128();
        key.Append(Encoding.UTF8.GetBytes(_binding + "\n"));
        var edge = new byte[EdgeBytes];
        foreach (var file in _sources)
        {
            var info = MappedMemory.FileOf(file);
            key.Append(Encoding.UTF8.GetBytes($"{info.Name}/{info.Length}/{info.LastWriteTimeUtc.Ticks}\n"));
            using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            int read = stream.ReadAtLeast(edge, edge.Length, throwOnEndOfStream: false);
            key.Append(edge.AsSpan(0, read));
            if (stream.Length > EdgeBytes)
            {
                stream.Position = Math.Max(EdgeBytes, stream.Length - EdgeBytes);
                read = stream.ReadAtLeast(edge, edge.Length, throwOnEndOfStream: false);
                key.Append(edge.AsSpan(0, read));
            }
        }
        return key.GetCurrentHashAsUInt128();
    }

    /// <summary>The cached per-tensor hashes, or null (with the reason) when the file is missing, stale or corrupt.</summary>
    internal static UInt128[]? Read(string path, UInt128 key, string[] descriptors, out WeightHashCacheOutcome why)
    {
        byte[] bytes;
        try
        {
            var info = MappedMemory.FileOf(path);
            if (!info.Exists)
            {
                why = WeightHashCacheOutcome.Created;
                return null;
            }
            if (info.Length > MaxFileBytes)
            {
                why = WeightHashCacheOutcome.RebuiltCorrupt;
                return null;
            }
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            why = WeightHashCacheOutcome.RebuiltCorrupt;
            return null;
        }
        why = WeightHashCacheOutcome.RebuiltCorrupt;
        if (bytes.Length < 48 || !bytes.AsSpan(0, 8).SequenceEqual(Magic) || BitConverter.ToUInt32(bytes, 8) != Version) return null;
        if (ReadUInt128(bytes, bytes.Length - 16) != XxHash128.HashToUInt128(bytes.AsSpan(0, bytes.Length - 16))) return null;
        if (ReadUInt128(bytes, 12) != key)
        {
            why = WeightHashCacheOutcome.RebuiltStale;
            return null;
        }
        int count = BitConverter.ToInt32(bytes, 28);
        if (count != descriptors.Length)
        {
            why = WeightHashCacheOutcome.RebuiltStale;
            return null;
        }
        var hashes = new UInt128[count];
        int at = 32, end = bytes.Length - 16;
        for (int i = 0; i < count; i++)
        {
            if (at + 2 > end) return null;
            int length = BitConverter.ToUInt16(bytes, at);
            at += 2;
            if (at + length + 16 > end) return null;
            if (!Encoding.UTF8.GetString(bytes, at, length).Equals(descriptors[i], StringComparison.Ordinal))
            {
                why = WeightHashCacheOutcome.RebuiltStale;
                return null;
            }
            at += length;
            hashes[i] = ReadUInt128(bytes, at);
            at += 16;
        }
        return at == end ? hashes : null;
    }

    /// <summary>Writes the cache file (through a temporary file, so a reader never sees half of it); failures are ignored.</summary>
    internal static void TryWrite(string path, UInt128 key, string[] descriptors, UInt128[] hashes)
    {
        string? temp = null;
        try
        {
            using var buffer = new MemoryStream();
            using (var w = new BinaryWriter(buffer, Encoding.UTF8, leaveOpen: true))
            {
                w.Write(Magic);
                w.Write(Version);
                WriteUInt128(w, key);
                w.Write(descriptors.Length);
                for (int i = 0; i < descriptors.Length; i++)
                {
                    var name = Encoding.UTF8.GetBytes(descriptors[i]);
                    w.Write(checked((ushort)name.Length));
                    w.Write(name);
                    WriteUInt128(w, hashes[i]);
                }
                w.Flush();
                WriteUInt128(w, XxHash128.HashToUInt128(buffer.GetBuffer().AsSpan(0, (int)buffer.Length)));
            }
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);
            temp = path + "." + Environment.ProcessId + "." + Guid.NewGuid().ToString("N") + ".tmp";
            File.WriteAllBytes(temp, buffer.ToArray());
            File.Move(temp, path, overwrite: true);
            temp = null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OverflowException or NotSupportedException or ArgumentException)
        {
            // NOTE: a cache that cannot be written costs the next run the hashing, nothing else.
        }
        finally
        {
            if (temp is not null)
            {
                try { File.Delete(temp); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            }
        }
    }

    private static UInt128 ReadUInt128(byte[] bytes, int at) => new(BitConverter.ToUInt64(bytes, at + 8), BitConverter.ToUInt64(bytes, at));

    private static void WriteUInt128(BinaryWriter w, UInt128 value)
    {
        w.Write((ulong)value);
        w.Write((ulong)(value >> 64));
    }
}

/// <summary>What <see cref="WeightHashCache.GetHash"/> did.</summary>
internal enum WeightHashCacheOutcome
{
    /// <summary>Not computed yet.</summary>
    None,
    /// <summary>Every tensor hashed; no cache file is used.</summary>
    NotCached,
    /// <summary>Every tensor hashed; there was no cache file (one is written where possible).</summary>
    Created,
    /// <summary>The cache file was used (and a sample of tensors checked against it).</summary>
    FromCache,
    /// <summary>The cache file belonged to other model files, another binding or another tensor list: rebuilt.</summary>
    RebuiltStale,
    /// <summary>The cache file was unreadable, malformed or failed its checksum: rebuilt.</summary>
    RebuiltCorrupt,
    /// <summary>The cache file passed its checks but a sampled tensor hashed differently: rebuilt.</summary>
    RebuiltSampleMismatch,
}
