using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace Inference.Loading;

/// <summary>
/// The bytes a model file reader parses: a read-only memory mapping of a file, or a pinned in-memory image (tests and
/// fuzzing). Owns what it maps or pins; the pointer is valid until <see cref="Dispose"/>.
/// </summary>
internal sealed unsafe class MappedMemory : IDisposable
{
    private readonly MemoryMappedFile? _mapping;
    private readonly MemoryMappedViewAccessor? _view;
    private GCHandle _pin;

    private MappedMemory(byte* pointer, long length, MemoryMappedFile? mapping, MemoryMappedViewAccessor? view, GCHandle pin)
    {
        Pointer = pointer;
        Length = length;
        _mapping = mapping;
        _view = view;
        _pin = pin;
    }

    /// <summary>Start of the bytes; null once disposed.</summary>
    public byte* Pointer { get; private set; }

    /// <summary>Number of bytes.</summary>
    public long Length { get; }

    /// <summary>
    /// The file <paramref name="path"/> names, with symbolic links followed: <see cref="FileInfo"/> describes a link
    /// itself (its length is the target path's), and Hugging Face's cache keeps every snapshot file as a link to a blob.
    /// </summary>
    public static FileInfo FileOf(string path)
    {
        var info = new FileInfo(path);
        return info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target ? target : info;
    }

    /// <summary>
    /// Maps <paramref name="path"/> read-only after the checks every model file gets: not a directory, present, and at
    /// least <paramref name="minLength"/> bytes (<paramref name="format"/> names the expected kind in messages).
    /// </summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="ModelFormatException">A directory, or too short.</exception>
    public static MappedMemory OpenFile(string path, long minLength, string format)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Directory.Exists(path)) throw new ModelFormatException(path, -1, $"is a directory, expected a {format} file");
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: file not found", path);
        long length = FileOf(path).Length;
        if (length < minLength) throw new ModelFormatException(path, 0, $"file is {length} bytes, too short for a {format} header ({minLength} bytes)");

        var mapping = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        MemoryMappedViewAccessor? view = null;
        try
        {
            view = mapping.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            return new MappedMemory(p + view.PointerOffset, length, mapping, view, default);
        }
        catch
        {
            view?.Dispose();
            mapping.Dispose();
            throw;
        }
    }

    /// <summary>Pins <paramref name="buffer"/> for parsing in place.</summary>
    public static MappedMemory Pin(byte[] buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        var pin = GCHandle.Alloc(buffer, GCHandleType.Pinned);
        return new MappedMemory((byte*)pin.AddrOfPinnedObject(), buffer.Length, null, null, pin);
    }

    /// <summary>Runs <paramref name="parse"/> on a new reader over this memory; disposes the reader if parsing fails.</summary>
    public static T Parse<T>(T reader, Action<T> parse) where T : IDisposable
    {
        try
        {
            parse(reader);
            return reader;
        }
        catch
        {
            reader.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Pointer == null) return;
        Pointer = null;
        if (_pin.IsAllocated) _pin.Free();
        else _view!.SafeMemoryMappedViewHandle.ReleasePointer();
        _view?.Dispose();
        _mapping?.Dispose();
    }
}
