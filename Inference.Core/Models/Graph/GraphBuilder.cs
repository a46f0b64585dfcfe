namespace Inference.Models.Graph;

/// <summary>
/// Collects an architecture's operations, buffers and weights into a <see cref="ModelGraph"/>. Weights are named as in
/// GGUF; <see cref="LayerName"/> prefixes a block's tensor names. The builder sees the weight source only to ask which
/// optional tensors exist and to read tables the architecture needs at load time (RoPE frequency factors).
/// </summary>
internal sealed class GraphBuilder
{
    private readonly IWeightSource _weights;
    private readonly List<ModelOp> _ops = [];
    private readonly List<BufferSpec> _buffers = [];
    private readonly List<WeightSpec> _weightSpecs = [];
    private readonly List<RopeTable> _ropeTables = [];
    private readonly List<ExpertLayer> _experts = [];

    public GraphBuilder(ModelConfig config, IWeightSource weights)
    {
        Config = config;
        _weights = weights;
    }

    public ModelConfig Config { get; }

    /// <summary>The block the next operations belong to (-1 outside the blocks).</summary>
    public int Layer { get; set; } = -1;

    /// <summary>The GGUF name of tensor <paramref name="suffix"/> of the current block (<c>blk.N.suffix</c>).</summary>
    public string LayerName(string suffix) => $"blk.{Layer}.{suffix}";

    /// <summary>Whether the weight source has tensor <paramref name="name"/>.</summary>
    public bool Has(string name) => _weights.Contains(name);

    /// <summary>Reads a vector now (for tables computed at load time); null when absent and <paramref name="optional"/>.</summary>
    public float[]? ReadVector(string name, int length, bool optional = false) => _weights.GetVector(name, length, optional);

    /// <summary>The buffer named <paramref name="name"/>, declared on first use.</summary>
    public int Buffer(string name, int width, bool logitRows = false)
    {
        for (int i = 0; i < _buffers.Count; i++)
        {
            if (_buffers[i].Name != name) continue;
            if (_buffers[i].Width != width || _buffers[i].LogitRows != logitRows)
                throw new InvalidOperationException($"buffer '{name}' declared twice with different shapes");
            return i;
        }
        _buffers.Add(new BufferSpec(name, width, logitRows));
        return _buffers.Count - 1;
    }

    /// <summary>The matrix weight <paramref name="name"/> ([rows = output features, cols = inputs]).</summary>
    public int Matrix(string name, int rows, int cols) => Weight(new WeightSpec(name, rows, cols));

    /// <summary>Rows <paramref name="firstRow"/> … of <paramref name="rows"/> of the stored matrix <paramref name="name"/> of <paramref name="storedRows"/> rows (a fused tensor's part).</summary>
    public int MatrixSlice(string name, int storedRows, int firstRow, int rows, int cols) => Weight(new WeightSpec(name, rows, cols, firstRow, storedRows));

    /// <summary>Expert <paramref name="expert"/>'s matrix of the stacked expert tensor <paramref name="name"/> of <paramref name="experts"/> experts.</summary>
    public int ExpertMatrix(string name, int expert, int experts, int rows, int cols) =>
        Weight(new WeightSpec(name, rows, cols, Expert: expert, Experts: experts));

    /// <summary>The vector weight <paramref name="name"/> of <paramref name="length"/> values.</summary>
    public int Vector(string name, int length) => Weight(new WeightSpec(name, length, 0));

    /// <summary>The vector weight <paramref name="name"/>, or -1 when the source does not have it.</summary>
    public int OptionalVector(string name, int length) => Has(name) ? Vector(name, length) : -1;

    private int Weight(WeightSpec spec)
    {
        for (int i = 0; i < _weightSpecs.Count; i++)
        {
            if (_weightSpecs[i].Name != spec.Name || _weightSpecs[i].FirstRow != spec.FirstRow || _weightSpecs[i].Expert != spec.Expert) continue;
            if (_weightSpecs[i] != spec) throw new InvalidOperationException($"weight '{spec.Name}' declared twice with different shapes");
            return i;
        }
        _weightSpecs.Add(spec);
        return _weightSpecs.Count - 1;
    }

