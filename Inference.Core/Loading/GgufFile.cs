using System.Text;

namespace Inference.Loading;

/// <summary>
/// A GGUF file (versions 2 and 3), memory-mapped read-only. The header is parsed eagerly and validated against the file
/// before anything is allocated; tensor data stays in the mapping and is never copied onto the managed heap.
/// </summary>
/// <remarks>
/// Layout: magic "GGUF", uint32 version, uint64 tensor count, uint64 metadata count, the metadata entries, the tensor
/// infos (name, dimension count, dimensions as ggml <c>ne</c>, type, offset relative to the data section), padding up to
/// <c>general.alignment</c> (default 32), then the data section. All little-endian.
/// Every failure is a <see cref="ModelFormatException"/> naming the file, the offset and the reason.
/// </remarks>
public sealed unsafe class GgufFile : IDisposable
{
    /// <summary>Largest accepted alignment.</summary>
    public const uint MaxAlignment = 1 << 16;
    /// <summary>Largest accepted number of tensor dimensions (ggml's GGML_MAX_DIMS).</summary>
    public const int MaxDimensions = 4;
    /// <summary>Largest accepted length of a metadata key or tensor name, in bytes.</summary>
    public const int MaxNameBytes = 1 << 16;
    /// <summary>Largest accepted metadata string value, in bytes (a .NET string holds at most about 2^30 UTF-16 chars; this leaves room for any encoding).</summary>
    public const int MaxStringBytes = 1 << 29;
    /// <summary>Largest accepted tensor count or metadata count.</summary>
    public const int MaxEntryCount = 1 << 24;
    /// <summary>Largest accepted nesting of arrays inside arrays.</summary>
    public const int MaxArrayNesting = 4;

    private const uint Magic = 0x46554747; // "GGUF" little-endian

    private readonly MappedMemory _memory;
    private byte* _base;
    private readonly Dictionary<string, GgufValue> _metadata;
    private readonly Dictionary<string, GgufTensorInfo> _tensorsByName;

    private GgufFile(string path, MappedMemory memory)
    {
        FilePath = path;
        FileLength = memory.Length;
        _memory = memory;
        _base = memory.Pointer;
        _metadata = new Dictionary<string, GgufValue>(StringComparer.Ordinal);
        _tensorsByName = new Dictionary<string, GgufTensorInfo>(StringComparer.Ordinal);
        MetadataKeys = new List<string>();
        Tensors = new List<GgufTensorInfo>();
    }

    /// <summary>Path the file was opened from.</summary>
    public string FilePath { get; }

    /// <summary>File size in bytes.</summary>
    public long FileLength { get; }

    /// <summary>GGUF version (2 or 3).</summary>
    public uint Version { get; private set; }

    /// <summary>Alignment of the data section and of every tensor offset.</summary>
    public uint Alignment { get; private set; } = 32;

    /// <summary>Absolute offset of the data section.</summary>
    public long DataSectionOffset { get; private set; }

    /// <summary>Metadata keys in file order.</summary>
    public IReadOnlyList<string> MetadataKeys { get; }

    /// <summary>Metadata by key.</summary>
    public IReadOnlyDictionary<string, GgufValue> Metadata => _metadata;

    /// <summary>Tensor infos in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    /// <summary>Opens and validates <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="ModelFormatException">The file is not a valid GGUF file.</exception>
    public static GgufFile Open(string path)
    {
        var memory = MappedMemory.OpenFile(path, 24, "GGUF");
        return MappedMemory.Parse(new GgufFile(path, memory), static f => f.Parse());
    }

    /// <summary>
    /// Parses a GGUF image held in memory (the fuzz harness and the mutation tests use this to avoid disk I/O).
    /// <paramref name="displayPath"/> only names the buffer in error messages.
    /// </summary>
    /// <remarks>NOTE: this shares <see cref="Parse"/> with <see cref="Open"/>; there is one parsing code path.</remarks>
    internal static GgufFile OpenBuffer(byte[] buffer, string displayPath) =>
        MappedMemory.Parse(new GgufFile(displayPath, MappedMemory.Pin(buffer)), static f => f.Parse());

    /// <summary>Finds a tensor by name.</summary>
    public GgufTensorInfo? FindTensor(string name) => _tensorsByName.GetValueOrDefault(name);

