using ILGPU.Algorithms;

namespace Inference.Kernels.Layer;

/// <summary>The gated activations of a feed-forward: <c>act(gate) · up</c>.</summary>
public enum GluActivation
{
    /// <summary>SwiGLU: <c>silu(g) · u</c>, <c>silu(g) = g / (1 + exp(-g))</c> (llama, qwen, phi3).</summary>
    Silu,
    /// <summary>GeGLU with GELU's tanh approximation (gemma).</summary>
    GeluTanh,
}

/// <summary>A gated activation inside a kernel, resolved statically through a struct (as <see cref="IElementConverter{T}"/>).</summary>
public interface IGluActivation
{
    /// <summary><c>act(gate) · up</c>.</summary>
    /// <param name="gate">The gate projection's value.</param>
    /// <param name="up">The up projection's value.</param>
    /// <returns>The gated value.</returns>
    float Apply(float gate, float up);
}

/// <summary>SwiGLU: <c>g / (1 + exp(-g)) · u</c>.</summary>
public readonly struct SiluGlu : IGluActivation
{
    /// <inheritdoc />
    public float Apply(float gate, float up) => gate / (1f + XMath.Exp(-gate)) * up;
}

/// <summary>GeGLU: <c>g/2 · u · (1 + tanh(√(2/π) · (g + 0.044715 g³)))</c>.</summary>
public readonly struct GeluTanhGlu : IGluActivation
{
    /// <inheritdoc />
    public float Apply(float gate, float up) => 0.5f * gate * up * (1f + XMath.Tanh(0.7978845608028654f * gate * (1f + 0.044715f * gate * gate)));
}
