namespace Inference.Models.Graph;

/// <summary>The kinds of layer operation a <see cref="ModelGraph"/> is made of; each backend implements every kind.</summary>
internal enum OpKind : byte
{
    /// <summary>
    /// Dst[t] = row <c>token[t] − Param</c> of matrix W0 (the embedding lookup); zeros where that row is outside W0 (a
    /// vocabulary-parallel rank's slice of the table starts at row <see cref="ModelOp.Param"/> of the whole one).
    /// </summary>
    Embed,
    /// <summary>Dst = Src / rms(Src) ⊙ W0 over rows of <see cref="ModelOp.Width"/> values; <see cref="ModelOp.Value"/> is ε.</summary>
    RmsNorm,
    /// <summary>Dst = W0·Src, and Dst2 = W1·Src, Dst3 = W2·Src when present: one shared input, one pass over it.</summary>
    MatMul,
    /// <summary>Dst[t] += W0 (a vector of the buffer's width) for every row.</summary>
    AddBias,
    /// <summary>Rotates every head of Dst by its token's position, with rotation table <see cref="ModelOp.Param"/>.</summary>
    Rope,
    /// <summary>
    /// Stores K = Src2 and V = Src3 in layer <see cref="ModelOp.Layer"/>'s cache, then Dst = causal attention of Q = Src
    /// over a sliding window of <see cref="ModelOp.Param"/> positions (0: every position), its scores soft-capped at
    /// <see cref="ModelOp.Value"/> (0: not capped).
    /// </summary>
    Attention,
    /// <summary>Dst += Src.</summary>
    Add,
    /// <summary>Dst = silu(Dst) ⊙ Src (Src may be overwritten).</summary>
    SwiGlu,
    /// <summary>Dst[i] = Src[token whose logits are row i] (each segment's last tokens that want logits); every operation after it runs on logit rows.</summary>
    GatherLogitRows,
    /// <summary>Dst ×= <see cref="ModelOp.Value"/> (gemma's embedding scale √dim, a query scale).</summary>
    Scale,
    /// <summary>Dst = c · tanh(Dst / c), c = <see cref="ModelOp.Value"/> (gemma2's final logit soft-capping).</summary>
    SoftCap,
    /// <summary>Dst = gelu(Dst) ⊙ Src with GELU's tanh approximation (gemma's GeGLU feed-forward; Src may be overwritten).</summary>
    GeGlu,
    /// <summary>
    /// A mixture-of-experts feed-forward: Dst = Σ over the top-k experts e of Src's router softmax (W0 · Src) of
    /// wₑ · downₑ(silu(gateₑ · Src) ⊙ upₑ · Src), plus a shared expert where the model has one, scaled by
    /// σ(gate_inp_shexp · Src). The experts, top-k and renormalisation are <see cref="ModelGraph.Experts"/>[<see cref="ModelOp.Param"/>].
    /// </summary>
    MixtureOfExperts,
    /// <summary>Dst = Σ over the ranks of a tensor-parallel group of their Dst (after a row-parallel product's partial sums).</summary>
    AllReduce,
    /// <summary>
    /// <see cref="MixtureOfExperts"/> over expert-parallel ranks (the tensor group; each holds some of the experts): every
    /// rank's share of the tokens goes to the ranks of its chosen experts and their outputs come back (two all-to-alls),
    /// are summed on the token's rank, and every rank gets every token's Dst (a ragged all-gather).
    /// </summary>
    ExpertAllToAll,
    /// <summary>
    /// The tensor-parallel group's first rank gets Dst = every rank's Src side by side ([logit rows, Σ widths]): a
    /// vocabulary-parallel output head's slices of the logits gathered into the whole rows.
    /// </summary>
    GatherColumns,
    /// <summary>Sends Src to rank <see cref="ModelOp.Param"/> of the pipeline (the next stage).</summary>
    Send,
    /// <summary>Receives Dst from rank <see cref="ModelOp.Param"/> of the pipeline (the previous stage).</summary>
    Receive,
}

/// <summary>
/// One layer operation: its kind, the activation buffers it reads and writes (indexes into
/// <see cref="ModelGraph.Buffers"/>, -1 when unused) and the weights it reads (indexes into <see cref="ModelGraph.Weights"/>).
/// </summary>
internal readonly record struct ModelOp
{
    public OpKind Kind { get; init; }
    /// <summary>Transformer block the operation belongs to (-1 outside the blocks).</summary>
    public int Layer { get; init; }
    public int Src { get; init; }
    public int Src2 { get; init; }
    public int Src3 { get; init; }
    public int Dst { get; init; }
    public int Dst2 { get; init; }
    public int Dst3 { get; init; }
    public int W0 { get; init; }
    public int W1 { get; init; }
    public int W2 { get; init; }
    /// <summary>Row width where the operation's rows are narrower than its buffer (per-head norms); else the buffer's width.</summary>
    public int Width { get; init; }
    /// <summary>An integer parameter (the rotation table of <see cref="OpKind.Rope"/>, the window of <see cref="OpKind.Attention"/>).</summary>
    public int Param { get; init; }
    /// <summary>A float parameter (ε of <see cref="OpKind.RmsNorm"/>, the factor of <see cref="OpKind.Scale"/>, the cap of <see cref="OpKind.SoftCap"/> and <see cref="OpKind.Attention"/>).</summary>
    public float Value { get; init; }

    /// <summary>An operation of <paramref name="kind"/> with every buffer and weight unset.</summary>
    public static ModelOp Of(OpKind kind, int layer) => new()
    {
        Kind = kind, Layer = layer, Src = -1, Src2 = -1, Src3 = -1, Dst = -1, Dst2 = -1, Dst3 = -1, W0 = -1, W1 = -1, W2 = -1,
    };
}