    /// <summary>Finds a tensor by name or throws a <see cref="ModelFormatException"/> saying it is missing.</summary>
    public GgufTensorInfo GetTensor(string name) =>
        FindTensor(name) ?? throw new ModelFormatException(FilePath, -1, $"tensor {Quote(name)} is missing");

    /// <summary>The bytes of a tensor (valid while the file is open).</summary>
    public ReadOnlySpan<byte> GetTensorBytes(GgufTensorInfo tensor)
    {
        ObjectDisposedException.ThrowIf(_base == null, this);
        if (tensor.ByteCount > int.MaxValue)
            throw new NotSupportedException($"{FilePath}: tensor {Quote(tensor.Name)} is larger than 2 GiB; use row access");
        return new ReadOnlySpan<byte>(_base + tensor.DataOffset, (int)tensor.ByteCount);
    }

    /// <summary>Pointer to a tensor's data (valid while the file is open).</summary>
    internal byte* GetTensorPointer(GgufTensorInfo tensor)
    {
        ObjectDisposedException.ThrowIf(_base == null, this);
        return _base + tensor.DataOffset;
    }

    // ---- typed metadata access -------------------------------------------------------------------------------------

    /// <summary>The string at <paramref name="key"/>, or null when absent.</summary>
    public string? GetString(string key)
    {
        if (!_metadata.TryGetValue(key, out var v)) return null;
        return v.Value as string ?? throw Bad(v.Offset, $"metadata {Quote(key)} is {v.Type}, expected String");
    }

    /// <summary>An integer scalar of any width at <paramref name="key"/>, or null when absent.</summary>
    public long? GetInteger(string key)
    {
        if (!_metadata.TryGetValue(key, out var v)) return null;
        return v.Value switch
        {
            byte b => b,
            sbyte b => b,
            ushort s => s,
            short s => s,
            uint u => u,
            int i => i,
            long l => l,
            ulong ul when ul <= long.MaxValue => (long)ul,
            bool b => b ? 1 : 0,
            _ => throw Bad(v.Offset, $"metadata {Quote(key)} is {v.Type}, expected an integer"),
        };
    }

    /// <summary>A float scalar (any float or integer type) at <paramref name="key"/>, or null when absent.</summary>
    public double? GetFloat(string key)
    {
        if (!_metadata.TryGetValue(key, out var v)) return null;
        return v.Value switch
        {
            float f => f,
            double d => d,
            _ when v.IsInteger => GetInteger(key),
            _ => throw Bad(v.Offset, $"metadata {Quote(key)} is {v.Type}, expected a float"),
        };
    }

    /// <summary>A bool at <paramref name="key"/>, or null when absent.</summary>
    public bool? GetBool(string key)
    {
        if (!_metadata.TryGetValue(key, out var v)) return null;
        return v.Value switch
        {
            bool b => b,
            _ when v.IsInteger => GetInteger(key) != 0,
            _ => throw Bad(v.Offset, $"metadata {Quote(key)} is {v.Type}, expected Bool"),
        };
    }

    /// <summary>An array of <typeparamref name="T"/> at <paramref name="key"/>, or null when absent.</summary>
    public T[]? GetArray<T>(string key)
    {
        if (!_metadata.TryGetValue(key, out var v)) return null;
        return v.Value as T[] ?? throw Bad(v.Offset, $"metadata {Quote(key)} is {v.Type} of {v.ElementType}, expected an array of {typeof(T).Name}");
    }

    /// <summary>An integer array of any width at <paramref name="key"/> widened to int, or null when absent.</summary>
    public int[]? GetIntArray(string key)
    {
        if (!_metadata.TryGetValue(key, out var v)) return null;
        return v.Value switch
        {
            int[] a => a,
            uint[] a => Array.ConvertAll(a, x => unchecked((int)x)),
            byte[] a => Array.ConvertAll(a, x => (int)x),
            sbyte[] a => Array.ConvertAll(a, x => (int)x),
            short[] a => Array.ConvertAll(a, x => (int)x),
            ushort[] a => Array.ConvertAll(a, x => (int)x),
            long[] a => Array.ConvertAll(a, x => unchecked((int)x)),
            ulong[] a => Array.ConvertAll(a, x => unchecked((int)x)),
            _ => throw Bad(v.Offset, $"metadata {Quote(key)} is {v.Type} of {v.ElementType}, expected an integer array"),
        };
    }

