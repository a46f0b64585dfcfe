using System.Text.Json;

namespace Inference.Loading;

/// <summary>
/// A safetensors file (the Hugging Face checkpoint format), memory-mapped read-only. The header is parsed eagerly and
/// validated against the file; tensor data stays in the mapping and is never copied onto the managed heap.
/// </summary>
/// <remarks>
/// Layout: a little-endian uint64 <c>N</c>, then <c>N</c> bytes of UTF-8 JSON (possibly padded with spaces), then the data
/// section. The JSON maps each tensor name to <c>{"dtype", "shape", "data_offsets": [begin, end]}</c> (offsets relative to
/// the data section) and may hold a <c>"__metadata__"</c> object of string values.
/// <code>
/// | N (u64) | {"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"format":"pt"}}   | data ... |
/// 0         8                                                                                          8+N        end
/// </code>
/// Validation follows the reference implementation: the header length is bounded by the file and by
/// <see cref="MaxHeaderBytes"/>, the JSON nesting by its schema, every range lies in the data section, ranges are sorted
/// contiguously without overlaps or holes and cover the data section exactly, and each range holds exactly
/// <c>dtype size × shape</c> bytes. Only F32, F16 and BF16 are accepted. Every failure is a
/// <see cref="ModelFormatException"/> naming the file, the byte offset and the reason.
/// </remarks>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Largest accepted header, in bytes (the limit of the reference implementation).</summary>
    public const long MaxHeaderBytes = 100_000_000;
    /// <summary>Largest accepted number of dimensions of one tensor.</summary>
    public const int MaxDimensions = 8;
    /// <summary>The metadata key of the header.</summary>
    public const string MetadataKey = "__metadata__";

    // NOTE: root object (1) → a tensor entry or the metadata object (2) → its shape / data_offsets arrays (3).
    private const int MaxJsonDepth = 3;

    private readonly MappedMemory _memory;
    private byte* _base;
    private readonly Dictionary<string, string> _metadata = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SafetensorsTensorInfo> _tensorsByName = new(StringComparer.Ordinal);
    private readonly List<SafetensorsTensorInfo> _tensors = new();

    private SafetensorsFile(string path, MappedMemory memory)
    {
        FilePath = path;
        FileLength = memory.Length;
        _memory = memory;
        _base = memory.Pointer;
    }

    /// <summary>Path the file was opened from.</summary>
    public string FilePath { get; }

    /// <summary>File size in bytes.</summary>
    public long FileLength { get; }

    /// <summary>Absolute offset of the data section (8 + header length).</summary>
    public long DataSectionOffset { get; private set; }

    /// <summary>The string values of <c>"__metadata__"</c> (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata => _metadata;

    /// <summary>Tensor infos in header order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors => _tensors;

    /// <summary>Opens and validates <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="ModelFormatException">The file is not a valid safetensors file or holds an unsupported dtype.</exception>
    public static SafetensorsFile Open(string path)
    {
        var memory = MappedMemory.OpenFile(path, 10, "safetensors");
        return MappedMemory.Parse(new SafetensorsFile(path, memory), static f => f.Parse());
    }

    /// <summary>
    /// Parses a safetensors image held in memory (tests and fuzzing). <paramref name="displayPath"/> only names the buffer
    /// in error messages.
    /// </summary>
    internal static SafetensorsFile OpenBuffer(byte[] buffer, string displayPath) =>
        MappedMemory.Parse(new SafetensorsFile(displayPath, MappedMemory.Pin(buffer)), static f => f.Parse());

    /// <summary>Finds a tensor by name.</summary>
    public SafetensorsTensorInfo? FindTensor(string name) => _tensorsByName.GetValueOrDefault(name);

    /// <summary>Finds a tensor by name or throws a <see cref="ModelFormatException"/> saying it is missing.</summary>
    public SafetensorsTensorInfo GetTensor(string name) =>
        FindTensor(name) ?? throw new ModelFormatException(FilePath, -1, $"tensor '{name}' is missing");

    /// <summary>The bytes of a tensor (valid while the file is open).</summary>
    public ReadOnlySpan<byte> GetTensorBytes(SafetensorsTensorInfo tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        ObjectDisposedException.ThrowIf(_base == null, this);
        if (tensor.ByteCount > int.MaxValue)
            throw new NotSupportedException($"{FilePath}: tensor '{tensor.Name}' is larger than 2 GiB; use row access");
        return new ReadOnlySpan<byte>(_base + tensor.DataOffset, (int)tensor.ByteCount);
    }

    /// <summary>Pointer to a tensor's data (valid while the file is open).</summary>
    internal byte* GetTensorPointer(SafetensorsTensorInfo tensor)
    {
        ObjectDisposedException.ThrowIf(_base == null, this);
        return _base + tensor.DataOffset;
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

    private readonly record struct Entry(string Name, SafetensorsDType DType, long[] Shape, long Begin, long End, long At);

    private void Parse()
    {
        if (FileLength < 10) throw Bad(0, $"file is {FileLength} bytes, too short for a safetensors header (at least 10 bytes)");
        ulong headerLength = *(ulong*)_base;
        if (headerLength > (ulong)MaxHeaderBytes)
            throw Bad(0, $"header length {headerLength} exceeds the limit of {MaxHeaderBytes} bytes");
        if (headerLength < 2 || headerLength > (ulong)(FileLength - 8))
            throw Bad(0, $"header length {headerLength} does not fit in the file ({FileLength} bytes, at most {FileLength - 8} for the header)");
        DataSectionOffset = 8 + (long)headerLength;
        var header = new ReadOnlySpan<byte>(_base + 8, (int)headerLength);
        if (header[0] != (byte)'{') throw Bad(8, $"header starts with byte 0x{header[0]:X2}, expected '{{'");
        if (!System.Text.Unicode.Utf8.IsValid(header)) throw Bad(8, "header is not valid UTF-8");

        var entries = new List<Entry>();
        var reader = new Utf8JsonReader(header, new JsonReaderOptions { MaxDepth = MaxJsonDepth, CommentHandling = JsonCommentHandling.Disallow });
        try
        {
            ReadHeader(ref reader, entries);
        }
        catch (JsonException e)
        {
            throw Bad(8 + reader.BytesConsumed, $"malformed JSON in the header (nesting is limited to {MaxJsonDepth} levels): {e.Message}");
        }

        long dataLength = FileLength - DataSectionOffset;
        foreach (var e in entries)
        {
            if (e.End > dataLength)
                throw Bad(e.At, $"tensor '{e.Name}' data [{e.Begin}, {e.End}) lies outside the data section ({dataLength} bytes)");
            long bytes;
            try
            {
                bytes = SafetensorsDTypeInfo.ElementBytes(e.DType);
                foreach (var d in e.Shape) bytes = checked(bytes * d);
            }
            catch (OverflowException)
            {
                throw Bad(e.At, $"tensor '{e.Name}' byte size overflows");
            }
            if (bytes != e.End - e.Begin)
                throw Bad(e.At, $"tensor '{e.Name}' is {SafetensorsDTypeInfo.Name(e.DType)} [{string.Join(", ", e.Shape)}] = {bytes} bytes, but its data range [{e.Begin}, {e.End}) holds {e.End - e.Begin}");
            var info = new SafetensorsTensorInfo(e.Name, e.DType, e.Shape, DataSectionOffset + e.Begin, bytes);
            _tensors.Add(info);
            _tensorsByName.Add(e.Name, info);
        }

        // NOTE: like the reference implementation, the ranges must tile the data section: no overlap (two tensors sharing
        // bytes), no hole, nothing after the last tensor.
        var sorted = entries.ToArray();
        Array.Sort(sorted, (a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        long expectedBegin = 0;
        string? previous = null;
        foreach (var e in sorted)
        {
            if (e.Begin < expectedBegin)
                throw Bad(e.At, $"tensor '{e.Name}' data [{e.Begin}, {e.End}) overlaps tensor '{previous}' (which ends at {expectedBegin})");
            if (e.Begin > expectedBegin)
                throw Bad(e.At, $"tensor '{e.Name}' data starts at {e.Begin}, leaving a hole after {(previous is null ? "the header" : $"tensor '{previous}'")} (which ends at {expectedBegin})");
            expectedBegin = e.End;
            previous = e.Name;
        }
        if (expectedBegin != dataLength)
            throw Bad(DataSectionOffset + expectedBegin, $"the data section has {dataLength - expectedBegin} bytes after the last tensor that no tensor covers");
    }

    private void ReadHeader(ref Utf8JsonReader reader, List<Entry> entries)
    {
        Next(ref reader, JsonTokenType.StartObject, "the header object");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        while (true)
        {
            if (!reader.Read()) throw Bad(8 + reader.BytesConsumed, "truncated JSON header");
            if (reader.TokenType == JsonTokenType.EndObject) break;
            long at = 8 + reader.TokenStartIndex;
            string name = reader.GetString()!; // a property name: the reader guarantees the token type here
            if (!seen.Add(name)) throw Bad(at, $"duplicate header key '{name}'");
            if (name == MetadataKey) ReadMetadata(ref reader);
            else entries.Add(ReadTensor(ref reader, name, at));
        }
        if (reader.Read()) throw Bad(8 + reader.TokenStartIndex, "content after the header object");
    }

    private void ReadMetadata(ref Utf8JsonReader reader)
    {
        Next(ref reader, JsonTokenType.StartObject, $"'{MetadataKey}'");
        while (true)
        {
            if (!reader.Read()) throw Bad(8 + reader.BytesConsumed, "truncated JSON header");
            if (reader.TokenType == JsonTokenType.EndObject) return;
            long at = 8 + reader.TokenStartIndex;
            string key = reader.GetString()!;
            Next(ref reader, JsonTokenType.String, $"'{MetadataKey}.{key}' (metadata values are strings)");
            if (!_metadata.TryAdd(key, reader.GetString()!)) throw Bad(at, $"duplicate metadata key '{key}'");
        }
    }

    private Entry ReadTensor(ref Utf8JsonReader reader, string name, long at)
    {
        if (name.Length == 0) throw Bad(at, "empty tensor name");
        Next(ref reader, JsonTokenType.StartObject, $"tensor '{name}'");
        SafetensorsDType? dtype = null;
        long[]? shape = null;
        long begin = -1, end = -1;
        while (true)
        {
            if (!reader.Read()) throw Bad(8 + reader.BytesConsumed, "truncated JSON header");
            if (reader.TokenType == JsonTokenType.EndObject) break;
            long fieldAt = 8 + reader.TokenStartIndex;
            string field = reader.GetString()!;
            switch (field)
            {
                case "dtype" when dtype is null:
                {
                    Next(ref reader, JsonTokenType.String, $"'dtype' of tensor '{name}'");
                    string text = reader.GetString()!;
                    if (!SafetensorsDTypeInfo.TryParse(text, out var d))
                    {
                        string kind = Array.IndexOf(SafetensorsDTypeInfo.KnownUnsupported, text) >= 0 ? "unsupported" : "unknown";
                        throw Bad(fieldAt, $"tensor '{name}' has {kind} dtype '{text}' (supported: F32, F16, BF16)");
                    }
                    dtype = d;
                    break;
                }
                case "shape" when shape is null:
                {
                    Next(ref reader, JsonTokenType.StartArray, $"'shape' of tensor '{name}'");
                    var dims = new List<long>(4);
                    while (true)
                    {
                        if (!reader.Read()) throw Bad(8 + reader.BytesConsumed, "truncated JSON header");
                        if (reader.TokenType == JsonTokenType.EndArray) break;
                        if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long dim) || dim < 0)
                            throw Bad(8 + reader.TokenStartIndex, $"tensor '{name}' has a shape entry that is not a non-negative integer");
                        if (dims.Count == MaxDimensions) throw Bad(fieldAt, $"tensor '{name}' has more than {MaxDimensions} dimensions");
                        dims.Add(dim);
                    }
                    shape = dims.ToArray();
                    break;
                }
                case "data_offsets" when begin < 0:
                {
                    Next(ref reader, JsonTokenType.StartArray, $"'data_offsets' of tensor '{name}'");
                    begin = ReadOffset(ref reader, name);
                    end = ReadOffset(ref reader, name);
                    Next(ref reader, JsonTokenType.EndArray, $"the end of 'data_offsets' of tensor '{name}' (two offsets)");
                    if (end < begin) throw Bad(fieldAt, $"tensor '{name}' has data_offsets [{begin}, {end}] with end before begin");
                    break;
                }
                default:
                    throw Bad(fieldAt, $"tensor '{name}' has an unexpected or repeated field '{field}' (expected dtype, shape, data_offsets)");
            }
        }
        if (dtype is null || shape is null || begin < 0)
            throw Bad(at, $"tensor '{name}' lacks {(dtype is null ? "'dtype'" : shape is null ? "'shape'" : "'data_offsets'")}");
        return new Entry(name, dtype.Value, shape, begin, end, at);
    }

    private long ReadOffset(ref Utf8JsonReader reader, string name)
    {
        if (!reader.Read()) throw Bad(8 + reader.BytesConsumed, "truncated JSON header");
        if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long v) || v < 0)
            throw Bad(8 + reader.TokenStartIndex, $"tensor '{name}' has a data offset that is not a non-negative 64-bit integer");
        return v;
    }

    private void Next(ref Utf8JsonReader reader, JsonTokenType expected, string what)
    {
        if (!reader.Read()) throw Bad(8 + reader.BytesConsumed, $"truncated JSON header: expected {what}");
        if (reader.TokenType != expected) throw Bad(8 + reader.TokenStartIndex, $"expected {what} as JSON {expected}, found {reader.TokenType}");
    }
}
