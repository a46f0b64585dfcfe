using Inference.Backends.Cpu;
using Inference.Models;
using Inference.Models.Architectures;

namespace Inference.Loading;

/// <summary>
/// The weights of a Hugging Face checkpoint under GGUF names, bound in place over the memory-mapped safetensors shards.
/// </summary>
/// <remarks>
/// NOTE: a linear layer's weight is stored <c>[out, in]</c> row-major, which is GGML's row layout (one output feature's
/// input weights contiguous), so F32/F16/BF16 matrices need no copy. Q and K rows keep the Hugging Face order, whose
/// RoPE pairs dimension i with i + headDim/2 — hence <see cref="RopeLayout.Neox"/> in the configuration.
/// <c>rope_freqs.weight</c> (Llama 3.1 scaling) is computed from <c>config.json</c>, as llama.cpp's converter does.
/// </remarks>
internal sealed class HfCheckpointWeightSource(HfCheckpoint checkpoint, ModelArchitecture architecture, float[]? ropeFreqFactors,
    IReadOnlyDictionary<string, float[]> computed) : IWeightSource
{
    private readonly TensorNameMap _names = architecture.TensorNames;

    private const string RopeFreqs = "rope_freqs.weight";

    /// <inheritdoc />
    public string Description => checkpoint.DirectoryPath;

    /// <inheritdoc />
    public bool Contains(string name) =>
        name == RopeFreqs ? ropeFreqFactors is not null
            : computed.ContainsKey(name) || ((_names.ToHf(name) ?? _names.ToHfExpert(name, 0)) is string hf && checkpoint.Locate(hf) is not null);

    /// <inheritdoc />
    public WeightMatrix GetMatrix(string name, int rows, int cols) => Bind(Find(name), rows, cols);

    /// <inheritdoc />
    public WeightMatrix GetExpertMatrix(string name, int expert, int experts, int rows, int cols)
    {
        string hf = _names.ToHfExpert(name, expert)
            ?? throw new ModelFormatException(checkpoint.DirectoryPath, -1, $"tensor '{name}' has no Hugging Face equivalent");
        var found = checkpoint.Locate(hf)
            ?? throw new ModelFormatException(checkpoint.DirectoryPath, -1, $"tensor '{hf}' (expert {expert} of {experts} of GGUF '{name}') is missing from the checkpoint");
        return Bind(found, rows, cols);
    }

    private unsafe WeightMatrix Bind((SafetensorsFile File, SafetensorsTensorInfo Tensor) found, int rows, int cols)
    {
        var (file, t) = found;
        if (t.Shape.Length != 2 || t.Shape[0] != rows || t.Shape[1] != cols)
            throw file.Bad(t.DataOffset, $"tensor '{t.Name}' has shape [{string.Join(", ", t.Shape)}], expected [{rows}, {cols}]");
        var type = SafetensorsDTypeInfo.ToGgmlType(t.DType);
        if (!LlamaModel.SupportedWeightTypes.Contains(type))
            throw file.Bad(t.DataOffset, $"tensor '{t.Name}' has dtype {t.DType}, which the CPU path does not support");
        return new WeightMatrix(type, file.GetTensorPointer(t), rows, cols);
    }

    /// <inheritdoc />
    public float[]? GetVector(string name, int length, bool optional = false)
    {
        if (name == RopeFreqs)
        {
            if (ropeFreqFactors is null)
            {
                if (optional) return null;
                throw new ModelFormatException(checkpoint.DirectoryPath, -1, "the model asks for Llama 3 RoPE frequency factors, but config.json has no llama3 rope_scaling");
            }
            if (ropeFreqFactors.Length != length)
                throw new ModelFormatException(checkpoint.DirectoryPath, -1, $"RoPE frequency factors have {ropeFreqFactors.Length} entries, expected {length}");
            return (float[])ropeFreqFactors.Clone();
        }
        if (computed.TryGetValue(name, out var values))
        {
            if (values.Length != length)
                throw new ModelFormatException(checkpoint.DirectoryPath, -1, $"'{name}' from config.json has {values.Length} entries, expected {length}");
            return (float[])values.Clone();
        }
        if (optional && !Contains(name)) return null;
        var (file, t) = Find(name);
        if (t.ElementCount != length) throw file.Bad(t.DataOffset, $"tensor '{t.Name}' has {t.ElementCount} elements, expected {length}");
        var result = new float[length];
        WeightConversion.ToFloats(SafetensorsDTypeInfo.ToGgmlType(t.DType), file.GetTensorBytes(t), result);
        float offset = architecture.HfNormOffset(name);
        if (offset != 0f) System.Numerics.Tensors.TensorPrimitives.Add(result, offset, result);
        return result;
    }

    private (SafetensorsFile File, SafetensorsTensorInfo Tensor) Find(string ggufName)
    {
        string hf = _names.ToHf(ggufName)
            ?? throw new ModelFormatException(checkpoint.DirectoryPath, -1, $"tensor '{ggufName}' has no Hugging Face equivalent");
        return checkpoint.Locate(hf) is { } found
            ? found
            : throw new ModelFormatException(checkpoint.DirectoryPath, -1, $"tensor '{hf}' (GGUF '{ggufName}') is missing from the checkpoint");
    }
}
