using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>Embedding gather: <c>out[t, :] = table[ids[t], :]</c>, widened to f32.</summary>
public static class EmbeddingKernels
{
    /// <summary>F32 or F16 table. Implicitly grouped over <c>(dim, tokenCount)</c>.</summary>
    /// <typeparam name="TW">Stored element type.</typeparam>
    /// <typeparam name="TConv">Widens <typeparamref name="TW"/> to f32.</typeparam>
    /// <param name="index">(element, token).</param>
    /// <param name="table">Embedding table, <c>[vocab, dim]</c>.</param>
    /// <param name="ids">Token ids, <c>[tokenCount]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="dim">Embedding width.</param>
    public static void Gather<TW, TConv>(Index2D index, ArrayView<TW> table, ArrayView<int> ids, ArrayView<float> output, int dim)
        where TW : unmanaged
        where TConv : struct, IElementConverter<TW>
    {
        TConv conv = default;
        output[(long)index.Y * dim + index.X] = conv.ToFloat(table[(long)ids[index.Y] * dim + index.X]);
    }

    /// <summary>Q8_0 table (see <see cref="MatMulKernels"/>). Implicitly grouped over <c>(dim, tokenCount)</c>.</summary>
    /// <param name="index">(element, token).</param>
    /// <param name="quants">Raw Q8_0 bytes, <c>[vocab, dim / 32, 34]</c>.</param>
    /// <param name="scales">The same memory viewed as f16.</param>
    /// <param name="ids">Token ids, <c>[tokenCount]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="dim">Embedding width (a multiple of 32).</param>
    public static void GatherQ8_0(Index2D index, ArrayView<byte> quants, ArrayView<ILGPU.Half> scales, ArrayView<int> ids,
        ArrayView<float> output, int dim)
    {
        long block = (long)ids[index.Y] * (dim / MatMulKernels.Q8BlockElements) + index.X / MatMulKernels.Q8BlockElements;
        sbyte q = (sbyte)quants[block * MatMulKernels.Q8BlockBytes + 2 + index.X % MatMulKernels.Q8BlockElements];
        output[(long)index.Y * dim + index.X] = (float)scales[block * (MatMulKernels.Q8BlockBytes / 2)] * q;
    }
}
