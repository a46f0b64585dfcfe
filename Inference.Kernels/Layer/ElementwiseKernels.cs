using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels.Layer;

/// <summary>
/// The small glue of a transformer forward pass: residual add, bias add and row gather
/// (references: <see cref="Reference.ReferenceLayer.Add"/>, <see cref="Reference.ReferenceLayer.AddBias"/>,
/// <see cref="Reference.ReferenceLayer.GatherRows"/>, <see cref="Reference.ReferenceLayer.SoftCap"/>).
/// </summary>
public static class ElementwiseKernels
{
    /// <summary><c>x[i] += y[i]</c>. Implicitly grouped over the element count.</summary>
    /// <param name="index">Element.</param>
    /// <param name="x">Accumulator, <c>[count]</c>.</param>
    /// <param name="y">Addend, <c>[count]</c>.</param>
    public static void Add(Index1D index, ArrayView<float> x, ArrayView<float> y) => x[index] += y[index];

    /// <summary><c>x[i] *= factor</c>. Implicitly grouped over the element count.</summary>
    /// <param name="index">Element.</param>
    /// <param name="x">Values, <c>[count]</c>.</param>
    /// <param name="factor">Factor.</param>
    public static void Scale(Index1D index, ArrayView<float> x, float factor) => x[index] *= factor;

    /// <summary><c>x[i] = cap · tanh(x[i] / cap)</c> (logit soft-capping). Implicitly grouped over the element count.</summary>
    /// <param name="index">Element.</param>
    /// <param name="x">Values, <c>[count]</c>.</param>
    /// <param name="cap">The cap, positive.</param>
    public static void SoftCap(Index1D index, ArrayView<float> x, float cap) => x[index] = cap * XMath.Tanh(x[index] / cap);

    /// <summary><c>y[r, i] += bias[i]</c>. Implicitly grouped over the element count <c>rows * width</c>.</summary>
    /// <param name="index">Element.</param>
    /// <param name="y">Rows, <c>[rows, width]</c>.</param>
    /// <param name="bias">Bias, <c>[width]</c>.</param>
    /// <param name="width">Row length.</param>
    public static void AddBias(Index1D index, ArrayView<float> y, ArrayView<float> bias, int width) =>
        y[index] += bias[index % width];

    /// <summary><c>output[r, :] = x[rows[r], :]</c>. Implicitly grouped over <c>(width, rowCount)</c>.</summary>
    /// <param name="index">(element, output row).</param>
    /// <param name="x">Source, <c>[n, width]</c>.</param>
    /// <param name="rows">Source row of each output row, <c>[rowCount]</c>.</param>
    /// <param name="output">Output, <c>[rowCount, width]</c>.</param>
    /// <param name="width">Row length.</param>
    public static void GatherRows(Index2D index, ArrayView<float> x, ArrayView<int> rows, ArrayView<float> output, int width) =>
        output[(long)index.Y * width + index.X] = x[(long)rows[index.Y] * width + index.X];
}
