using System.Buffers.Binary;
using System.Text.Json;

namespace Inference.Loading;

/// <summary>
/// Writes a safetensors file in two phases, like <see cref="GgufWriter"/>: declare tensors (and metadata), call
/// <see cref="WriteHeader"/>, then stream each tensor's data in declaration order and finish with <see cref="Complete"/>.
/// Used by tests and benchmarks to produce Hugging Face checkpoints without downloading any.
/// </summary>
/// <remarks>
/// Tensors are laid out back to back in declaration order; the JSON header is padded with spaces so the data section
/// starts at a multiple of 8, as the reference writer does.
/// </remarks>
public sealed class SafetensorsWriter : IDisposable
{
    private readonly Stream _stream;
    private readonly bool _leaveOpen;
    private readonly List<Slot> _tensors = new();
    private readonly Dictionary<string, int> _index = new(StringComparer.Ordinal);
    private readonly List<KeyValuePair<string, string>> _metadata = new();
    private State _state;
    private long _nextOffset;
    private int _current;
    private long _currentWritten;

    private enum State { Declaring, WritingData, Completed, Disposed }

    private sealed record Slot(string Name, SafetensorsDType DType, long[] Shape, long Begin, long ByteCount);

    /// <summary>Creates a writer over <paramref name="stream"/>, positioned where the file starts.</summary>
    public SafetensorsWriter(Stream stream, StreamOwnership ownership = StreamOwnership.LeaveOpen)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!stream.CanWrite) throw new ArgumentException("stream is not writable", nameof(stream));
        _stream = stream;
        _leaveOpen = ownership == StreamOwnership.LeaveOpen;
    }

    /// <summary>Creates (or overwrites) the file at <paramref name="path"/> and returns a writer that owns it.</summary>
    public static SafetensorsWriter Create(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, bufferSize: 1 << 20);
        return new SafetensorsWriter(fs, StreamOwnership.Dispose);
    }

    /// <summary>Adds a <c>"__metadata__"</c> string entry (for example <c>format</c> = <c>pt</c>).</summary>
    public void AddMetadata(string key, string value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        ArgumentNullException.ThrowIfNull(value);
        RequireState(State.Declaring);
        foreach (var kv in _metadata)
            if (kv.Key == key) throw new ArgumentException($"metadata key '{key}' was already added", nameof(key));
        _metadata.Add(new(key, value));
    }

    /// <summary>Declares a tensor of <paramref name="shape"/> (row-major, outermost first) and returns its byte size.</summary>
    public long AddTensor(string name, SafetensorsDType dtype, ReadOnlySpan<long> shape)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        RequireState(State.Declaring);
        if (name == SafetensorsFile.MetadataKey) throw new ArgumentException($"'{name}' is reserved", nameof(name));
        if (_index.ContainsKey(name)) throw new ArgumentException($"tensor '{name}' was already added", nameof(name));
        if (shape.Length > SafetensorsFile.MaxDimensions) throw new ArgumentException($"at most {SafetensorsFile.MaxDimensions} dimensions", nameof(shape));
        long bytes = SafetensorsDTypeInfo.ElementBytes(dtype);
        foreach (long d in shape)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(d, nameof(shape));
            bytes = checked(bytes * d);
        }
        _index.Add(name, _tensors.Count);
        _tensors.Add(new Slot(name, dtype, shape.ToArray(), _nextOffset, bytes));
        _nextOffset += bytes;
        return bytes;
    }

    /// <summary>Writes the length prefix and the JSON header; afterwards only tensor data may be written.</summary>
    public void WriteHeader()
    {
        RequireState(State.Declaring);
        using var json = new MemoryStream();
        using (var w = new Utf8JsonWriter(json))
        {
            w.WriteStartObject();
            if (_metadata.Count > 0)
            {
                w.WriteStartObject(SafetensorsFile.MetadataKey);
                foreach (var kv in _metadata) w.WriteString(kv.Key, kv.Value);
                w.WriteEndObject();
            }
            foreach (var t in _tensors)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", SafetensorsDTypeInfo.Name(t.DType));
                w.WriteStartArray("shape");
                foreach (long d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(t.Begin);
                w.WriteNumberValue(t.Begin + t.ByteCount);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        long length = json.Length;
        int padding = (int)((8 - (8 + length) % 8) % 8);
        Span<byte> prefix = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)(length + padding));
        _stream.Write(prefix);
        _stream.Write(json.GetBuffer().AsSpan(0, (int)length));
        for (int i = 0; i < padding; i++) _stream.WriteByte((byte)' ');
        _state = State.WritingData;
        SkipEmpty();
    }

    /// <summary>
    /// Appends raw bytes (already in the tensor's dtype, little-endian) to tensor <paramref name="name"/>, which must be
    /// the current one in declaration order. A tensor may be written in several chunks.
    /// </summary>
    public void WriteTensorData(string name, ReadOnlySpan<byte> data)
    {
        RequireState(State.WritingData);
        if (_current >= _tensors.Count) throw new InvalidOperationException("all tensors have been written");
        var slot = _tensors[_current];
        if (slot.Name != name) throw new InvalidOperationException($"expected data for tensor '{slot.Name}', got '{name}' (write in declaration order)");
        if (data.Length > slot.ByteCount - _currentWritten)
            throw new ArgumentException($"tensor '{name}' holds {slot.ByteCount} bytes; {_currentWritten + data.Length} were given", nameof(data));
        _stream.Write(data);
        _currentWritten += data.Length;
        if (_currentWritten == slot.ByteCount)
        {
            _current++;
            _currentWritten = 0;
            SkipEmpty();
        }
    }

    /// <summary>Appends float values to tensor <paramref name="name"/>, converting them to its dtype (BF16: round to nearest even).</summary>
    public void WriteTensorData(string name, ReadOnlySpan<float> values)
    {
        RequireState(State.WritingData);
        if (_current >= _tensors.Count || !_index.TryGetValue(name, out int i)) throw new InvalidOperationException($"tensor '{name}' is not the next to write");
        var dtype = _tensors[i].DType;
        const int Chunk = 4096;
        Span<byte> buffer = stackalloc byte[Chunk * 4];
        for (int start = 0; start < values.Length; start += Chunk)
        {
            var part = values.Slice(start, Math.Min(Chunk, values.Length - start));
            int bytes = Encode(dtype, part, buffer);
            WriteTensorData(name, buffer[..bytes]);
        }
    }

    /// <summary>Checks that every tensor was written in full and flushes the stream.</summary>
    public void Complete()
    {
        RequireState(State.WritingData);
        if (_current < _tensors.Count)
            throw new InvalidOperationException($"tensor '{_tensors[_current].Name}' has {_currentWritten} of {_tensors[_current].ByteCount} bytes written");
        _stream.Flush();
        _state = State.Completed;
    }

    /// <summary>Encodes <paramref name="values"/> as <paramref name="dtype"/> into <paramref name="destination"/>; returns the bytes written.</summary>
    public static int Encode(SafetensorsDType dtype, ReadOnlySpan<float> values, Span<byte> destination)
    {
        int size = SafetensorsDTypeInfo.ElementBytes(dtype);
        if (destination.Length < values.Length * size) throw new ArgumentException("destination too small", nameof(destination));
        switch (dtype)
        {
            case SafetensorsDType.F32:
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(destination[(i * 4)..], values[i]);
                break;
            case SafetensorsDType.F16:
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(destination[(i * 2)..], (Half)values[i]);
                break;
            default:
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(destination[(i * 2)..], ToBFloat16(values[i]));
                break;
        }
        return values.Length * size;
    }

    /// <summary>The bfloat16 nearest to <paramref name="value"/> (ties to even; NaN stays NaN).</summary>
    internal static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x0040);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    /// <summary>The float a bfloat16 stands for.</summary>
    internal static float FromBFloat16(ushort value) => BitConverter.UInt32BitsToSingle((uint)value << 16);

    private void SkipEmpty()
    {
        while (_current < _tensors.Count && _tensors[_current].ByteCount == 0) _current++;
    }

    private void RequireState(State state)
    {
        ObjectDisposedException.ThrowIf(_state == State.Disposed, this);
        if (_state != state) throw new InvalidOperationException($"the writer is {_state}, expected {state}");
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_state == State.Disposed) return;
        _state = State.Disposed;
        if (!_leaveOpen) _stream.Dispose();
    }
}
