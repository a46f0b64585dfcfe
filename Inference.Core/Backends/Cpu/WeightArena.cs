namespace Inference.Backends.Cpu;

/// <summary>
/// Pieces of 32 MiB <see cref="WeightBuffer"/>s for the repacked matrices of one model: a matrix smaller than a 2 MiB page
/// (most of a small model's) would otherwise get a buffer of its own on ordinary 4 KiB pages, one TLB miss per 4 KiB of
/// every decode step. A piece keeps its whole buffer alive; large matrices get buffers of their own.
/// </summary>
/// <remarks>Used while a model's weights are prepared, by one thread at a time. Memory of a buffer that is never touched
/// (the end of the last one) is not resident.</remarks>
internal sealed unsafe class WeightArena
{
    private const long BufferBytes = 32L << 20;

    private WeightBuffer? _current;

    /// <summary>
    /// True when the model's weights stream from memory each token (<see cref="CpuCaches.StreamsFromMemory(long)"/>):
    /// the matrices packed here then ask for their lines far ahead (<see cref="PackedWeights.Streams"/>).
    /// </summary>
    public bool StreamsFromMemory { get; init; }

    private long _used;

    /// <summary>Returns <paramref name="bytes"/> bytes (uninitialized, 64-byte aligned) that stay valid while
    /// <paramref name="owner"/> is reachable.</summary>
    public byte* Allocate(long bytes, out WeightBuffer owner)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        long size = (bytes + 63) & ~63L;
        if (size > BufferBytes / 4)
        {
            owner = new WeightBuffer(bytes);
            return owner.Data;
        }
        if (_current is null || _used + size > _current.Length)
        {
            _current = new WeightBuffer(BufferBytes);
            _used = 0;
        }
        owner = _current;
        byte* p = _current.Data + _used;
        _used += size;
        return p;
    }
}
