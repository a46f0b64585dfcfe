using Inference.Backends.Cpu;
using Inference.Models;

namespace Inference.Tests.Models;

/// <summary>
/// A plain forward pass for one sequence (llama2.c style, double accumulation) over any weight source: the reference the
/// bound weights and the engine are checked with. It reads the architecture's features from the configuration and the
/// tensors present, written independently of the model graph: Q/K/V biases, per-head Q/K RMSNorm (qwen3, gemma3),
/// post-attention and post-feed-forward norms, gemma's √dim embedding scale and GELU-tanh, the attention scale, sliding
/// windows with their own RoPE base, attention and final logit soft-capping.
/// </summary>
internal static class HfReferenceForward
{
    /// <param name="w">The weights, by GGUF name.</param>
    /// <param name="c">The configuration.</param>
    /// <param name="tokens">The sequence.</param>
    /// <param name="ggmlGelu">
    /// GELU as ggml's CPU backend computes it (input and output rounded to f16 through its table, 0 below −10 and the
    /// identity above 10) instead of exactly: to show that this rounding is what separates llama.cpp's gemma logits from
    /// an exact forward pass.
    /// </param>
    public static float[] LastLogits(IWeightSource w, ModelConfig c, int[] tokens, bool ggmlGelu = false)
    {
        int dim = c.Dim, hd = c.HeadDim, n = tokens.Length;
        bool gemma = c.Architecture is "gemma2" or "gemma3";
        var embedding = Dense(w.GetMatrix("token_embd.weight", c.VocabSize, dim));
        var output = w.Contains("output.weight") ? Dense(w.GetMatrix("output.weight", c.VocabSize, dim)) : embedding;
        var keys = new double[c.LayerCount][][];   // [layer][pos][kvDim]
        var values = new double[c.LayerCount][][];
        double[] x = new double[dim];
        var freqFactors = c.RopeScaling switch
        {
            RopeScaling.Llama3 => w.GetVector("rope_freqs.weight", c.RopeDim / 2),
            RopeScaling.LongRope => w.GetVector(c.UseLongRopeFactors ? "rope_factors_long.weight" : "rope_factors_short.weight", c.RopeDim / 2),
            _ => null,
        };
        double mscale = c.RopeScaling == RopeScaling.LongRope ? c.RopeAttentionFactor : 1.0;
        double[] InvFreq(bool local)
        {
            var f = new double[c.RopeDim / 2];
            for (int i = 0; i < f.Length; i++)
            {
                if (local)
                {
                    f[i] = Math.Pow(c.SlidingWindowRopeBase, -2.0 * i / c.RopeDim);
                    continue;
                }
                f[i] = Math.Pow(c.RopeBase, -2.0 * i / c.RopeDim);
                if (freqFactors is not null) f[i] /= freqFactors[i];
                if (c.RopeScaling == RopeScaling.Linear) f[i] /= c.RopeScalingFactor;
            }
            return f;
        }
        double[] globalFreq = InvFreq(false), localFreq = c.SlidingWindowRopeBase > 0 ? InvFreq(true) : globalFreq;
        double scale = c.AttentionScale > 0 ? c.AttentionScale : 1.0 / Math.Sqrt(hd);
        var layers = new Layer[c.LayerCount];
        for (int l = 0; l < c.LayerCount; l++)
        {
            string p = $"blk.{l}.";
            float[][] wq, wk, wv, wGate, wUp;
            if (w.Contains(p + "attn_qkv.weight"))
            {
                // phi3: Q, K and V rows of one matrix.
                var qkv = Dense(w.GetMatrix(p + "attn_qkv.weight", c.QDim + 2 * c.KvDim, dim));
                (wq, wk, wv) = (qkv[..c.QDim], qkv[c.QDim..(c.QDim + c.KvDim)], qkv[(c.QDim + c.KvDim)..]);
            }
            else
            {
                (wq, wk, wv) = (Dense(w.GetMatrix(p + "attn_q.weight", c.QDim, dim)), Dense(w.GetMatrix(p + "attn_k.weight", c.KvDim, dim)),
                    Dense(w.GetMatrix(p + "attn_v.weight", c.KvDim, dim)));
            }
            Experts? moe = null;
            if (c.IsSparseLayer(l))
            {
                // Mixture of experts: the router, each expert's gate/up/down, and qwen2moe's gated shared expert.
                int e = c.ExpertCount, ew = c.ExpertWidth;
                var gates = new float[e][][];
                var ups = new float[e][][];
                var downs = new float[e][][];
                for (int i = 0; i < e; i++)
                {
                    gates[i] = Dense(w.GetExpertMatrix(p + "ffn_gate_exps.weight", i, e, ew, dim));
                    ups[i] = Dense(w.GetExpertMatrix(p + "ffn_up_exps.weight", i, e, ew, dim));
                    downs[i] = Dense(w.GetExpertMatrix(p + "ffn_down_exps.weight", i, e, dim, ew));
                }
                bool shared = c.SharedExpertFfnDim > 0;
                int sw = c.SharedExpertFfnDim;
                moe = new Experts(Dense(w.GetMatrix(p + "ffn_gate_inp.weight", e, dim)), gates, ups, downs,
                    shared ? Dense(w.GetMatrix(p + "ffn_gate_shexp.weight", sw, dim)) : null,
                    shared ? Dense(w.GetMatrix(p + "ffn_up_shexp.weight", sw, dim)) : null,
                    shared ? Dense(w.GetMatrix(p + "ffn_down_shexp.weight", dim, sw)) : null,
                    shared ? w.GetVector(p + "ffn_gate_inp_shexp.weight", dim) : null);
                (wGate, wUp) = ([], []);
            }
            else if (!w.Contains(p + "ffn_gate.weight"))
            {
                // phi3: gate rows, then up rows, of one matrix.
                var gateUp = Dense(w.GetMatrix(p + "ffn_up.weight", 2 * c.FfnDim, dim));
                (wGate, wUp) = (gateUp[..c.FfnDim], gateUp[c.FfnDim..]);
            }
            else
            {
                (wGate, wUp) = (Dense(w.GetMatrix(p + "ffn_gate.weight", c.FfnDim, dim)), Dense(w.GetMatrix(p + "ffn_up.weight", c.FfnDim, dim)));
            }
            layers[l] = new Layer(w.GetVector(p + "attn_norm.weight", dim)!,
                wq, wk, wv, Dense(w.GetMatrix(p + "attn_output.weight", dim, c.QDim)),
                w.GetVector(p + "attn_q.bias", c.QDim, optional: true), w.GetVector(p + "attn_k.bias", c.KvDim, optional: true),
                w.GetVector(p + "attn_v.bias", c.KvDim, optional: true),
                w.GetVector(p + "attn_q_norm.weight", hd, optional: true), w.GetVector(p + "attn_k_norm.weight", hd, optional: true),
                w.GetVector(p + "post_attention_norm.weight", dim, optional: true), w.GetVector(p + "ffn_norm.weight", dim)!,
                wGate, wUp, moe is null ? Dense(w.GetMatrix(p + "ffn_down.weight", dim, c.FfnDim)) : [], w.GetVector(p + "post_ffw_norm.weight", dim, optional: true), moe);
            keys[l] = new double[n][];
            values[l] = new double[n][];
        }
        var outputNorm = w.GetVector("output_norm.weight", dim)!;

        for (int pos = 0; pos < n; pos++)
        {
            for (int i = 0; i < dim; i++) x[i] = embedding[tokens[pos]][i] * (gemma ? Math.Sqrt(dim) : 1.0);
            for (int l = 0; l < c.LayerCount; l++)
            {
                var L = layers[l];
                int window = c.LayerSlidingWindow(l);
                var xb = RmsNorm(x, L.AttnNorm, c.RmsEps);
                var q = MatVec(L.Q, xb, L.Qb);
                var k = MatVec(L.K, xb, L.Kb);
                var v = MatVec(L.V, xb, L.Vb);
                if (L.QNorm is not null) HeadNorm(q, L.QNorm, c.RmsEps);
                if (L.KNorm is not null) HeadNorm(k, L.KNorm, c.RmsEps);
                var invFreq = window > 0 ? localFreq : globalFreq;
                Rope(q, c.HeadCount, hd, c.RopeDim, c.RopeLayout, pos, invFreq, window > 0 && localFreq != globalFreq ? 1.0 : mscale);
                Rope(k, c.KvHeadCount, hd, c.RopeDim, c.RopeLayout, pos, invFreq, window > 0 && localFreq != globalFreq ? 1.0 : mscale);
                keys[l][pos] = k;
                values[l][pos] = v;
                var att = new double[c.QDim];
                int first = window > 0 ? Math.Max(0, pos + 1 - window) : 0;
                for (int h = 0; h < c.HeadCount; h++)
                {
                    int kvh = h / c.KvMul;
                    var scores = new double[pos + 1];
                    double max = double.NegativeInfinity;
                    for (int t = first; t <= pos; t++)
                    {
                        double s = 0;
                        for (int i = 0; i < hd; i++) s += q[h * hd + i] * keys[l][t][kvh * hd + i];
                        s *= scale;
                        if (c.AttentionLogitSoftCap > 0) s = c.AttentionLogitSoftCap * Math.Tanh(s / c.AttentionLogitSoftCap);
                        scores[t] = s;
                        max = Math.Max(max, s);
                    }
                    double sum = 0;
                    for (int t = first; t <= pos; t++) sum += scores[t] = Math.Exp(scores[t] - max);
                    for (int t = first; t <= pos; t++)
                        for (int i = 0; i < hd; i++) att[h * hd + i] += scores[t] / sum * values[l][t][kvh * hd + i];
                }
                var o = MatVec(L.O, att, null);
                if (L.PostAttnNorm is not null) o = RmsNorm(o, L.PostAttnNorm, c.RmsEps);
                for (int i = 0; i < dim; i++) x[i] += o[i];
                xb = RmsNorm(x, L.FfnNorm, c.RmsEps);
                if (L.Moe is { } m)
                {
                    var moeOut = MixtureOfExperts(m, xb, c.ExpertUsedCount, c.ExpertWeightsNorm);
                    for (int i = 0; i < dim; i++) x[i] += moeOut[i];
                    continue;
                }
                var gate = MatVec(L.Gate, xb, null);
                var up = MatVec(L.Up, xb, null);
                for (int i = 0; i < gate.Length; i++)
                {
                    double g = gate[i];
                    gate[i] = (gemma ? (ggmlGelu ? GgmlGelu(g) : Gelu(g)) : g / (1 + Math.Exp(-g))) * up[i];
                }
                var down = MatVec(L.Down, gate, null);
                if (L.PostFfwNorm is not null) down = RmsNorm(down, L.PostFfwNorm, c.RmsEps);
                for (int i = 0; i < dim; i++) x[i] += down[i];
            }
        }
        var final = RmsNorm(x, outputNorm, c.RmsEps);
        var logits = MatVec(output, final, null);
        if (c.FinalLogitSoftCap > 0)
            for (int i = 0; i < logits.Length; i++) logits[i] = c.FinalLogitSoftCap * Math.Tanh(logits[i] / c.FinalLogitSoftCap);
        return Array.ConvertAll(logits, v => (float)v);
    }

