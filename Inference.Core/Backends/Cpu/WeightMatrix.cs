using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// A weight matrix in GGML layout: <see cref="Rows"/> output features, each a row of <see cref="Cols"/> input values
/// stored in <see cref="Type"/>'s blocks, rows <see cref="RowBytes"/> apart. The memory is owned elsewhere (a mapped file).
/// </summary>
public readonly unsafe struct WeightMatrix
{
    /// <summary>Creates a view over <paramref name="data"/>.</summary>
    public WeightMatrix(GgmlType type, byte* data, int rows, int cols)
    {
        Type = type;
        Data = data;
        Rows = rows;
        Cols = cols;
        RowBytes = GgmlTypeInfo.RowBytes(type, cols);
    }

    /// <summary>Element type of the stored weights.</summary>
    public GgmlType Type { get; }
    /// <summary>Start of row 0.</summary>
    public byte* Data { get; }
    /// <summary>Output features (ggml ne1).</summary>
    public int Rows { get; }
    /// <summary>Input features (ggml ne0).</summary>
    public int Cols { get; }
    /// <summary>Bytes per row.</summary>
    public long RowBytes { get; }

    /// <summary>The whole groups of eight rows repacked for the faster kernels (see <see cref="MatMul.Prepare"/>), or null.</summary>
    internal PackedWeights? Packed { get; init; }

    /// <summary>The buffer <see cref="Data"/> points into when the rows were copied for the kernels (a model's float
    /// weights on huge pages), or null for memory owned elsewhere.</summary>
    internal WeightBuffer? Owner { get; init; }

    /// <summary>F16 weights with no infinity or NaN among them (checked by <see cref="MatMul.Prepare"/>): the batch-1
    /// kernels then widen them without the fix-up those need (<see cref="F16FiniteWeights"/>).</summary>
    internal bool FiniteHalves { get; init; }

    /// <summary>F16 weights stored times 2^HalfShift, so that every nonzero one is a normal half
    /// (<see cref="HalfRescale"/>); 0 for weights as stored in the file. The matmul kernels multiply such rows by
    /// activations times 2^-HalfShift (the same products); any other reader scales what it reads by 2^-HalfShift.</summary>
    internal int HalfShift { get; init; }

    /// <summary>Rows <paramref name="first"/> … <paramref name="first"/> + <paramref name="count"/> − 1 as a matrix of their own (a fused tensor's part); stored matrices only.</summary>
    internal WeightMatrix RowSlice(int first, int count)
    {
        if (Packed is not null) throw new InvalidOperationException("a packed matrix cannot be sliced");
        if (first < 0 || count < 1 || first + count > Rows) throw new ArgumentOutOfRangeException(nameof(first), $"rows {first}..{first + count} are outside the matrix of {Rows}");
        return new WeightMatrix(Type, Data + first * RowBytes, count, Cols) { Owner = Owner, FiniteHalves = FiniteHalves, HalfShift = HalfShift };
    }

    /// <summary>The bytes of row <paramref name="row"/>.</summary>
    public ReadOnlySpan<byte> Row(int row) => new(Data + row * RowBytes, checked((int)RowBytes));

    /// <summary>Row <paramref name="row"/>'s first <paramref name="dst"/>.Length weights as floats (<see cref="Dequantize.Row"/>),
    /// F16 rows stored times 2^<see cref="HalfShift"/> scaled back: the weights as the file holds them.</summary>
    internal void DequantizeRow(int row, Span<float> dst)
    {
        Dequantize.Row(Type, Row(row), dst);
        if (HalfShift != 0) System.Numerics.Tensors.TensorPrimitives.Multiply(dst, MathF.ScaleB(1f, -HalfShift), dst);
    }
}
