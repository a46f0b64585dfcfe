namespace Inference.Kernels.Layer;

/// <summary>Which elements of a head RoPE rotates together.</summary>
public enum RopeLayout
{
    /// <summary>Adjacent pairs <c>(2i, 2i + 1)</c> (GGML "normal", the Llama family in GGUF).</summary>
    Normal,

    /// <summary>Halves <c>(i, i + rotaryDim / 2)</c> (GGML NEOX: GPT-NeoX, Qwen, Phi and others).</summary>
    Neox,
}
