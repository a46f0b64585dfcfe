using Inference.Backends.Cpu;
using Inference.Models;

namespace Inference.Tests.Models;

/// <summary>
/// A plain llama forward pass for one sequence (llama2.c style, double accumulation) over any weight source: the
/// reference the bound weights are checked with.
/// </summary>
internal static class HfReferenceForward
{
    public static float[] LastLogits(IWeightSource w, ModelConfig c, int[] tokens)
    {
        int dim = c.Dim, hd = c.HeadDim, n = tokens.Length;
        var embedding = Dense(w.GetMatrix("token_embd.weight", c.VocabSize, dim));
        var output = w.Contains("output.weight") ? Dense(w.GetMatrix("output.weight", c.VocabSize, dim)) : embedding;
        var keys = new double[c.LayerCount][][];   // [layer][pos][kvDim]
        var values = new double[c.LayerCount][][];
        double[] x = new double[dim];
        double[] invFreq = new double[c.RopeDim / 2];
        var freqFactors = c.RopeScaling == RopeScaling.Llama3 ? w.GetVector("rope_freqs.weight", c.RopeDim / 2) : null;
        for (int i = 0; i < invFreq.Length; i++)
        {
            invFreq[i] = Math.Pow(c.RopeBase, -2.0 * i / c.RopeDim);
            if (freqFactors is not null) invFreq[i] /= freqFactors[i];
            if (c.RopeScaling == RopeScaling.Linear) invFreq[i] /= c.RopeScalingFactor;
        }
        var layers = new (float[] AttnNorm, float[][] Q, float[][] K, float[][] V, float[][] O, float[]? Qb, float[]? Kb, float[]? Vb, float[] FfnNorm, float[][] Gate, float[][] Up, float[][] Down)[c.LayerCount];
        for (int l = 0; l < c.LayerCount; l++)
        {
            string p = $"blk.{l}.";
            layers[l] = (w.GetVector(p + "attn_norm.weight", dim)!,
                Dense(w.GetMatrix(p + "attn_q.weight", c.QDim, dim)), Dense(w.GetMatrix(p + "attn_k.weight", c.KvDim, dim)),
                Dense(w.GetMatrix(p + "attn_v.weight", c.KvDim, dim)), Dense(w.GetMatrix(p + "attn_output.weight", dim, c.QDim)),
                w.GetVector(p + "attn_q.bias", c.QDim, optional: true), w.GetVector(p + "attn_k.bias", c.KvDim, optional: true),
                w.GetVector(p + "attn_v.bias", c.KvDim, optional: true), w.GetVector(p + "ffn_norm.weight", dim)!,
                Dense(w.GetMatrix(p + "ffn_gate.weight", c.FfnDim, dim)), Dense(w.GetMatrix(p + "ffn_up.weight", c.FfnDim, dim)),
                Dense(w.GetMatrix(p + "ffn_down.weight", dim, c.FfnDim)));
            keys[l] = new double[n][];
            values[l] = new double[n][];
        }
        var outputNorm = w.GetVector("output_norm.weight", dim)!;

        for (int pos = 0; pos < n; pos++)
        {
            for (int i = 0; i < dim; i++) x[i] = embedding[tokens[pos]][i];
            for (int l = 0; l < c.LayerCount; l++)
            {
                var L = layers[l];
                var xb = RmsNorm(x, L.AttnNorm, c.RmsEps);
                var q = MatVec(L.Q, xb, L.Qb);
                var k = MatVec(L.K, xb, L.Kb);
                var v = MatVec(L.V, xb, L.Vb);
                Rope(q, c.HeadCount, hd, c.RopeDim, c.RopeLayout, pos, invFreq);
                Rope(k, c.KvHeadCount, hd, c.RopeDim, c.RopeLayout, pos, invFreq);
                keys[l][pos] = k;
                values[l][pos] = v;
                var att = new double[c.QDim];
                for (int h = 0; h < c.HeadCount; h++)
                {
                    int kvh = h / c.KvMul;
                    var scores = new double[pos + 1];
                    double max = double.NegativeInfinity;
                    for (int t = 0; t <= pos; t++)
                    {
                        double s = 0;
                        for (int i = 0; i < hd; i++) s += q[h * hd + i] * keys[l][t][kvh * hd + i];
                        scores[t] = s / Math.Sqrt(hd);
                        max = Math.Max(max, scores[t]);
                    }
                    double sum = 0;
                    for (int t = 0; t <= pos; t++) sum += scores[t] = Math.Exp(scores[t] - max);
                    for (int t = 0; t <= pos; t++)
                        for (int i = 0; i < hd; i++) att[h * hd + i] += scores[t] / sum * values[l][t][kvh * hd + i];
                }
                var o = MatVec(L.O, att, null);
                for (int i = 0; i < dim; i++) x[i] += o[i];
                xb = RmsNorm(x, L.FfnNorm, c.RmsEps);
                var gate = MatVec(L.Gate, xb, null);
                var up = MatVec(L.Up, xb, null);
                for (int i = 0; i < gate.Length; i++) gate[i] = gate[i] / (1 + Math.Exp(-gate[i])) * up[i];
                var down = MatVec(L.Down, gate, null);
                for (int i = 0; i < dim; i++) x[i] += down[i];
            }
        }
        var final = RmsNorm(x, outputNorm, c.RmsEps);
        var logits = MatVec(output, final, null);
        return Array.ConvertAll(logits, v => (float)v);
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

    private static void Rope(double[] v, int heads, int hd, int ropeDim, RopeLayout layout, int pos, double[] invFreq)
    {
        int half = ropeDim / 2;
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < half; i++)
            {
                int a = h * hd + (layout == RopeLayout.Neox ? i : 2 * i);
                int b = h * hd + (layout == RopeLayout.Neox ? i + half : 2 * i + 1);
                double theta = pos * invFreq[i], cos = Math.Cos(theta), sin = Math.Sin(theta);
                double x0 = v[a], x1 = v[b];
                v[a] = x0 * cos - x1 * sin;
                v[b] = x0 * sin + x1 * cos;
            }
        }
    }
}
