using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// Layer blocks shared by architectures (as model files share layer modules): each emits its operations for the
/// builder's current block, naming tensors by their GGUF suffixes.
/// </summary>
internal static class Blocks
{
    /// <summary>The token embedding into the residual stream <c>x</c>; returns the embedding matrix (for a tied output head).</summary>
    public static int Embedding(GraphBuilder b, int x)
    {
        var c = b.Config;
        int table = b.Matrix("token_embd.weight", c.VocabSize, c.Dim);
        b.Embed(x, table);
        return table;
    }

    /// <summary>
    /// RoPE angles from the configuration: θᵢ = base^(−2i/ropeDim), divided by Llama 3.1's per-dimension factors
    /// (<c>rope_freqs.weight</c>) or by the linear scaling factor. With <paramref name="unscaledBase"/> (gemma3's local
    /// layers), that base and no scaling.
    /// </summary>
    public static RopeTable DefaultRope(GraphBuilder b, float unscaledBase = 0f)
    {
        var c = b.Config;
        var invFreq = new double[c.RopeDim / 2];
        bool scaled = unscaledBase == 0f;
        float[]? freqFactors = !scaled ? null : c.RopeScaling switch
        {
            RopeScaling.Llama3 => b.ReadVector("rope_freqs.weight", c.RopeDim / 2),
            RopeScaling.LongRope => b.ReadVector(c.UseLongRopeFactors ? "rope_factors_long.weight" : "rope_factors_short.weight", c.RopeDim / 2),
            _ => null,
        };
        double ropeBase = scaled ? c.ScaledRopeBase() : unscaledBase;
        for (int i = 0; i < invFreq.Length; i++)
        {
            invFreq[i] = Math.Pow(ropeBase, -2.0 * i / c.RopeDim);
            if (freqFactors is not null) invFreq[i] /= freqFactors[i];
            if (scaled && c.RopeScaling == RopeScaling.Linear) invFreq[i] /= c.RopeScalingFactor;
            if (scaled && c.RopeScaling == RopeScaling.Yarn)
            {
                double ramp = c.YarnRamp(i);
                invFreq[i] = invFreq[i] / c.RopeScalingFactor * (1 - ramp) + invFreq[i] * ramp;
            }
        }
        return new RopeTable(invFreq, c.HeadDim, c.RopeDim, c.RopeLayout, scaled ? c.RopeAttentionFactor : 1.0);
    }

    /// <summary>
    /// Pre-norm self-attention with a residual: x += Wo · attention(rope(Wq·n + bq), rope(Wk·n + bk), Wv·n + bv), n = rmsnorm(x) ⊙ attn_norm.
    /// Biases are used where the configuration or the tensors say so. With <paramref name="qkNorm"/> (qwen3, gemma3) every
    /// head of Q and K is RMS-normalised with <c>attn_q_norm</c>/<c>attn_k_norm</c> ([headDim]) before RoPE; with
    /// <paramref name="postNorm"/> (gemma) the output is RMS-normalised with <c>post_attention_norm</c> before the residual
    /// add. The configuration's attention scale (as a factor on Q) and logit soft-capping apply.
    /// </summary>
    /// <remarks>With <paramref name="fusedQkv"/> (phi3) Q, K and V are the row ranges of one <c>attn_qkv</c> matrix.</remarks>
    public static void SelfAttention(GraphBuilder b, int x, int xb, int rope, bool qkNorm = false, bool postNorm = false, bool fusedQkv = false)
    {
        var c = b.Config;
        int q = b.Buffer("q", c.QDim), k = b.Buffer("k", c.KvDim), v = b.Buffer("v", c.KvDim), att = b.Buffer("att", c.QDim);
        b.RmsNorm(x, b.Vector(b.LayerName("attn_norm.weight"), c.Dim), xb, c.RmsEps);
        if (fusedQkv)
        {
            string qkv = b.LayerName("attn_qkv.weight");
            int rows = c.QDim + 2 * c.KvDim;
            b.MatMul(xb,
                b.MatrixSlice(qkv, rows, 0, c.QDim, c.Dim), q,
                b.MatrixSlice(qkv, rows, c.QDim, c.KvDim, c.Dim), k,
                b.MatrixSlice(qkv, rows, c.QDim + c.KvDim, c.KvDim, c.Dim), v);
        }
        else
        {
            b.MatMul(xb,
                b.Matrix(b.LayerName("attn_q.weight"), c.QDim, c.Dim), q,
                b.Matrix(b.LayerName("attn_k.weight"), c.KvDim, c.Dim), k,
                b.Matrix(b.LayerName("attn_v.weight"), c.KvDim, c.Dim), v);
        }
        b.AddBias(q, Bias(b, "attn_q.bias", c.QDim));
        b.AddBias(k, Bias(b, "attn_k.bias", c.KvDim));
        b.AddBias(v, Bias(b, "attn_v.bias", c.KvDim));
        if (qkNorm)
        {
            b.RmsNorm(q, b.Vector(b.LayerName("attn_q_norm.weight"), c.HeadDim), q, c.RmsEps, c.HeadDim);
            b.RmsNorm(k, b.Vector(b.LayerName("attn_k_norm.weight"), c.HeadDim), k, c.RmsEps, c.HeadDim);
        }
        b.Rope(q, rope);
        b.Rope(k, rope);
        // The attention kernels scale scores by 1/√headDim; another scale is a factor on Q (as llama.cpp applies it).
        if (c.AttentionScale > 0 && c.AttentionScale != 1f / MathF.Sqrt(c.HeadDim)) b.Scale(q, c.AttentionScale * MathF.Sqrt(c.HeadDim));
        b.Attention(q, k, v, att, c.LayerSlidingWindow(b.Layer), c.AttentionLogitSoftCap);
        b.MatMul(att, b.Matrix(b.LayerName("attn_output.weight"), c.Dim, c.QDim), xb);
        if (postNorm) b.RmsNorm(xb, b.Vector(b.LayerName("post_attention_norm.weight"), c.Dim), xb, c.RmsEps);
        b.AddTo(x, xb);
    }

