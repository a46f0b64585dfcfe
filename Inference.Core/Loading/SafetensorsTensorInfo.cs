namespace Inference.Loading;

/// <summary>Describes one tensor of a safetensors file.</summary>
/// <param name="Name">Tensor name, e.g. <c>model.layers.0.self_attn.q_proj.weight</c>.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Row-major shape, outermost first (PyTorch order: a linear layer's weight is <c>[out, in]</c>).</param>
/// <param name="DataOffset">Absolute byte offset of the tensor data in the file.</param>
/// <param name="ByteCount">Bytes of tensor data.</param>
public sealed record SafetensorsTensorInfo(string Name, SafetensorsDType DType, long[] Shape, long DataOffset, long ByteCount)
{
    /// <summary>Total number of elements (1 for a scalar of shape <c>[]</c>).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n *= d;
            return n;
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"{Name} {DType} [{string.Join(", ", Shape)}]";
}