    /// <summary>
    /// Quotes a key or tensor name read from the file for an error message: control characters are escaped and long names
    /// cut, so the message stays one short line whatever the file holds.
    /// </summary>
    internal static string Quote(string s)
    {
        const int maxChars = 80;
        var sb = new StringBuilder(Math.Min(s.Length, maxChars) + 16);
        sb.Append('\'');
        int i = 0;
        for (; i < s.Length && sb.Length <= maxChars; i++)
        {
            char c = s[i];
            if (char.IsControl(c) || char.IsSurrogate(c) || c is '\u2028' or '\u2029') sb.Append($"\\u{(int)c:X4}");
            else sb.Append(c);
        }
        sb.Append('\'');
        if (i < s.Length) sb.Append($" (cut, {s.Length} chars)");
        return sb.ToString();
    }

    /// <summary>Creates a <see cref="ModelFormatException"/> for this file.</summary>
    internal ModelFormatException Bad(long offset, string reason) => new(FilePath, offset, reason);

    /// <inheritdoc />
    public void Dispose()
    {
        _base = null;
        _memory.Dispose();
    }

    // ---- parsing ---------------------------------------------------------------------------------------------------

    private long _pos;

    private void Need(long bytes, string what)
    {
        if (bytes < 0 || bytes > FileLength - _pos)
            throw Bad(_pos, $"truncated: {what} needs {bytes} bytes but {FileLength - _pos} remain");
    }

    private T ReadScalar<T>(string what) where T : unmanaged
    {
        Need(sizeof(T), what);
        T v = *(T*)(_base + _pos); // unaligned reads are fine on x64/arm64
        _pos += sizeof(T);
        return v;
    }

    private string ReadString(string what, long maxBytes)
    {
        long at = _pos;
        ulong len = ReadScalar<ulong>(what + " length");
        if (len > (ulong)maxBytes) throw Bad(at, $"{what} length {len} exceeds the limit of {maxBytes} bytes");
        Need((long)len, what);
        var s = Encoding.UTF8.GetString(_base + _pos, (int)len);
        _pos += (long)len;
        return s;
    }

