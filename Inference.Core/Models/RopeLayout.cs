namespace Inference.Models;

/// <summary>How rotary position embedding pairs the dimensions of a head.</summary>
public enum RopeLayout
{
    /// <summary>Adjacent pairs (2i, 2i+1): GGUF llama checkpoints (their Q/K rows were permuted at conversion).</summary>
    Normal,
    /// <summary>Half rotation (i, i + d/2): GPT-NeoX style, HF checkpoints and qwen2.</summary>
    Neox,
}

/// <summary>How positions are scaled before RoPE.</summary>
public enum RopeScaling
{
    /// <summary>No scaling.</summary>
    None,
    /// <summary>Positions divided by the scaling factor.</summary>
    Linear,
    /// <summary>Llama 3.1 frequency-dependent scaling (per-dimension frequency factors).</summary>
    Llama3,
    /// <summary>
    /// Phi-3's LongRoPE ("su"): per-dimension divisors of the frequencies, short ones within the original context and
    /// long ones beyond it, and cos/sin multiplied by an attention factor.
    /// </summary>
    LongRope,
    /// <summary>
    /// YaRN: each frequency blended between its interpolated (÷ factor) and original value by a ramp over the dimensions
    /// whose wavelength lies between the original context / β_fast and / β_slow, and cos/sin multiplied by the attention
    /// factor (0.1 · ln factor + 1 unless given), as llama.cpp's <c>rope_yarn</c> and Hugging Face's <c>yarn</c>.
    /// </summary>
    Yarn,
    /// <summary>NTK-aware scaling: the base multiplied by factor^(d / (d − 2)), d the rotated dimensions.</summary>
    Ntk,
    /// <summary>
    /// Dynamic NTK (Hugging Face's <c>dynamic</c>): past the original context the base is multiplied by
    /// (factor · n / original − (factor − 1))^(d / (d − 2)), n the context window the engine runs at.
    /// </summary>
    DynamicNtk,
}
