using System.Buffers.Binary;
using System.Text;

namespace Inference.Loading;

/// <summary>
/// Writes a GGUF version 3 file in two phases: first declare metadata and tensor infos, then call
/// <see cref="WriteHeader"/> and stream each tensor's bytes, in declaration order, with
/// <see cref="WriteTensorData(string, ReadOnlySpan{byte})"/>; finish with <see cref="Complete"/>.
/// </summary>
/// <remarks>
/// Tensor data is never buffered by the writer: the offsets of all tensors follow from their declared shapes, so the header
/// can be written before any data exists and each tensor can be produced and written a chunk at a time.
/// All values are written little-endian. The writer owns the <c>general.alignment</c> key: it is written when
/// <see cref="GgufWriterOptions.Alignment"/> differs from the GGUF default of 32, or when
/// <see cref="GgufWriterOptions.AlignmentKey"/> asks for it. A writer disposed before <see cref="Complete"/> leaves an
/// incomplete file behind; the caller deletes it.
/// <code>
/// using var w = GgufWriter.Create(path);
/// w.AddString("general.architecture", "llama");
/// w.AddTensorInfo("output_norm.weight", [64], GgmlType.F32);
/// w.WriteHeader();
/// w.WriteTensorData("output_norm.weight", bytes);
/// w.Complete();
/// </code>
/// </remarks>
public sealed class GgufWriter : IDisposable
{
    /// <summary>The alignment GGUF readers assume when <c>general.alignment</c> is absent.</summary>
    public const uint DefaultAlignment = 32;

    /// <summary>Longest tensor name ggml accepts, in bytes (GGML_MAX_NAME is 64 including the terminating zero).</summary>
    public const int MaxTensorNameBytes = 63;

    private const string AlignmentKeyName = "general.alignment";

    private readonly Stream _stream;
    private readonly bool _leaveOpen;
    private readonly uint _alignment;
    private readonly bool _writeAlignmentKey;
    private readonly List<Entry> _metadata = new();
    private readonly HashSet<string> _metadataKeys = new(StringComparer.Ordinal);
    private readonly List<TensorSlot> _tensors = new();
    private readonly Dictionary<string, int> _tensorIndex = new(StringComparer.Ordinal);
    private readonly byte[] _scratch = new byte[16];
    private State _state;
    private long _nextRelativeOffset;
    private int _currentTensor;
    private long _currentWritten;
    private long _dataStart;

    private enum State { Declaring, WritingData, Completed, Disposed }

    private readonly record struct Entry(string Key, GgufValueType Type, object Value);

    private sealed record TensorSlot(string Name, long[] Dimensions, GgmlType Type, long RelativeOffset, long ByteCount);

