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
        float total = GroupReduce.Sum(sumSquares);
        float inverse = XMath.Rsqrt(total / dim + epsilon);
        for (int i = Group.IdxX; i < dim; i += Group.DimX)
            output[offset + i] = x[offset + i] * inverse * weight[i];
    }
}
