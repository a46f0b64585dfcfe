namespace Inference.Backends.Cpu;

/// <summary>Everything a matmul kernel reads and writes, as raw pointers pinned by the caller for one call.</summary>
internal readonly unsafe struct MatMulArgs
{
    /// <summary>Row 0 of the weights; rows are <see cref="RowBytes"/> apart.</summary>
    public readonly byte* W;
    /// <summary>Bytes per weight row.</summary>
    public readonly long RowBytes;
    /// <summary>Output features.</summary>
    public readonly int Rows;
    /// <summary>Input features.</summary>
    public readonly int Cols;
    /// <summary>Activations, [Batch, Cols].</summary>
    public readonly float* X;
    /// <summary>Outputs, [Batch, Rows].</summary>
    public readonly float* Y;
    /// <summary>Batch rows (tokens).</summary>
    public readonly int Batch;
    // NOTE: the quantized activations are block-interleaved so a kernel reaches the same block of four consecutive
    // batch rows through one pointer and constant offsets (the x64 register file cannot hold 12 row pointers).

    /// <summary>Quantized activations, [Cols / block, Batch, block] (integer kernels only).</summary>
    public readonly sbyte* Q;
    /// <summary>Activation block scales, [Cols / block, Batch] (integer kernels only).</summary>
    public readonly float* D;
    /// <summary>Q8_0: −8·Σq per 32-block, [Cols / 32, Batch] (Q4_0's code offset term).</summary>
    public readonly int* Sums;
    /// <summary>Q8_K: Σq per 16 values, [Cols / 256, Batch, 16].</summary>
    public readonly short* BSums;
    /// <summary>Instruction-set level to run at.</summary>
    public readonly KernelPath Path;
    /// <summary>The activations times the weights' <see cref="IFloatWeights.Load16Scale"/> (<see cref="X"/> when that is 1).</summary>
    public readonly float* XScaled;
    /// <summary>The weights stream from memory (<see cref="PackedWeights.Streams"/>): batch-1 kernels ask for lines far ahead.</summary>
    public readonly bool Streams;

    public MatMulArgs(in WeightMatrix w, float* x, float* y, int batch, KernelPath path,
        sbyte* q = null, float* d = null, int* sums = null, short* bsums = null)
    {
        W = w.Data;
        RowBytes = w.RowBytes;
        Rows = w.Rows;
        Cols = w.Cols;
        X = x;
        Y = y;
        Batch = batch;
        Path = path;
        Q = q;
        D = d;
        Sums = sums;
        BSums = bsums;
        XScaled = x;
        Streams = w.Packed?.Streams ?? false;
    }

    /// <summary>Float weights whose 16-value loads fall short by a factor the activations <paramref name="xScaled"/> carry.</summary>
    public MatMulArgs(in WeightMatrix w, float* x, float* xScaled, float* y, int batch, KernelPath path)
        : this(w, x, y, batch, path) => XScaled = xScaled;
}

/// <summary>How many batch rows a kernel handles per pass over a weight row (a compile-time constant per type).</summary>
internal interface IBatchTile
{
    /// <summary>Batch rows per tile, 1 to 5.</summary>
    static abstract int Count { get; }
}

/// <summary>One batch row.</summary>
internal readonly struct Tile1 : IBatchTile { public static int Count => 1; }
/// <summary>Two batch rows.</summary>
internal readonly struct Tile2 : IBatchTile { public static int Count => 2; }
/// <summary>Three batch rows.</summary>
internal readonly struct Tile3 : IBatchTile { public static int Count => 3; }
/// <summary>Four batch rows.</summary>
internal readonly struct Tile4 : IBatchTile { public static int Count => 4; }
/// <summary>Five batch rows.</summary>
internal readonly struct Tile5 : IBatchTile { public static int Count => 5; }