    /// <summary>A block's bias: required when the configuration says the model has them, else used where present.</summary>
    private static int Bias(GraphBuilder b, string suffix, int length) =>
        b.Config.HasAttentionBias ? b.Vector(b.LayerName(suffix), length) : b.OptionalVector(b.LayerName(suffix), length);

    /// <summary>
    /// Pre-norm SwiGLU feed-forward with a residual: x += Wdown · (silu(Wgate·n) ⊙ Wup·n), n = rmsnorm(x) ⊙ ffn_norm.
    /// With <paramref name="gelu"/> (gemma's GeGLU) GELU's tanh approximation instead of SiLU; with
    /// <paramref name="postNorm"/> the output is RMS-normalised with <c>post_ffw_norm</c> before the residual add.
    /// </summary>
    /// <remarks>With <paramref name="fusedGateUp"/> (phi3) the gate and up projections are the first and second halves of one <c>ffn_up</c> matrix.</remarks>
    public static void SwiGluFeedForward(GraphBuilder b, int x, int xb, bool gelu = false, bool postNorm = false, bool fusedGateUp = false)
    {
        var c = b.Config;
        int gate = b.Buffer("gate", c.FfnDim), up = b.Buffer("up", c.FfnDim);
        b.RmsNorm(x, b.Vector(b.LayerName("ffn_norm.weight"), c.Dim), xb, c.RmsEps);
        if (fusedGateUp)
        {
            string gateUp = b.LayerName("ffn_up.weight");
            b.MatMul(xb,
                b.MatrixSlice(gateUp, 2 * c.FfnDim, 0, c.FfnDim, c.Dim), gate,
                b.MatrixSlice(gateUp, 2 * c.FfnDim, c.FfnDim, c.FfnDim, c.Dim), up);
        }
        else
        {
            b.MatMul(xb,
                b.Matrix(b.LayerName("ffn_gate.weight"), c.FfnDim, c.Dim), gate,
                b.Matrix(b.LayerName("ffn_up.weight"), c.FfnDim, c.Dim), up);
        }
        if (gelu) b.GeGlu(gate, up);
        else b.SwiGlu(gate, up);
        b.MatMul(gate, b.Matrix(b.LayerName("ffn_down.weight"), c.Dim, c.FfnDim), xb);
        if (postNorm) b.RmsNorm(xb, b.Vector(b.LayerName("post_ffw_norm.weight"), c.Dim), xb, c.RmsEps);
        b.AddTo(x, xb);
    }

