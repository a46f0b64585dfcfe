using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Models;

/// <summary>The weights of a GGUF file, bound in place over its memory mapping.</summary>
internal sealed class GgufWeightSource(GgufFile gguf) : IWeightSource
{
    /// <inheritdoc />
    public string Description => gguf.FilePath;

    /// <inheritdoc />
    public bool Contains(string name) => gguf.FindTensor(name) is not null;

    /// <inheritdoc />
    public unsafe WeightMatrix GetMatrix(string name, int rows, int cols)
    {
        var t = gguf.GetTensor(name);
        // NOTE: ggml ne order: ne0 is the input (column) dimension.
        if (t.Dimensions.Length != 2 || t.Dimensions[0] != cols || t.Dimensions[1] != rows)
            throw gguf.Bad(t.DataOffset, $"tensor '{name}' has shape [{string.Join(", ", t.Dimensions)}], expected [{cols}, {rows}]");
        if (!LlamaModel.SupportedWeightTypes.Contains(t.Type))
            throw gguf.Bad(t.DataOffset, $"tensor '{name}' has type {t.Type}, which is not supported (supported: {string.Join(", ", LlamaModel.SupportedWeightTypes)})");
        return new WeightMatrix(t.Type, gguf.GetTensorPointer(t), rows, cols);
    }

    /// <inheritdoc />
    public unsafe WeightMatrix GetExpertMatrix(string name, int expert, int experts, int rows, int cols)
    {
        var t = gguf.GetTensor(name);
        if (t.Dimensions.Length != 3 || t.Dimensions[0] != cols || t.Dimensions[1] != rows || t.Dimensions[2] != experts)
            throw gguf.Bad(t.DataOffset, $"tensor '{name}' has shape [{string.Join(", ", t.Dimensions)}], expected [{cols}, {rows}, {experts}]");
        if (!LlamaModel.SupportedWeightTypes.Contains(t.Type))
            throw gguf.Bad(t.DataOffset, $"tensor '{name}' has type {t.Type}, which is not supported (supported: {string.Join(", ", LlamaModel.SupportedWeightTypes)})");
        if ((uint)expert >= (uint)experts) throw new ArgumentOutOfRangeException(nameof(expert));
        long bytes = GgmlTypeInfo.RowBytes(t.Type, cols) * (long)rows;
        return new WeightMatrix(t.Type, gguf.GetTensorPointer(t) + expert * bytes, rows, cols);
    }

    /// <inheritdoc />
    public float[]? GetVector(string name, int length, bool optional = false)
    {
        var t = gguf.FindTensor(name);
        if (t is null)
        {
            if (optional) return null;
            throw gguf.Bad(-1, $"tensor '{name}' is missing");
        }
        if (t.ElementCount != length) throw gguf.Bad(t.DataOffset, $"tensor '{name}' has {t.ElementCount} elements, expected {length}");
        if (!WeightConversion.IsFloatType(t.Type))
            throw gguf.Bad(t.DataOffset, $"tensor '{name}' has type {t.Type}, expected F32, F16 or BF16");
        var result = new float[length];
        WeightConversion.ToFloats(t.Type, gguf.GetTensorBytes(t), result);
        return result;
    }
}
