using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels.Layer;

/// <summary>SwiGLU: <c>out[i] = silu(gate[i]) * up[i]</c> with <c>silu(g) = g / (1 + exp(-g))</c>.</summary>
public static class SwiGluKernels
{
    /// <summary>Implicitly grouped over the element count.</summary>
    /// <param name="index">Element.</param>
    /// <param name="gate">Gate projection, <c>[tokenCount, ffnDim]</c>.</param>
    /// <param name="up">Up projection, same shape.</param>
    /// <param name="output">Output, same shape (may alias either input).</param>
    public static void SwiGlu(Index1D index, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> output)
    {
        float g = gate[index];
        output[index] = g / (1f + XMath.Exp(-g)) * up[index];
    }

    /// <summary>
    /// GeGLU: <c>out[i] = gelu(gate[i]) * up[i]</c> with GELU's tanh approximation
    /// <c>gelu(g) = g/2 · (1 + tanh(√(2/π) · (g + 0.044715 g³)))</c> (gemma). Implicitly grouped over the element count.
    /// </summary>
    /// <param name="index">Element.</param>
    /// <param name="gate">Gate projection, <c>[tokenCount, ffnDim]</c>.</param>
    /// <param name="up">Up projection, same shape.</param>
    /// <param name="output">Output, same shape (may alias either input).</param>
    public static void GeGlu(Index1D index, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> output)
    {
        float g = gate[index];
        output[index] = 0.5f * g * up[index] * (1f + XMath.Tanh(0.7978845608028654f * g * (1f + 0.044715f * g * g)));
    }
}