    /// <summary>
    /// Σ over the top-k experts (softmax of the router's logits; ties to the lower index) of p or p / Σp times the
    /// expert's SwiGLU, plus σ(g · x) times the shared expert's SwiGLU where there is one.
    /// </summary>
    private static double[] MixtureOfExperts(Experts m, double[] x, int k, bool normalize)
    {
        var logits = MatVec(m.Router, x, null);
        double max = logits.Max(), sum = 0;
        var prob = new double[logits.Length];
        for (int e = 0; e < prob.Length; e++) sum += prob[e] = Math.Exp(logits[e] - max);
        for (int e = 0; e < prob.Length; e++) prob[e] /= sum;
        var top = Enumerable.Range(0, prob.Length).OrderByDescending(e => prob[e]).ThenBy(e => e).Take(k).ToArray();
        double total = top.Sum(e => prob[e]);
        var result = new double[x.Length];
        foreach (int e in top)
        {
            var y = SwiGluExpert(m.Gate[e], m.Up[e], m.Down[e], x);
            double weight = normalize ? prob[e] / total : prob[e];
            for (int i = 0; i < result.Length; i++) result[i] += weight * y[i];
        }
        if (m.SharedGate is not null)
        {
            double g = 0;
            for (int i = 0; i < x.Length; i++) g += m.SharedGateInput![i] * x[i];
            double sigma = 1 / (1 + Math.Exp(-g));
            var y = SwiGluExpert(m.SharedGate, m.SharedUp!, m.SharedDown!, x);
            for (int i = 0; i < result.Length; i++) result[i] += sigma * y[i];
        }
        return result;
    }

