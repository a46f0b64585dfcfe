using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels.Layer;

/// <summary>RMSNorm: <c>y[r, i] = x[r, i] / sqrt(mean(x[r, :]²) + eps) * w[i]</c>.</summary>
public static class RmsNormKernels
{
    /// <summary>Threads per group on GPUs; the kernels work with any power of two up to 64.</summary>
    public const int GroupSize = 64;

    /// <summary>One group per row: grid <c>(rows)</c>, group <c>(GroupSize)</c>.</summary>
    /// <param name="x">Input, <c>[rows, dim]</c>.</param>
    /// <param name="weight">Scale, <c>[dim]</c>.</param>
    /// <param name="output">Output, <c>[rows, dim]</c> (may alias <paramref name="x"/>).</param>
    /// <param name="dim">Row length.</param>
    /// <param name="epsilon">Added to the mean square.</param>
    public static void RmsNorm(ArrayView<float> x, ArrayView<float> weight, ArrayView<float> output, int dim, float epsilon)
    {
        long offset = (long)Grid.IdxX * dim;
        float sumSquares = 0f;
        for (int i = Group.IdxX; i < dim; i += Group.DimX)
        {
            float v = x[offset + i];
            sumSquares += v * v;
        }
        Normalize(x, weight, output, offset, dim, epsilon, sumSquares);
    }

    /// <summary>
    /// The residual add and the next norm in one pass (reference: <see cref="Reference.ReferenceLayer.Add"/> then
    /// <see cref="Reference.ReferenceLayer.RmsNorm"/>): <c>x[r, :] += delta[r, :]</c>, then <c>output[r, :] =
    /// rmsnorm(x[r, :]) ⊙ w</c>. One group per row, as <see cref="RmsNorm"/>: each thread adds, stores and squares the
    /// elements it later normalises, so the sums are <see cref="RmsNorm"/>'s after <see cref="ElementwiseKernels.Add"/>,
    /// bit for bit.
    /// </summary>
    /// <param name="x">The residual stream, <c>[rows, dim]</c>, updated in place.</param>
    /// <param name="delta">Addend, <c>[rows, dim]</c>.</param>
    /// <param name="weight">Scale, <c>[dim]</c>.</param>
    /// <param name="output">Output, <c>[rows, dim]</c> (may alias <paramref name="delta"/>).</param>
    /// <param name="dim">Row length.</param>
    /// <param name="epsilon">Added to the mean square.</param>
    public static void AddRmsNorm(ArrayView<float> x, ArrayView<float> delta, ArrayView<float> weight, ArrayView<float> output, int dim, float epsilon)
    {
        long offset = (long)Grid.IdxX * dim;
        float sumSquares = 0f;
        for (int i = Group.IdxX; i < dim; i += Group.DimX)
        {
            float v = x[offset + i] + delta[offset + i];
            x[offset + i] = v;
            sumSquares += v * v;
        }
        Normalize(x, weight, output, offset, dim, epsilon, sumSquares);
    }

    /// <summary>Reduces the threads' sums of squares over the group and writes the row's normalised values.</summary>
    private static void Normalize(ArrayView<float> x, ArrayView<float> weight, ArrayView<float> output, long offset, int dim, float epsilon, float sumSquares)
    {
        float total = GroupReduce.Sum(sumSquares);
        float inverse = XMath.Rsqrt(total / dim + epsilon);
        for (int i = Group.IdxX; i < dim; i += Group.DimX)
            output[offset + i] = x[offset + i] * inverse * weight[i];
    }
}
