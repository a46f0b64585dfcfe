namespace Inference.Models.Graph;

/// <summary>
/// An architecture's forward pass compiled for one model: a flat array of <see cref="ModelOp"/>s over named activation
/// buffers and named weights, which each backend interprets with one switch per operation (no allocation per step).
/// </summary>
/// <remarks>
/// <code>
///  Ops        Embed · [block 0 ops] · … · [block L-1 ops] · GatherLogitRows · (head ops on logit rows)
///  Buffers    [id] → name, row width, token rows (n per step) or logit rows (one per segment that wants logits)
///  Weights    [id] → GGUF tensor name and shape (a tied output head is the embedding's id)
///  RopeTables [id] → inverse frequencies, rotated dimensions and pairing; every step computes cos/sin per token once
/// </code>
/// </remarks>
internal sealed class ModelGraph
{
    /// <param name="ops">The operations in order.</param>
    /// <param name="buffers">The activation buffers by id.</param>
    /// <param name="weights">The weights by id.</param>
    /// <param name="ropeTables">The rotation tables by id.</param>
    /// <param name="logitsBuffer">The buffer that receives the logits.</param>
    /// <param name="experts">The mixture-of-experts blocks, or null when there are none.</param>
    /// <param name="partial">A pipeline stage's part of the graph, which may end before the output head.</param>
    public ModelGraph(ModelOp[] ops, BufferSpec[] buffers, WeightSpec[] weights, RopeTable[] ropeTables, int logitsBuffer, ExpertLayer[]? experts = null, bool partial = false)
    {
        Experts = experts ?? [];
        Ops = ops;
        Buffers = buffers;
        Weights = weights;
        RopeTables = ropeTables;
        LogitsBuffer = logitsBuffer;
        HeadStart = Array.FindIndex(ops, o => o.Kind == OpKind.GatherLogitRows);
        if (HeadStart < 0 && !partial) throw new InvalidOperationException("a model graph must gather its logit rows");
        HasHead = HeadStart >= 0;
        if (!HasHead) HeadStart = ops.Length;
    }

    public ModelOp[] Ops { get; }
    public BufferSpec[] Buffers { get; }
    public WeightSpec[] Weights { get; }
    public RopeTable[] RopeTables { get; }
    /// <summary>The mixture-of-experts blocks, by <see cref="OpKind.MixtureOfExperts"/>'s <see cref="ModelOp.Param"/>.</summary>
    public ExpertLayer[] Experts { get; }
    /// <summary>The buffer that receives the logits ([logit rows, vocab]).</summary>
    public int LogitsBuffer { get; }
    /// <summary>Index of the first operation on logit rows (skipped when no segment wants logits); the end of a stage without the head.</summary>
    public int HeadStart { get; }
    /// <summary>Whether the graph computes logits (a pipeline stage before the last does not).</summary>
    public bool HasHead { get; }

    /// <summary>cos/sin of every token's rotation angles for table <paramref name="table"/>, [tokenCount, RopeDim / 2] each.</summary>
    public void ComputeRopeAngles(int table, ModelBatch batch, Span<float> cos, Span<float> sin)
    {
        var invFreq = RopeTables[table].InvFreq;
        int half = invFreq.Length;
        for (int t = 0; t < batch.TokenCount; t++)
        {
            int pos = batch.Positions[t];
            double scale = RopeTables[table].Scale;
            for (int i = 0; i < half; i++)
            {
                double theta = pos * invFreq[i];
                cos[t * half + i] = (float)(Math.Cos(theta) * scale);
                sin[t * half + i] = (float)(Math.Sin(theta) * scale);
            }
        }
    }
}