    /// <summary>Creates a writer over <paramref name="stream"/>, which must be writable and positioned where the file starts.</summary>
    /// <param name="stream">Destination stream.</param>
    /// <param name="options">Writer options; null means the defaults.</param>
    /// <param name="ownership">Whether disposing the writer disposes the stream.</param>
    public GgufWriter(Stream stream, GgufWriterOptions? options = null, StreamOwnership ownership = StreamOwnership.LeaveOpen)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!stream.CanWrite) throw new ArgumentException("stream is not writable", nameof(stream));
        options ??= new GgufWriterOptions();
        _stream = stream;
        _leaveOpen = ownership == StreamOwnership.LeaveOpen;
        _alignment = options.Alignment;
        _writeAlignmentKey = options.AlignmentKey == AlignmentKeyMode.Always || options.Alignment != DefaultAlignment;
    }

    /// <summary>Creates (or overwrites) the file at <paramref name="path"/> and returns a writer that owns it.</summary>
    public static GgufWriter Create(string path, GgufWriterOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, bufferSize: 1 << 20);
        try
        {
            return new GgufWriter(fs, options, StreamOwnership.Dispose);
        }
        catch
        {
            fs.Dispose();
            throw;
        }
    }

    /// <summary>The alignment of the data section and of every tensor offset.</summary>
    public uint Alignment => _alignment;

    /// <summary>Number of tensors declared so far.</summary>
    public int TensorCount => _tensors.Count;

    /// <summary>Number of metadata entries declared so far (not counting <c>general.alignment</c>).</summary>
    public int MetadataCount => _metadata.Count;

    // ---- metadata --------------------------------------------------------------------------------------------------

    /// <summary>Adds a uint8 value.</summary>
    public void AddUInt8(string key, byte value) => Add(key, GgufValueType.UInt8, value);

    /// <summary>Adds an int8 value.</summary>
    public void AddInt8(string key, sbyte value) => Add(key, GgufValueType.Int8, value);

    /// <summary>Adds a uint16 value.</summary>
    public void AddUInt16(string key, ushort value) => Add(key, GgufValueType.UInt16, value);

    /// <summary>Adds an int16 value.</summary>
    public void AddInt16(string key, short value) => Add(key, GgufValueType.Int16, value);

    /// <summary>Adds a uint32 value.</summary>
    public void AddUInt32(string key, uint value) => Add(key, GgufValueType.UInt32, value);

    /// <summary>Adds an int32 value.</summary>
    public void AddInt32(string key, int value) => Add(key, GgufValueType.Int32, value);

    /// <summary>Adds a uint64 value.</summary>
    public void AddUInt64(string key, ulong value) => Add(key, GgufValueType.UInt64, value);

    /// <summary>Adds an int64 value.</summary>
    public void AddInt64(string key, long value) => Add(key, GgufValueType.Int64, value);

    /// <summary>Adds a float32 value.</summary>
    public void AddFloat32(string key, float value) => Add(key, GgufValueType.Float32, value);

    /// <summary>Adds a float64 value.</summary>
    public void AddFloat64(string key, double value) => Add(key, GgufValueType.Float64, value);

    /// <summary>Adds a bool value.</summary>
    public void AddBool(string key, bool value) => Add(key, GgufValueType.Bool, value);

    /// <summary>Adds a UTF-8 string value.</summary>
    public void AddString(string key, string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        Add(key, GgufValueType.String, value);
    }

    /// <summary>
    /// Adds an array of numbers or bools. <typeparamref name="T"/> must be one of <c>byte, sbyte, ushort, short, uint, int,
    /// ulong, long, float, double, bool</c>.
    /// </summary>
    public void AddArray<T>(string key, ReadOnlySpan<T> values) where T : unmanaged
    {
        var elementType = ElementTypeOf(typeof(T))
            ?? throw new ArgumentException($"{typeof(T).Name} is not a GGUF array element type", nameof(values));
        Add(key, GgufValueType.Array, new ArrayValue(elementType, values.ToArray()));
    }

    /// <summary>Adds an array of strings.</summary>
    public void AddStringArray(string key, IReadOnlyList<string> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        var copy = new string[values.Count];
        for (int i = 0; i < copy.Length; i++)
            copy[i] = values[i] ?? throw new ArgumentException($"element {i} is null", nameof(values));
        Add(key, GgufValueType.Array, new ArrayValue(GgufValueType.String, copy));
    }

    /// <summary>Adds a value read from another GGUF file (any type, including nested arrays), e.g. to copy a tokenizer.</summary>
    public void AddValue(string key, GgufValue value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (value.Type == GgufValueType.Array)
        {
            var array = (Array)value.Value;
            var elementType = value.ElementType == GgufValueType.Array ? GgufValueType.Array
                : ElementTypeOf(array.GetType().GetElementType()!) ?? value.ElementType;
            Add(key, GgufValueType.Array, ToArrayValue(array, elementType));
        }
        else
        {
            Add(key, value.Type, value.Value);
        }
    }

    private static ArrayValue ToArrayValue(Array array, GgufValueType elementType)
    {
        if (elementType != GgufValueType.Array) return new ArrayValue(elementType, array);
        // Nested arrays are read back as GgufValue[] whose values are typed .NET arrays; recover each inner element type.
        var inner = (GgufValue[])array;
        var converted = new ArrayValue[inner.Length];
        for (int i = 0; i < inner.Length; i++)
        {
            var a = (Array)inner[i].Value;
            var t = a is GgufValue[] ? GgufValueType.Array
                : ElementTypeOf(a.GetType().GetElementType()!) ?? throw new ArgumentException($"unsupported nested array element {a.GetType()}");
            converted[i] = ToArrayValue(a, t);
        }
        return new ArrayValue(GgufValueType.Array, converted);
    }

    private sealed record ArrayValue(GgufValueType ElementType, Array Items);

    private static GgufValueType? ElementTypeOf(Type t) =>
        t == typeof(byte) ? GgufValueType.UInt8
        : t == typeof(sbyte) ? GgufValueType.Int8
        : t == typeof(ushort) ? GgufValueType.UInt16
        : t == typeof(short) ? GgufValueType.Int16
        : t == typeof(uint) ? GgufValueType.UInt32
        : t == typeof(int) ? GgufValueType.Int32
        : t == typeof(ulong) ? GgufValueType.UInt64
        : t == typeof(long) ? GgufValueType.Int64
        : t == typeof(float) ? GgufValueType.Float32
        : t == typeof(double) ? GgufValueType.Float64
        : t == typeof(bool) ? GgufValueType.Bool
        : t == typeof(string) ? GgufValueType.String
        : null;

    private void Add(string key, GgufValueType type, object value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        RequireState(State.Declaring, "metadata can only be added before WriteHeader");
        if (key == AlignmentKeyName)
            throw new ArgumentException($"'{AlignmentKeyName}' is written by the writer; set GgufWriterOptions.Alignment instead", nameof(key));
        if (Encoding.UTF8.GetByteCount(key) > GgufFile.MaxNameBytes)
            throw new ArgumentException($"key is longer than {GgufFile.MaxNameBytes} bytes", nameof(key));
        if (!_metadataKeys.Add(key)) throw new ArgumentException($"duplicate metadata key '{key}'", nameof(key));
        _metadata.Add(new Entry(key, type, value));
    }

    // ---- tensors ---------------------------------------------------------------------------------------------------

    /// <summary>
    /// Declares a tensor. <paramref name="dimensions"/> are ggml <c>ne</c> (<c>ne[0]</c> is the contiguous, input dimension).
    /// Returns the number of data bytes the tensor takes, which <see cref="WriteTensorData(string, ReadOnlySpan{byte})"/>
    /// must later supply.
    /// </summary>
    public long AddTensorInfo(string name, ReadOnlySpan<long> dimensions, GgmlType type)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        RequireState(State.Declaring, "tensors can only be declared before WriteHeader");
        if (Encoding.UTF8.GetByteCount(name) > MaxTensorNameBytes)
            throw new ArgumentException($"tensor name '{name}' is longer than {MaxTensorNameBytes} bytes", nameof(name));
        if (_tensorIndex.ContainsKey(name)) throw new ArgumentException($"duplicate tensor name '{name}'", nameof(name));
        if (dimensions.Length is 0 or > GgufFile.MaxDimensions)
            throw new ArgumentException($"a tensor has 1 to {GgufFile.MaxDimensions} dimensions, got {dimensions.Length}", nameof(dimensions));
        if (!GgmlTypeInfo.TryGetBlock(type, out int blockElements, out int blockBytes))
            throw new ArgumentOutOfRangeException(nameof(type), type, "unknown GGML type");
        long elements = 1;
        foreach (var d in dimensions)
        {
            if (d <= 0) throw new ArgumentOutOfRangeException(nameof(dimensions), d, "dimensions must be positive");
            elements = checked(elements * d);
        }
        if (dimensions[0] % blockElements != 0)
            throw new ArgumentException($"ne[0] = {dimensions[0]} is not a multiple of the {type} block size {blockElements}", nameof(dimensions));
        long bytes = checked(elements / blockElements * blockBytes);
        var slot = new TensorSlot(name, dimensions.ToArray(), type, _nextRelativeOffset, bytes);
        _nextRelativeOffset = AlignUp(checked(_nextRelativeOffset + bytes), _alignment);
        _tensorIndex.Add(name, _tensors.Count);
        _tensors.Add(slot);
        return bytes;
    }

    // ---- writing ---------------------------------------------------------------------------------------------------

    /// <summary>
    /// Writes the header, metadata and tensor infos, padded to the alignment. After this, no metadata or tensors can be added.
    /// </summary>
    public void WriteHeader()
    {
        RequireState(State.Declaring, "WriteHeader can only be called once");
        long start = _stream.CanSeek ? _stream.Position : 0;
        long written = 0;
        WriteU32(0x46554747, ref written); // "GGUF"
        WriteU32(3, ref written);
        WriteU64((ulong)_tensors.Count, ref written);
        WriteU64((ulong)(_metadata.Count + (_writeAlignmentKey ? 1 : 0)), ref written);
        if (_writeAlignmentKey)
        {
            WriteString(AlignmentKeyName, ref written);
            WriteU32((uint)GgufValueType.UInt32, ref written);
            WriteU32(_alignment, ref written);
        }
        foreach (var e in _metadata)
        {
            WriteString(e.Key, ref written);
            WriteU32((uint)e.Type, ref written);
            WriteValue(e.Type, e.Value, ref written);
        }
        foreach (var t in _tensors)
        {
            WriteString(t.Name, ref written);
            WriteU32((uint)t.Dimensions.Length, ref written);
            foreach (var d in t.Dimensions) WriteU64((ulong)d, ref written);
            WriteU32((uint)t.Type, ref written);
            WriteU64((ulong)t.RelativeOffset, ref written);
        }
        // NOTE: a file without tensors ends right after the header (as llama.cpp's vocab-only files do); otherwise the header
        // is padded so the data section starts aligned.
        long headerEnd = _tensors.Count == 0 ? written : AlignUp(written, _alignment);
        WritePadding(headerEnd - written);
        _dataStart = start + headerEnd;
        _state = State.WritingData;
        _currentTensor = 0;
        _currentWritten = 0;
    }

    /// <summary>Absolute offset of the data section; valid after <see cref="WriteHeader"/>.</summary>
    public long DataSectionOffset
    {
        get
        {
            if (_state == State.Declaring) throw new InvalidOperationException("the header has not been written yet");
            return _dataStart;
        }
    }

    /// <summary>
    /// Appends <paramref name="data"/> to tensor <paramref name="name"/>, which must be the next tensor in declaration order
    /// whose bytes are not yet complete. A tensor may be written in several chunks.
    /// </summary>
    public void WriteTensorData(string name, ReadOnlySpan<byte> data)
    {
        ArgumentNullException.ThrowIfNull(name);
        RequireState(State.WritingData, "tensor data is written after WriteHeader and before Complete");
        if (_currentTensor >= _tensors.Count) throw new InvalidOperationException($"all tensors are already written; got data for '{name}'");
        var slot = _tensors[_currentTensor];
        if (slot.Name != name)
            throw new InvalidOperationException($"tensor data must follow declaration order: expected '{slot.Name}', got '{name}'");
        if (data.Length > slot.ByteCount - _currentWritten)
            throw new ArgumentException($"tensor '{name}' takes {slot.ByteCount} bytes; {_currentWritten} written, {data.Length} more given", nameof(data));
        _stream.Write(data);
        _currentWritten += data.Length;
        if (_currentWritten == slot.ByteCount)
        {
            _currentTensor++;
            _currentWritten = 0;
            // NOTE: the last tensor is padded too, like ggml's writer does, so the file size is a multiple of the alignment.
            WritePadding(AlignUp(slot.RelativeOffset + slot.ByteCount, _alignment) - (slot.RelativeOffset + slot.ByteCount));
        }
    }

    /// <summary>Appends float data to tensor <paramref name="name"/> (see <see cref="WriteTensorData(string, ReadOnlySpan{byte})"/>).</summary>
    public void WriteTensorData(string name, ReadOnlySpan<float> data)
    {
        if (BitConverter.IsLittleEndian)
        {
            WriteTensorData(name, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data));
            return;
        }
        throw new PlatformNotSupportedException("big-endian hosts are not supported");
    }

    /// <summary>Checks that every tensor's data was written and flushes the stream.</summary>
    /// <exception cref="InvalidOperationException">The header or some tensor data is missing.</exception>
    public void Complete()
    {
        if (_state == State.Declaring && _tensors.Count == 0) WriteHeader();
        RequireState(State.WritingData, "Complete is called once, after WriteHeader");
        if (_currentTensor < _tensors.Count)
        {
            var slot = _tensors[_currentTensor];
            throw new InvalidOperationException($"tensor '{slot.Name}' has {_currentWritten} of {slot.ByteCount} bytes; {_tensors.Count - _currentTensor} tensor(s) incomplete");
        }
        _stream.Flush();
        _state = State.Completed;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_state == State.Disposed) return;
        _state = State.Disposed;
        if (!_leaveOpen) _stream.Dispose();
    }

    private void RequireState(State expected, string message)
    {
        ObjectDisposedException.ThrowIf(_state == State.Disposed, this);
        if (_state != expected) throw new InvalidOperationException(message);
    }

    private static long AlignUp(long x, uint alignment) => (x + alignment - 1) / alignment * alignment;

    // ---- encoding --------------------------------------------------------------------------------------------------

    private void WriteValue(GgufValueType type, object value, ref long written)
    {
        switch (type)
        {
            case GgufValueType.UInt8: WriteBytes([(byte)value], ref written); break;
            case GgufValueType.Int8: WriteBytes([unchecked((byte)(sbyte)value)], ref written); break;
            case GgufValueType.UInt16: WriteU16((ushort)value, ref written); break;
            case GgufValueType.Int16: WriteU16(unchecked((ushort)(short)value), ref written); break;
            case GgufValueType.UInt32: WriteU32((uint)value, ref written); break;
            case GgufValueType.Int32: WriteU32(unchecked((uint)(int)value), ref written); break;
            case GgufValueType.Float32: WriteU32(BitConverter.SingleToUInt32Bits((float)value), ref written); break;
            case GgufValueType.Bool: WriteBytes([(bool)value ? (byte)1 : (byte)0], ref written); break;
            case GgufValueType.String: WriteString((string)value, ref written); break;
            case GgufValueType.UInt64: WriteU64((ulong)value, ref written); break;
            case GgufValueType.Int64: WriteU64(unchecked((ulong)(long)value), ref written); break;
            case GgufValueType.Float64: WriteU64(BitConverter.DoubleToUInt64Bits((double)value), ref written); break;
            case GgufValueType.Array:
            {
                var a = (ArrayValue)value;
                WriteU32((uint)a.ElementType, ref written);
                WriteU64((ulong)a.Items.LongLength, ref written);
                foreach (var item in a.Items) WriteValue(a.ElementType, item!, ref written);
                break;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "unknown GGUF value type");
        }
    }

    private void WriteString(string s, ref long written)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        WriteU64((ulong)bytes.Length, ref written);
        WriteBytes(bytes, ref written);
    }

    private void WriteU16(ushort v, ref long written)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(_scratch, v);
        WriteBytes(_scratch.AsSpan(0, 2), ref written);
    }

    private void WriteU32(uint v, ref long written)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_scratch, v);
        WriteBytes(_scratch.AsSpan(0, 4), ref written);
    }

    private void WriteU64(ulong v, ref long written)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(_scratch, v);
        WriteBytes(_scratch.AsSpan(0, 8), ref written);
    }

    private void WriteBytes(ReadOnlySpan<byte> bytes, ref long written)
    {
        _stream.Write(bytes);
        written += bytes.Length;
    }

    private void WritePadding(long count)
    {
        Span<byte> zeros = stackalloc byte[64];
        zeros.Clear();
        while (count > 0)
        {
            int n = (int)Math.Min(count, zeros.Length);
            _stream.Write(zeros[..n]);
            count -= n;
        }
    }
}
