using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Models;
using Inference.Models.Architectures;

namespace Inference.Quantization;

/// <summary>
/// Quantizes a model's float matrices while it loads (<see cref="Engine.EngineOptions.Quantization"/>): each
/// F32/F16/BF16 matrix the model asks for is converted, rows over all cores, into a buffer of the type
/// <see cref="TensorTypeRules"/> gives it, so the model runs on the quantized kernels. Vectors (norms, biases) and
/// matrices already quantized in the file pass through.
/// </summary>
/// <remarks>
/// NOTE: a type the rules choose that the CPU path cannot run (none today) would become Q8_0 instead, or stay as stored
/// when its rows do not fit Q8_0 either; where every chosen type runs, the weights are exactly those
/// <c>llama-quantize</c> writes for the preset. Rows that fit no type at all stay as stored (llama-quantize gives up). Converted matrices are
/// cached, so a second request for one (the CUDA executor's upload) costs nothing.
/// </remarks>
internal sealed class QuantizingWeightSource : IWeightSource
{
    private readonly IWeightSource _inner;
    private readonly Dictionary<string, GgmlType> _targets = new(StringComparer.Ordinal);
    private readonly Dictionary<string, WeightMatrix> _converted = new(StringComparer.Ordinal);
    private readonly Action<float>? _progress;
    private readonly CancellationToken _cancellationToken;
    private readonly long _totalElements;
    private long _doneElements;

    /// <summary>Wraps <paramref name="inner"/>, quantizing the matrices (experts' too) of a model of <paramref name="config"/>.</summary>
    /// <param name="inner">The stored weights.</param>
    /// <param name="config">The model's shape (which tensors exist, and their sizes).</param>
    /// <param name="preset">The recipe.</param>
    /// <param name="progress">Receives the fraction of matrix values converted, 0 to 1.</param>
    /// <param name="cancellationToken">Stops between row chunks.</param>
    public QuantizingWeightSource(IWeightSource inner, ModelConfig config, QuantizationPreset preset, Action<float>? progress, CancellationToken cancellationToken)
    {
        _inner = inner;
        _progress = progress;
        _cancellationToken = cancellationToken;
        var plan = TensorTypeRules.Plan(Tensors(config, inner), preset,
            new QuantizationModelFacts(config.Architecture, config.LayerCount, config.HeadCount, config.KvHeadCount, config.ExpertCount),
            keepMisfits: true);
        foreach (var t in plan)
        {
            if (t.TargetType == t.SourceType) continue;
            var target = Runnable(t.TargetType, t.Dimensions[0]);
            if (target is not GgmlType type) continue;
            _targets[t.Name] = type;
            long elements = 1;
            foreach (long d in t.Dimensions) elements *= d;
            _totalElements += elements;
        }
    }

    /// <summary>The type to convert to: <paramref name="chosen"/> when the CPU path runs it, else Q8_0 when the rows fit, else none.</summary>
    private static GgmlType? Runnable(GgmlType chosen, long cols)
    {
        if (chosen is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16) return null; // a float fallback: keep the stored floats
        if (LlamaModel.SupportedWeightTypes.Contains(chosen)) return chosen;
        return cols % 32 == 0 ? GgmlType.Q8_0 : null;
    }

    /// <summary>
    /// The stored tensors a model of <paramref name="c"/> over <paramref name="weights"/> reads (a fused tensor whole, an
    /// expert tensor stacked <c>[cols, rows, experts]</c>), as the rules see them (stored type F16: only whether a tensor
    /// is float matters).
    /// </summary>
    private static List<QuantizationInput> Tensors(ModelConfig c, IWeightSource weights)
    {
        var architecture = ModelArchitecture.Find(c.Architecture)
            ?? throw new ArgumentException($"unknown architecture '{c.Architecture}'", nameof(c));
        var list = new List<QuantizationInput>();
        foreach (var spec in ModelArchitecture.StoredTensors(architecture.Build(c, weights)))
        {
            list.Add(!spec.IsMatrix ? new(spec.Name, [spec.Rows], GgmlType.F32)
                : spec.IsExpert ? new(spec.Name, [spec.Cols, spec.Rows, spec.Experts], GgmlType.F16)
                : new(spec.Name, [spec.Cols, spec.TensorRows], GgmlType.F16));
        }
        return list;
    }

    /// <summary>The type <paramref name="name"/> is converted to, or null when it is left as stored.</summary>
    internal GgmlType? TargetOf(string name) => _targets.TryGetValue(name, out var t) ? t : null;

    /// <inheritdoc />
    public string Description => _inner.Description;

    /// <inheritdoc />
    public bool Contains(string name) => _inner.Contains(name);

    /// <inheritdoc />
    /// <remarks>An expert's matrix is converted to the type of its stacked tensor, each expert on first use.</remarks>
    public WeightMatrix GetExpertMatrix(string name, int expert, int experts, int rows, int cols)
    {
        string key = $"{name}#{expert}";
        if (_converted.TryGetValue(key, out var done)) return done;
        return Convert(key, _targets.TryGetValue(name, out var target) ? target : null, _inner.GetExpertMatrix(name, expert, experts, rows, cols));
    }

    /// <inheritdoc />
    public WeightMatrix GetMatrix(string name, int rows, int cols)
    {
        if (_converted.TryGetValue(name, out var done)) return done;
        return Convert(name, _targets.TryGetValue(name, out var target) ? target : null, _inner.GetMatrix(name, rows, cols));
    }

    /// <summary><paramref name="stored"/> converted to <paramref name="target"/> and cached under <paramref name="key"/>; as stored when there is no target or it is not float.</summary>
    private unsafe WeightMatrix Convert(string key, GgmlType? target, WeightMatrix stored)
    {
        if (target is not GgmlType type || stored.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)) return stored;
        int rows = stored.Rows, cols = stored.Cols;
        long bytes = GgmlTypeInfo.RowBytes(type, cols) * rows;
        var buffer = new WeightBuffer(bytes);
        long before = _doneElements;
        ModelQuantizer.ConvertRows(stored.Type, stored.Data, type, buffer.Data, rows, cols, _cancellationToken,
            _progress is null ? null : r => _progress((float)((before + r * cols) / (double)_totalElements)));
        _doneElements += (long)rows * cols;
        var result = new WeightMatrix(type, buffer.Data, rows, cols) { Owner = buffer };
        _converted[key] = result;
        return result;
    }

    /// <inheritdoc />
    public float[]? GetVector(string name, int length, bool optional = false) => _inner.GetVector(name, length, optional);
}