    private void Parse()
    {
        if (FileLength < 24) throw Bad(0, $"file is {FileLength} bytes, too short for a GGUF header (24 bytes)");
        uint magic = ReadScalar<uint>("magic");
        if (magic != Magic) throw Bad(0, $"bad magic 0x{magic:X8}, expected 'GGUF'");
        Version = ReadScalar<uint>("version");
        if (Version is not (2 or 3))
            throw Bad(4, $"unsupported GGUF version {Version} (expected 2 or 3{(Version > 0xFFFF ? "; big-endian files are not supported" : "")})");

        long countAt = _pos;
        ulong tensorCount = ReadScalar<ulong>("tensor count");
        ulong kvCount = ReadScalar<ulong>("metadata count");
        // Each metadata entry takes at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes;
        // each tensor info at least 8 + 1 + 4 + 8 + 4 + 8.
        long remaining = FileLength - _pos;
        if (kvCount > (ulong)(remaining / 14)) throw Bad(countAt + 8, $"metadata count {kvCount} cannot fit in the file");
        if (tensorCount > (ulong)(remaining / 33)) throw Bad(countAt, $"tensor count {tensorCount} cannot fit in the file");
        // NOTE: the fit checks above bound the counts by the file size only; files of tens of GB would still allow counts
        // beyond what a List can hold, so cap them (llama.cpp models have a few thousand tensors and a few dozen keys).
        if (tensorCount > MaxEntryCount) throw Bad(countAt, $"tensor count {tensorCount} exceeds the limit of {MaxEntryCount}");
        if (kvCount > MaxEntryCount) throw Bad(countAt + 8, $"metadata count {kvCount} exceeds the limit of {MaxEntryCount}");

        var keys = (List<string>)MetadataKeys;
        for (ulong i = 0; i < kvCount; i++)
        {
            long keyAt = _pos;
            string key = ReadString("metadata key", MaxNameBytes);
            if (key.Length == 0) throw Bad(keyAt, "empty metadata key");
            long typeAt = _pos;
            var type = (GgufValueType)ReadScalar<uint>("metadata type");
            var value = ReadValue(type, typeAt, 0);
            if (!_metadata.TryAdd(key, value)) throw Bad(keyAt, $"duplicate metadata key {Quote(key)}");
            keys.Add(key);
        }

        if (_metadata.TryGetValue("general.alignment", out var alignValue))
        {
            if (alignValue.Value is not uint a) throw Bad(alignValue.Offset, $"general.alignment is {alignValue.Type}, expected UInt32");
            if (a == 0 || (a & (a - 1)) != 0 || a > MaxAlignment)
                throw Bad(alignValue.Offset, $"general.alignment {a} is not a power of two up to {MaxAlignment}");
            Alignment = a;
        }

        var infos = new List<(string Name, long[] Dims, GgmlType Type, ulong Offset, long At)>((int)tensorCount);
        for (ulong i = 0; i < tensorCount; i++)
        {
            long at = _pos;
            string name = ReadString("tensor name", MaxNameBytes);
            uint nDims = ReadScalar<uint>("tensor dimension count");
            if (nDims is 0 or > MaxDimensions) throw Bad(_pos - 4, $"tensor {Quote(name)} has {nDims} dimensions, expected 1 to {MaxDimensions}");
            var dims = new long[nDims];
            for (int d = 0; d < nDims; d++)
            {
                ulong ne = ReadScalar<ulong>("tensor dimension");
                if (ne == 0 || ne > long.MaxValue) throw Bad(_pos - 8, $"tensor {Quote(name)} dimension {d} is {ne}");
                dims[d] = (long)ne;
            }
            long typeAt = _pos;
            var type = (GgmlType)ReadScalar<uint>("tensor type");
            if (!GgmlTypeInfo.TryGetBlock(type, out _, out _)) throw Bad(typeAt, $"tensor {Quote(name)} has unknown type code {(uint)type}");
            ulong offset = ReadScalar<ulong>("tensor offset");
            infos.Add((name, dims, type, offset, at));
        }

        long headerEnd = _pos;
        DataSectionOffset = AlignUp(headerEnd, Alignment);

        var tensors = (List<GgufTensorInfo>)Tensors;
        foreach (var (name, dims, type, offset, at) in infos)
        {
            GgmlTypeInfo.TryGetBlock(type, out int blockElements, out int blockBytes);
            long elements;
            try
            {
                elements = 1;
                foreach (var d in dims) elements = checked(elements * d);
            }
            catch (OverflowException)
            {
                throw Bad(at, $"tensor {Quote(name)} element count overflows");
            }
            if (dims[0] % blockElements != 0)
                throw Bad(at, $"tensor {Quote(name)} row length {dims[0]} is not a multiple of the {type} block size {blockElements}");
            long bytes;
            try { bytes = checked(elements / blockElements * blockBytes); }
            catch (OverflowException) { throw Bad(at, $"tensor {Quote(name)} byte size overflows"); }
            if (offset % Alignment != 0) throw Bad(at, $"tensor {Quote(name)} offset {offset} is not a multiple of the alignment {Alignment}");
            if (offset > (ulong)FileLength || DataSectionOffset > FileLength - (long)offset || bytes > FileLength - DataSectionOffset - (long)offset)
                throw Bad(at, $"tensor {Quote(name)} data [{DataSectionOffset}+{offset}, +{bytes}) lies outside the file ({FileLength} bytes)");
            var info = new GgufTensorInfo(name, dims, type, DataSectionOffset + (long)offset, bytes);
            if (!_tensorsByName.TryAdd(name, info)) throw Bad(at, $"duplicate tensor name {Quote(name)}");
            tensors.Add(info);
        }

        // Tensor data ranges must not overlap.
        var sorted = tensors.ToArray();
        Array.Sort(sorted, (a, b) => a.DataOffset.CompareTo(b.DataOffset));
        for (int i = 1; i < sorted.Length; i++)
        {
            var prev = sorted[i - 1];
            if (prev.DataOffset + prev.ByteCount > sorted[i].DataOffset)
                throw Bad(sorted[i].DataOffset, $"tensor {Quote(sorted[i].Name)} overlaps tensor {Quote(prev.Name)}");
        }
    }

    private static long AlignUp(long x, uint alignment) => (x + alignment - 1) / alignment * alignment;

