namespace Inference.Loading;

/// <summary>Describes one tensor of a GGUF file.</summary>
/// <param name="Name">Tensor name, e.g. <c>blk.0.attn_q.weight</c>.</param>
/// <param name="Dimensions">ggml <c>ne</c>: <c>ne[0]</c> is the contiguous (input) dimension.</param>
/// <param name="Type">Element type.</param>
/// <param name="DataOffset">Absolute byte offset of the tensor data in the file.</param>
/// <param name="ByteCount">Bytes of tensor data.</param>
public sealed record GgufTensorInfo(string Name, long[] Dimensions, GgmlType Type, long DataOffset, long ByteCount)
{
    /// <summary>Total number of elements.</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Dimensions) n *= d;
            return n;
        }
    }

    /// <summary><c>ne[0]</c>: elements per row (the input dimension of a weight matrix).</summary>
    public long RowLength => Dimensions.Length > 0 ? Dimensions[0] : 1;

    /// <summary>Number of rows: the product of all dimensions after the first.</summary>
    public long RowCount => Dimensions.Length > 0 ? ElementCount / Dimensions[0] : 1;

    /// <inheritdoc />
    public override string ToString() => $"{Name} {Type} [{string.Join(", ", Dimensions)}]";
}
