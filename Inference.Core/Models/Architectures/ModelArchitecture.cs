using System.Text.Json;
using Inference.Loading;
using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// A model architecture, written once for every backend: its hyperparameters (read from GGUF metadata and from a
/// Hugging Face <c>config.json</c>), its tensor names in both formats (<see cref="TensorNames"/>), and its forward pass
/// as a <see cref="ModelGraph"/> of layer operations over those tensors (<see cref="Build"/>).
/// </summary>
/// <remarks>
/// Common settings (widths, heads, RMS ε, RoPE base and scaling) are read for every architecture by
/// <see cref="ModelConfig.FromGguf"/> and the Hugging Face reader; an architecture adds its own through
/// <see cref="ReadGguf"/> and <see cref="ReadHf"/>. Shared blocks (attention, feed-forward, output head) live in
/// <see cref="Blocks"/>.
/// </remarks>
internal abstract class ModelArchitecture
{
    /// <summary>The GGUF <c>general.architecture</c> value, also the Hugging Face <c>model_type</c>.</summary>
    public abstract string Name { get; }

    /// <summary>The transformers class names of <c>config.json</c>'s <c>architectures</c> list.</summary>
    public abstract IReadOnlyList<string> HfClassNames { get; }

    /// <summary>Tensor names, GGUF and Hugging Face.</summary>
    public abstract TensorNameMap TensorNames { get; }

    /// <summary>RoPE pairing of the GGUF file (llama.cpp's converter permutes llama's Q/K rows to adjacent pairs).</summary>
    public virtual RopeLayout GgufRopeLayout => RopeLayout.Neox;

    /// <summary>Context length when <c>config.json</c> has no <c>max_position_embeddings</c> (transformers' default).</summary>
    public virtual int HfDefaultContextLength => 2048;

    /// <summary>Adds this architecture's settings from GGUF metadata to <paramref name="config"/>.</summary>
    public virtual ModelConfig ReadGguf(GgufFile gguf, ModelConfig config) => config;

    /// <summary>Adds this architecture's settings from <c>config.json</c> (<paramref name="root"/>) to <paramref name="config"/>.</summary>
    public virtual ModelConfig ReadHf(string path, JsonElement root, ModelConfig config) => config;

    /// <summary>Emits the forward pass for <see cref="GraphBuilder.Config"/> into <paramref name="b"/>; returns the logits buffer.</summary>
    protected abstract int Emit(GraphBuilder b);

    /// <summary>The forward pass of a model with <paramref name="config"/> whose weights are in <paramref name="weights"/>.</summary>
    public ModelGraph Build(ModelConfig config, IWeightSource weights)
    {
        var b = new GraphBuilder(config, weights);
        int logits = Emit(b);
        return b.Build(logits);
    }

    /// <summary>Every architecture this library runs.</summary>
    public static IReadOnlyList<ModelArchitecture> All { get; } = [LlamaArchitecture.Llama, LlamaArchitecture.Qwen2];

    /// <summary>The architecture named <paramref name="name"/> (GGUF or Hugging Face <c>model_type</c>), or null.</summary>
    public static ModelArchitecture? Find(string? name)
    {
        foreach (var a in All)
            if (a.Name == name) return a;
        return null;
    }

    /// <summary>The architecture whose transformers class is <paramref name="className"/>, or null.</summary>
    public static ModelArchitecture? FindByHfClass(string? className)
    {
        foreach (var a in All)
            foreach (var n in a.HfClassNames)
                if (n == className) return a;
        return null;
    }
}