    /// <summary>Adds a rotation table; returns its id for <see cref="Rope"/>.</summary>
    public int RopeTable(RopeTable table)
    {
        _ropeTables.Add(table);
        return _ropeTables.Count - 1;
    }

    private void Add(ModelOp op) => _ops.Add(op);

    private ModelOp Op(OpKind kind) => ModelOp.Of(kind, Layer);

    public void Embed(int dst, int table) => Add(Op(OpKind.Embed) with { Dst = dst, W0 = table });

    /// <summary>RMSNorm of every row of <paramref name="width"/> values (0: the buffer's width) of <paramref name="src"/> into <paramref name="dst"/> (may be the same).</summary>
    public void RmsNorm(int src, int weight, int dst, float eps, int width = 0) =>
        Add(Op(OpKind.RmsNorm) with { Src = src, W0 = weight, Dst = dst, Value = eps, Width = width == 0 ? _buffers[src].Width : width });

    /// <summary>dst = w·src, and dst2 = w2·src, dst3 = w3·src when given (pass -1 to omit).</summary>
    public void MatMul(int src, int w, int dst, int w2 = -1, int dst2 = -1, int w3 = -1, int dst3 = -1) =>
        Add(Op(OpKind.MatMul) with { Src = src, W0 = w, Dst = dst, W1 = w2, Dst2 = dst2, W2 = w3, Dst3 = dst3 });

    /// <summary>Adds bias vector <paramref name="bias"/> to every row of <paramref name="dst"/>; nothing when <paramref name="bias"/> is -1.</summary>
    public void AddBias(int dst, int bias)
    {
        if (bias >= 0) Add(Op(OpKind.AddBias) with { Dst = dst, W0 = bias });
    }

    public void Rope(int dst, int table) => Add(Op(OpKind.Rope) with { Dst = dst, Param = table });

    /// <summary>
    /// Attention of the current block; <paramref name="slidingWindow"/> W lets a query at p see p − W + 1 … p (0: all);
    /// <paramref name="logitSoftCap"/> c caps the scores at c · tanh(s / c) (0: not capped).
    /// </summary>
    public void Attention(int q, int k, int v, int dst, int slidingWindow, float logitSoftCap = 0f) =>
        Add(Op(OpKind.Attention) with { Src = q, Src2 = k, Src3 = v, Dst = dst, Param = slidingWindow, Value = logitSoftCap });

    /// <summary>dst ×= <paramref name="factor"/>; nothing when it is 1.</summary>
    public void Scale(int dst, float factor)
    {
        if (factor != 1f) Add(Op(OpKind.Scale) with { Dst = dst, Value = factor });
    }

    /// <summary>dst = c · tanh(dst / c) for <paramref name="cap"/> c; nothing when it is 0.</summary>
    public void SoftCap(int dst, float cap)
    {
        if (cap != 0f) Add(Op(OpKind.SoftCap) with { Dst = dst, Value = cap });
    }

    public void GeGlu(int gate, int up) => Add(Op(OpKind.GeGlu) with { Dst = gate, Src = up });

    public void AddTo(int dst, int src) => Add(Op(OpKind.Add) with { Dst = dst, Src = src });

    public void SwiGlu(int gate, int up) => Add(Op(OpKind.SwiGlu) with { Dst = gate, Src = up });

    /// <summary>dst = the mixture-of-experts feed-forward <paramref name="layer"/> of <paramref name="src"/> (see <see cref="OpKind.MixtureOfExperts"/>).</summary>
    public void MixtureOfExperts(int src, int dst, ExpertLayer layer)
    {
        _experts.Add(layer);
        Add(Op(OpKind.MixtureOfExperts) with { Src = src, Dst = dst, W0 = layer.Router, Param = _experts.Count - 1 });
    }

    public void GatherLogitRows(int src, int dst) => Add(Op(OpKind.GatherLogitRows) with { Src = src, Dst = dst });

    /// <summary>The graph; <paramref name="logitsBuffer"/> receives the logits.</summary>
    public ModelGraph Build(int logitsBuffer) =>
        new([.. _ops], [.. _buffers], [.. _weightSpecs], [.. _ropeTables], logitsBuffer, [.. _experts]);
}
