using System.Runtime.InteropServices;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// Copies of one random weight matrix laid end to end in native memory, larger than the last-level cache, so that
/// cycling through them measures DRAM streaming rather than cache hits (a decode step also reads every weight once).
/// </summary>
public sealed unsafe class WeightRing : IDisposable
{
    private readonly WeightBuffer _buffer;
    private readonly byte* _data;

    public WeightRing(GgmlType type, int rows, int cols, long minBytes, int seed = 1)
    {
        Type = type;
        Rows = rows;
        Cols = cols;
        MatrixBytes = GgmlTypeInfo.RowBytes(type, cols) * rows;
        Count = (int)Math.Max(1, (minBytes + MatrixBytes - 1) / MatrixBytes);
        // NOTE: memory advised for 2 MiB pages, as the engine's prepared weights are (float matrices are read in place).
        _buffer = new WeightBuffer(MatrixBytes * Count);
        _data = _buffer.Data;
        var first = new Span<byte>(_data, checked((int)MatrixBytes));
        Fill(type, rows, cols, first, new Random(seed));
        for (int i = 1; i < Count; i++) first.CopyTo(new Span<byte>(_data + i * MatrixBytes, (int)MatrixBytes));
    }

    public GgmlType Type { get; }
    public int Rows { get; }
    public int Cols { get; }
    public long MatrixBytes { get; }
    public int Count { get; }
    public long TotalBytes => MatrixBytes * Count;
    public byte* Base => _data;

    private WeightMatrix?[]? _prepared;

    private WeightArena? _arena;

    /// <summary>Copy <paramref name="index"/> modulo <see cref="Count"/>, prepared as the engine prepares model weights
    /// (<see cref="MatMul.Prepare"/>: repacked where the fastest kernel wants it, asking for lines far ahead when the ring
    /// streams from memory as a model of its size would, <see cref="CpuCaches.StreamsFromMemory(long)"/>).</summary>
    public WeightMatrix this[int index]
    {
        get
        {
            _prepared ??= new WeightMatrix?[Count];
            // Float matrices stay where they are (an arena would copy them): only repacked ones take its flag.
            _arena ??= new WeightArena { StreamsFromMemory = CpuCaches.StreamsFromMemory(TotalBytes) };
            int i = index % Count;
            var w = new WeightMatrix(Type, _data + (long)i * MatrixBytes, Rows, Cols);
            return _prepared[i] ??= MatMul.PrepareInto(w, Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 ? null : _arena);
        }
    }

    public void Dispose() => _buffer.Dispose();

    private static void Fill(GgmlType type, int rows, int cols, Span<byte> dst, Random rng)
    {
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var (scaleAt, minAt) = type switch
        {
            GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q4_1 or GgmlType.Q5_1 => (0, 2),
            GgmlType.Q6_K => (208, -1),
            GgmlType.Q2_K => (80, 82),
            GgmlType.Q3_K => (108, -1),
            GgmlType.Q5_0 or GgmlType.IQ4_NL or GgmlType.IQ4_XS => (0, -1),
            _ => (-1, -1),
        };
        if (scaleAt >= 0)
        {
            // Random codes and scales with small f16 (super-)block scales and mins (the bytes at those offsets).
            rng.NextBytes(dst);
            int blockBytes = GgmlTypeInfo.BlockBytes(type);
            for (int b = 0; b < dst.Length / blockBytes; b++)
            {
                BitConverter.TryWriteBytes(dst[(b * blockBytes + scaleAt)..], (Half)0.01f);
                if (minAt >= 0) BitConverter.TryWriteBytes(dst[(b * blockBytes + minAt)..], (Half)0.01f);
            }
            return;
        }
        var values = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++) values[c] = (float)(rng.NextDouble() * 2 - 1);
            Quantize.Row(type, values, dst.Slice((int)(r * rowBytes), (int)rowBytes));
        }
    }
}
