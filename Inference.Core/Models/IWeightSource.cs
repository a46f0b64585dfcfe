using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Models;

/// <summary>
/// Where a llama-family model's weights come from: a GGUF file or a Hugging Face checkpoint. Tensors are named as in
/// GGUF (<c>token_embd.weight</c>, <c>blk.N.attn_q.weight</c>, …); matrices are views in GGML row layout (one row per
/// output feature, contiguous) over memory the source owns, so a source must outlive every model bound to it.
/// </summary>
internal interface IWeightSource
{
    /// <summary>Names the source (a file or folder path) in error messages.</summary>
    string Description { get; }

    /// <summary>Whether the tensor named <paramref name="name"/> (GGUF naming) exists.</summary>
    bool Contains(string name);

    /// <summary>A <paramref name="rows"/> × <paramref name="cols"/> matrix (rows = output features), bound in place.</summary>
    /// <exception cref="ModelFormatException">The tensor is missing, misshapen or of a type the CPU path does not support.</exception>
    WeightMatrix GetMatrix(string name, int rows, int cols);

    /// <summary>
    /// Expert <paramref name="expert"/>'s <paramref name="rows"/> × <paramref name="cols"/> matrix of the stacked expert
    /// tensor <paramref name="name"/> of <paramref name="experts"/> experts (GGUF <c>blk.N.ffn_gate_exps.weight</c> …), bound in place.
    /// </summary>
    /// <exception cref="ModelFormatException">The tensor is missing, misshapen or of a type the CPU path does not support.</exception>
    WeightMatrix GetExpertMatrix(string name, int expert, int experts, int rows, int cols);

    /// <summary>A vector of <paramref name="length"/> values converted to float; null when absent and <paramref name="optional"/>.</summary>
    /// <exception cref="ModelFormatException">The tensor is missing (and required), has the wrong length or a non-float type.</exception>
    float[]? GetVector(string name, int length, bool optional = false);
}
