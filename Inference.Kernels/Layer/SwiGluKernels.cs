using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>SwiGLU: <c>out[i] = silu(gate[i]) * up[i]</c> with <c>silu(g) = g / (1 + exp(-g))</c> (<see cref="SiluGlu"/>).</summary>
public static class SwiGluKernels
{
    /// <summary>Implicitly grouped over the element count.</summary>
    /// <param name="index">Element.</param>
    /// <param name="gate">Gate projection, <c>[tokenCount, ffnDim]</c>.</param>
    /// <param name="up">Up projection, same shape.</param>
    /// <param name="output">Output, same shape (may alias either input).</param>
    public static void SwiGlu(Index1D index, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> output)
    {
        output[index] = default(SiluGlu).Apply(gate[index], up[index]);
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
        output[index] = default(GeluTanhGlu).Apply(gate[index], up[index]);
    }
}