    /// <summary>
    /// Pre-norm mixture-of-experts feed-forward with a residual: x += Σₑ wₑ · SwiGLU expert e (n), n = rmsnorm(x) ⊙
    /// ffn_norm, over the top-k experts of the router <c>ffn_gate_inp</c>; experts stacked in <c>ffn_{gate,up,down}_exps</c>.
    /// Where the configuration has a shared expert (qwen2moe), σ(ffn_gate_inp_shexp · n) · SwiGLU shared expert (n) is
    /// added (<c>ffn_{gate,up,down}_shexp</c>).
    /// </summary>
    public static void MixtureOfExpertsFeedForward(GraphBuilder b, int x, int xb)
    {
        var c = b.Config;
        int moe = b.Buffer("moe", c.Dim);
        b.RmsNorm(x, b.Vector(b.LayerName("ffn_norm.weight"), c.Dim), xb, c.RmsEps);
        int experts = c.ExpertCount, width = c.ExpertWidth;
        var gate = new int[experts];
        var up = new int[experts];
        var down = new int[experts];
        string gateName = b.LayerName("ffn_gate_exps.weight"), upName = b.LayerName("ffn_up_exps.weight"), downName = b.LayerName("ffn_down_exps.weight");
        for (int e = 0; e < experts; e++)
        {
            gate[e] = b.ExpertMatrix(gateName, e, experts, width, c.Dim);
            up[e] = b.ExpertMatrix(upName, e, experts, width, c.Dim);
            down[e] = b.ExpertMatrix(downName, e, experts, c.Dim, width);
        }
        var layer = new ExpertLayer(b.Matrix(b.LayerName("ffn_gate_inp.weight"), experts, c.Dim), gate, up, down, width, c.ExpertUsedCount, c.ExpertWeightsNorm);
        int shared = c.SharedExpertFfnDim;
        if (shared > 0)
        {
            layer = layer with
            {
                SharedGate = b.Matrix(b.LayerName("ffn_gate_shexp.weight"), shared, c.Dim),
                SharedUp = b.Matrix(b.LayerName("ffn_up_shexp.weight"), shared, c.Dim),
                SharedDown = b.Matrix(b.LayerName("ffn_down_shexp.weight"), c.Dim, shared),
                SharedGateInput = b.Vector(b.LayerName("ffn_gate_inp_shexp.weight"), c.Dim),
                SharedWidth = shared,
            };
        }
        b.MixtureOfExperts(xb, moe, layer);
        b.AddTo(x, moe);
    }

    /// <summary>
    /// The output head on each segment's last token: logits = W_out · rmsnorm(x) ⊙ output_norm, W_out being
    /// <c>output.weight</c> or, when absent, the embedding <paramref name="embedding"/> (tied). Returns the logits buffer.
    /// </summary>
    public static int OutputHead(GraphBuilder b, int x, int embedding)
    {
        var c = b.Config;
        b.Layer = -1;
        int last = b.Buffer("last", c.Dim, logitRows: true), logits = b.Buffer("logits", c.VocabSize, logitRows: true);
        b.GatherLogitRows(x, last);
        b.RmsNorm(last, b.Vector("output_norm.weight", c.Dim), last, c.RmsEps);
        int output = b.Has("output.weight") ? b.Matrix("output.weight", c.VocabSize, c.Dim) : embedding;
        b.MatMul(last, output, logits);
        b.SoftCap(logits, c.FinalLogitSoftCap);
        return logits;
    }

    /// <summary>
    /// The pre-norm decoder llama, qwen2, qwen3, phi3 and their mixtures of experts (Mixtral, qwen2moe, qwen3moe) share:
    /// the embedding, one RoPE table, then per layer <see cref="SelfAttention"/> and the SwiGLU <see cref="SwiGluFeedForward"/>
    /// (<see cref="MixtureOfExpertsFeedForward"/> in the layers that have experts), then the <see cref="OutputHead"/>.
    /// </summary>
    /// <param name="b">The graph being built.</param>
    /// <param name="qkNorm">Per-head RMSNorm of Q and K (qwen3).</param>
    /// <param name="fusedWhereStored">Read a layer's Q/K/V and gate/up from the fused tensors unless the file stores
    /// them separately (phi3; llama.cpp reads both).</param>
    public static int PreNormDecoder(GraphBuilder b, bool qkNorm = false, bool fusedWhereStored = false)
    {
        var c = b.Config;
        int x = b.Buffer("x", c.Dim), xb = b.Buffer("xb", c.Dim);
        int embedding = Embedding(b, x);
        int rope = b.RopeTable(DefaultRope(b));
        for (int l = 0; l < c.LayerCount; l++)
        {
            b.Layer = l;
            SelfAttention(b, x, xb, rope, qkNorm, fusedQkv: fusedWhereStored && !b.Has(b.LayerName("attn_q.weight")));
            if (c.IsSparseLayer(l)) MixtureOfExpertsFeedForward(b, x, xb);
            else SwiGluFeedForward(b, x, xb, fusedGateUp: fusedWhereStored && !b.Has(b.LayerName("ffn_gate.weight")));
        }
        return OutputHead(b, x, embedding);
    }
}
