using Inference.Models.Graph;

namespace Inference.Backends.Cpu;

/// <summary>
/// The plain mixture-of-experts feed-forward <see cref="MixtureOfExperts"/> is tested against: one token at a time,
/// float64, every weight row dequantized (<see cref="MatMulReference"/>), the experts of each token run in top-k order.
/// With <c>quantizedActivations</c> an expert's inputs are first rounded as the integer kernels of its weight type
/// round them (Q8_0 blocks of 32, Q8_K blocks of 256), so a quantized expert is checked to f32 round-off rather than to
/// the activation quantization's error.
/// </summary>
internal static class MixtureOfExpertsReference
{
    /// <summary>dst = the block <paramref name="layer"/> of src ([n, dim] each), as <see cref="MixtureOfExperts.Run"/> defines it.</summary>
    public static void Run(ExpertLayer layer, WeightMatrix[] matrices, float[]?[] vectors, ReadOnlySpan<float> src, Span<double> dst, int n,
        bool quantizedActivations = false)
    {
        _quantized = quantizedActivations;
        var router = matrices[layer.Router];
        int dim = router.Cols, experts = layer.Count, k = layer.TopK;
        var logits = new double[experts];
        for (int t = 0; t < n; t++)
        {
            var x = src.Slice(t * dim, dim);
            MatMulReference.Multiply(router, x, logits, 1);
            double max = double.NegativeInfinity, sum = 0;
            foreach (double l in logits) max = Math.Max(max, l);
            var p = new double[experts];
            for (int e = 0; e < experts; e++) sum += p[e] = Math.Exp(logits[e] - max);
            var chosen = new int[k];
            double chosenSum = 0;
            for (int j = 0; j < k; j++)
            {
                int best = -1;
                for (int e = 0; e < experts; e++)
                    if (Array.IndexOf(chosen, e, 0, j) < 0 && (best < 0 || p[e] > p[best])) best = e;
                chosen[j] = best;
                chosenSum += p[best] / sum;
            }
            var o = dst.Slice(t * dim, dim);
            o.Clear();
            foreach (int e in chosen)
            {
                double w = p[e] / sum;
                if (layer.NormalizeWeights) w /= chosenSum;
                var y = Expert(matrices[layer.Gate[e]], matrices[layer.Up[e]], matrices[layer.Down[e]], x);
                for (int i = 0; i < dim; i++) o[i] += w * y[i];
            }
            if (!layer.HasShared) continue;
            double g = 0;
            var gateInput = vectors[layer.SharedGateInput]!;
            for (int i = 0; i < dim; i++) g += (double)gateInput[i] * x[i];
            double sigma = 1 / (1 + Math.Exp(-g));
            var shared = Expert(matrices[layer.SharedGate], matrices[layer.SharedUp], matrices[layer.SharedDown], x);
            for (int i = 0; i < dim; i++) o[i] += sigma * shared[i];
        }
    }

    [ThreadStatic] private static bool _quantized;

    /// <summary>down · (silu(gate · x) ⊙ up · x) for one token.</summary>
    private static double[] Expert(in WeightMatrix gate, in WeightMatrix up, in WeightMatrix down, ReadOnlySpan<float> x)
    {
        var g = new double[gate.Rows];
        var u = new double[up.Rows];
        var xs = AsKernelsSee(gate.Type, x);
        MatMulReference.Multiply(gate, xs, g, 1);
        MatMulReference.Multiply(up, xs, u, 1);
        var h = new float[g.Length];
        for (int i = 0; i < h.Length; i++) h[i] = (float)(g[i] / (1 + Math.Exp(-g[i])) * u[i]);
        var y = new double[down.Rows];
        MatMulReference.Multiply(down, AsKernelsSee(down.Type, h), y, 1);
        return y;
    }

    /// <summary><paramref name="x"/> rounded through the activation blocks of weight type <paramref name="type"/> (when asked to and it has them).</summary>
    private static float[] AsKernelsSee(Loading.GgmlType type, ReadOnlySpan<float> x)
    {
        int block = _quantized ? MatMulReference.ActivationBlock(type) : 0;
        var result = x.ToArray();
        if (block == 0) return result;
        var q = new sbyte[block];
        var bsums = new short[16];
        for (int start = 0; start < result.Length; start += block)
        {
            float d = block == 32 ? ActivationQuantizer.Q8_0Block(x.Slice(start, 32), q) : Quantize.Q8_KBlock(x.Slice(start, 256), q, bsums);
            for (int j = 0; j < block; j++) result[start + j] = d * q[j];
        }
        return result;
    }
}