/// <summary>
/// One mixture-of-experts block: its router (a weight id, [experts, dim]), each expert's gate, up ([width, dim]) and down
/// ([dim, width]) weight ids by expert index, how many experts each token uses and whether their weights are
/// renormalised to sum to 1; and the shared expert (weight ids, -1 when absent) with its gate vector.
/// </summary>
/// <remarks>
/// Routing (as transformers and llama.cpp): p = softmax(router · x) over all experts, the k largest kept (ties to the lower
/// index), their weights p or p / Σ p. Expert e's weights are <c>Gate[e]</c>, <c>Up[e]</c> and <c>Down[e]</c>, so a
/// backend can place or run experts apart (expert parallelism).
/// </remarks>
internal sealed record ExpertLayer(int Router, int[] Gate, int[] Up, int[] Down, int Width, int TopK, bool NormalizeWeights,
    int SharedGate = -1, int SharedUp = -1, int SharedDown = -1, int SharedGateInput = -1, int SharedWidth = 0)
{
    /// <summary>Number of routed experts.</summary>
    public int Count => Gate.Length;

    /// <summary>Whether a shared expert runs on every token beside the routed ones.</summary>
    public bool HasShared => SharedGate >= 0;
}

/// <summary>An activation buffer: <paramref name="Width"/> floats per row, one row per token or per logit row.</summary>
internal readonly record struct BufferSpec(string Name, int Width, bool LogitRows);

/// <summary>
/// A weight tensor by its GGUF name: a <paramref name="Rows"/> × <paramref name="Cols"/> matrix, or a vector of
/// <paramref name="Rows"/> values (<paramref name="Cols"/> 0). A matrix may be rows <paramref name="FirstRow"/> … of a
/// stored tensor of <paramref name="StoredRows"/> rows (a fused QKV or gate/up); StoredRows 0 means Rows. An expert's
/// matrix is expert <paramref name="Expert"/> of <paramref name="Experts"/> stacked under one GGUF name (ggml
/// <c>[cols, rows, experts]</c>; one tensor per expert in Hugging Face checkpoints); Experts 0 for any other weight.
/// </summary>
internal readonly record struct WeightSpec(string Name, int Rows, int Cols, int FirstRow = 0, int StoredRows = 0, int Expert = 0, int Experts = 0)
{
    public bool IsMatrix => Cols > 0;

    /// <summary>Whether this is one expert's matrix of a stacked expert tensor.</summary>
    public bool IsExpert => Experts > 0;

    /// <summary>Rows of the tensor as stored.</summary>
    public int TensorRows => StoredRows == 0 ? Rows : StoredRows;

    /// <summary>Binds every matrix of <paramref name="specs"/> (default for vectors, and for those <paramref name="used"/> marks unused); slices of one stored tensor share one binding.</summary>
    public static Backends.Cpu.WeightMatrix[] BindMatrices(IWeightSource weights, WeightSpec[] specs, bool[]? used = null)
    {
        var result = new Backends.Cpu.WeightMatrix[specs.Length];
        Dictionary<string, Backends.Cpu.WeightMatrix>? fused = null;
        for (int i = 0; i < specs.Length; i++)
        {
            var s = specs[i];
            if (!s.IsMatrix || (used is not null && !used[i])) continue;
            if (s.IsExpert)
            {
                result[i] = weights.GetExpertMatrix(s.Name, s.Expert, s.Experts, s.Rows, s.Cols);
                continue;
            }
            if (s.StoredRows == 0)
            {
                result[i] = weights.GetMatrix(s.Name, s.Rows, s.Cols);
                continue;
            }
            fused ??= [];
            if (!fused.TryGetValue(s.Name, out var whole)) fused[s.Name] = whole = weights.GetMatrix(s.Name, s.StoredRows, s.Cols);
            result[i] = whole.RowSlice(s.FirstRow, s.Rows);
        }
        return result;
    }
}

/// <summary>RoPE of <paramref name="RopeDim"/> dimensions of heads of <paramref name="HeadDim"/>, angle position × InvFreq[i].</summary>
/// <remarks><paramref name="Scale"/> multiplies cos and sin (LongRoPE's attention factor).</remarks>
internal sealed record RopeTable(double[] InvFreq, int HeadDim, int RopeDim, RopeLayout Layout, double Scale = 1.0);