    private static double[] SwiGluExpert(float[][] gate, float[][] up, float[][] down, double[] x)
    {
        var g = MatVec(gate, x, null);
        var u = MatVec(up, x, null);
        for (int i = 0; i < g.Length; i++) g[i] = g[i] / (1 + Math.Exp(-g[i])) * u[i];
        return MatVec(down, g, null);
    }

    private sealed record Experts(float[][] Router, float[][][] Gate, float[][][] Up, float[][][] Down,
        float[][]? SharedGate, float[][]? SharedUp, float[][]? SharedDown, float[]? SharedGateInput);

    private static double Gelu(double g) => 0.5 * g * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (g + 0.044715 * g * g * g)));

    private static double GgmlGelu(double g)
    {
        float x = (float)g;
        if (x <= -10f) return 0;
        if (x >= 10f) return x;
        return (float)(Half)Gelu((float)(Half)x);
    }

    private sealed record Layer(float[] AttnNorm, float[][] Q, float[][] K, float[][] V, float[][] O, float[]? Qb, float[]? Kb, float[]? Vb,
        float[]? QNorm, float[]? KNorm, float[]? PostAttnNorm, float[] FfnNorm, float[][] Gate, float[][] Up, float[][] Down, float[]? PostFfwNorm,
        Experts? Moe);

    /// <summary>RMSNorm of every head of <paramref name="v"/> with one [headDim] weight.</summary>
    private static void HeadNorm(double[] v, float[] weight, float eps)
    {
        int hd = weight.Length;
        for (int h = 0; h < v.Length / hd; h++)
        {
            var head = RmsNorm(v[(h * hd)..((h + 1) * hd)], weight, eps);
            head.CopyTo(v, h * hd);
        }
    }

    private static unsafe float[][] Dense(WeightMatrix m)
    {
        var rows = new float[m.Rows][];
        for (int r = 0; r < m.Rows; r++)
        {
            rows[r] = new float[m.Cols];
            WeightConversion.ToFloats(m.Type, m.Row(r), rows[r]);
        }
        return rows;
    }

    private static double[] RmsNorm(double[] x, float[] weight, float eps)
    {
        double ss = 0;
        foreach (var v in x) ss += v * v;
        double scale = 1.0 / Math.Sqrt(ss / x.Length + eps);
        var result = new double[x.Length];
        for (int i = 0; i < x.Length; i++) result[i] = x[i] * scale * weight[i];
        return result;
    }

    private static double[] MatVec(float[][] m, double[] x, float[]? bias)
    {
        var y = new double[m.Length];
        for (int r = 0; r < m.Length; r++)
        {
            double s = bias?[r] ?? 0;
            var row = m[r];
            for (int i = 0; i < x.Length; i++) s += row[i] * x[i];
            y[r] = s;
        }
        return y;
    }

    private static void Rope(double[] v, int heads, int hd, int ropeDim, RopeLayout layout, int pos, double[] invFreq, double mscale)
    {
        int half = ropeDim / 2;
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < half; i++)
            {
                int a = h * hd + (layout == RopeLayout.Neox ? i : 2 * i);
                int b = h * hd + (layout == RopeLayout.Neox ? i + half : 2 * i + 1);
                double theta = pos * invFreq[i], cos = Math.Cos(theta) * mscale, sin = Math.Sin(theta) * mscale;
                double x0 = v[a], x1 = v[b];
                v[a] = x0 * cos - x1 * sin;
                v[b] = x0 * sin + x1 * cos;
            }
        }
    }
}