    private GgufValue ReadValue(GgufValueType type, long typeAt, int depth)
    {
        long at = _pos;
        object value = type switch
        {
            GgufValueType.UInt8 => ReadScalar<byte>("uint8"),
            GgufValueType.Int8 => ReadScalar<sbyte>("int8"),
            GgufValueType.UInt16 => ReadScalar<ushort>("uint16"),
            GgufValueType.Int16 => ReadScalar<short>("int16"),
            GgufValueType.UInt32 => ReadScalar<uint>("uint32"),
            GgufValueType.Int32 => ReadScalar<int>("int32"),
            GgufValueType.Float32 => ReadScalar<float>("float32"),
            GgufValueType.Bool => ReadBool(),
            GgufValueType.String => ReadString("string", MaxStringBytes),
            GgufValueType.UInt64 => ReadScalar<ulong>("uint64"),
            GgufValueType.Int64 => ReadScalar<long>("int64"),
            GgufValueType.Float64 => ReadScalar<double>("float64"),
            GgufValueType.Array => ReadArray(depth, out var elementType, typeAt) is var arr ? new ArrayBox(arr, elementType) : null!,
            _ => throw Bad(typeAt, $"unknown metadata value type {(uint)type}"),
        };
        if (value is ArrayBox box) return new GgufValue(GgufValueType.Array, box.ElementType, box.Array, at);
        return new GgufValue(type, type, value, at);
    }

    private sealed record ArrayBox(Array Array, GgufValueType ElementType);

    private bool ReadBool()
    {
        byte b = ReadScalar<byte>("bool");
        if (b > 1) throw Bad(_pos - 1, $"bool value {b}, expected 0 or 1");
        return b == 1;
    }

    private Array ReadArray(int depth, out GgufValueType elementType, long typeAt)
    {
        if (depth >= MaxArrayNesting) throw Bad(typeAt, $"arrays nested deeper than {MaxArrayNesting}");
        long at = _pos;
        elementType = (GgufValueType)ReadScalar<uint>("array element type");
        ulong count = ReadScalar<ulong>("array count");
        int minSize = elementType switch
        {
            GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
            GgufValueType.UInt16 or GgufValueType.Int16 => 2,
            GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
            GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 or GgufValueType.String => 8,
            GgufValueType.Array => 12,
            _ => throw Bad(at, $"unknown array element type {(uint)elementType}"),
        };
        long remaining = FileLength - _pos;
        if (count > (ulong)(remaining / minSize)) throw Bad(at + 4, $"array count {count} cannot fit in the remaining {remaining} bytes");
        int n = (int)count; // bounded by the file size / minSize, and files are < 2^31 * minSize here
        if (count > int.MaxValue) throw Bad(at + 4, $"array count {count} is too large");

        switch (elementType)
        {
            case GgufValueType.UInt8: return ReadBlock<byte>(n);
            case GgufValueType.Int8: return ReadBlock<sbyte>(n);
            case GgufValueType.UInt16: return ReadBlock<ushort>(n);
            case GgufValueType.Int16: return ReadBlock<short>(n);
            case GgufValueType.UInt32: return ReadBlock<uint>(n);
            case GgufValueType.Int32: return ReadBlock<int>(n);
            case GgufValueType.Float32: return ReadBlock<float>(n);
            case GgufValueType.UInt64: return ReadBlock<ulong>(n);
            case GgufValueType.Int64: return ReadBlock<long>(n);
            case GgufValueType.Float64: return ReadBlock<double>(n);
            case GgufValueType.Bool:
            {
                var a = new bool[n];
                for (int i = 0; i < n; i++) a[i] = ReadBool();
                return a;
            }
            case GgufValueType.String:
            {
                var a = new string[n];
                for (int i = 0; i < n; i++) a[i] = ReadString("array string", MaxStringBytes);
                return a;
            }
            default:
            {
                var a = new GgufValue[n];
                for (int i = 0; i < n; i++)
                {
                    long innerAt = _pos;
                    a[i] = new GgufValue(GgufValueType.Array, GgufValueType.Array, ReadArrayValue(depth + 1, innerAt), innerAt);
                }
                return a;
            }
        }
    }

    private object ReadArrayValue(int depth, long at)
    {
        var arr = ReadArray(depth, out _, at);
        return arr;
    }

    private T[] ReadBlock<T>(int n) where T : unmanaged
    {
        long bytes = (long)n * sizeof(T);
        Need(bytes, "array data");
        var a = new T[n];
        new ReadOnlySpan<T>(_base + _pos, n).CopyTo(a);
        _pos += bytes;
        return a;
    }
}
