namespace Inference.Kernels.Reference;

/// <summary>Plain loops for the mixture-of-experts routing and combining kernels (<see cref="Layer.ExpertKernels"/>).</summary>
public static class ReferenceExperts
{
    /// <summary>
    /// Top-k routing in float64: per token, p = softmax(logits), the k largest p (the lower id on ties) in descending
    /// order, their weights p or p / Σp over the k.
    /// </summary>
    /// <param name="logits">Router logits, <c>[tokenCount, experts]</c>.</param>
    /// <param name="experts">Experts.</param>
    /// <param name="k">Experts per token.</param>
    /// <param name="normalize">Whether the k weights are renormalised to sum to 1.</param>
    /// <param name="chosen">Output expert ids, <c>[tokenCount, k]</c>.</param>
    /// <param name="weights">Output weights, <c>[tokenCount, k]</c>.</param>
    public static void Route(ReadOnlySpan<float> logits, int experts, int k, bool normalize, Span<int> chosen, Span<double> weights)
    {
        var p = new double[experts];
        for (int t = 0; t < logits.Length / experts; t++)
        {
            var row = logits.Slice(t * experts, experts);
            double max = double.NegativeInfinity, sum = 0;
            foreach (float l in row) max = Math.Max(max, l);
            for (int e = 0; e < experts; e++) sum += p[e] = Math.Exp(row[e] - max);
            double total = 0;
            for (int j = 0; j < k; j++)
            {
                int best = -1;
                for (int e = 0; e < experts; e++)
                    if (chosen.Slice(t * k, j).IndexOf(e) < 0 && (best < 0 || p[e] > p[best])) best = e;
                chosen[t * k + j] = best;
                total += weights[t * k + j] = p[best] / sum;
            }
            if (!normalize) continue;
            for (int j = 0; j < k; j++) weights[t * k + j] /= total;
        }
    }

    /// <summary>
    /// Groups slots by expert (a counting sort, an expert's slots in token order): expert e's rows are
    /// <c>starts[e] … starts[e + 1] − 1</c>, row r holds token <c>rowTokens[r]</c>, slot i's output is row <c>slotRows[i]</c>.
    /// The CPU path's grouping (<c>Inference.Backends.Cpu.MixtureOfExperts.Group</c>), so the device kernel is checked
    /// against what the CPU engine does.
    /// </summary>
    /// <param name="chosen">Expert of each slot, <c>[tokenCount, k]</c>.</param>
    /// <param name="experts">Experts.</param>
    /// <param name="k">Experts per token.</param>
    /// <param name="starts">Output, <c>[experts + 1]</c>.</param>
    /// <param name="rowTokens">Output, <c>[tokenCount · k]</c>.</param>
    /// <param name="slotRows">Output, <c>[tokenCount · k]</c>.</param>
    public static void Group(ReadOnlySpan<int> chosen, int experts, int k, Span<int> starts, Span<int> rowTokens, Span<int> slotRows) =>
        Inference.Backends.Cpu.MixtureOfExperts.Group(chosen, k, new int[experts], starts, slotRows, rowTokens);

    /// <summary><c>output[t, i] = Σⱼ weights[t, j] · y[slotRows[t, j], i]</c>.</summary>
    /// <param name="y">Expert outputs, <c>[rows, dim]</c>.</param>
    /// <param name="weights">Routing weights, <c>[tokenCount, k]</c>.</param>
    /// <param name="slotRows">Row of <paramref name="y"/> per slot, <c>[tokenCount, k]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="k">Experts per token.</param>
    public static void Combine(ReadOnlySpan<float> y, ReadOnlySpan<float> weights, ReadOnlySpan<int> slotRows, Span<float> output, int k)
    {
        int n = weights.Length / k, dim = output.Length / n;
        for (int t = 0; t < n; t++)
            for (int i = 0; i < dim; i++)
            {
                double sum = 0;
                for (int j = 0; j < k; j++) sum += (double)weights[t * k + j] * y[slotRows[t * k + j] * dim + i];
                output[t * dim + i] = (float)sum;
            }
    }

    /// <summary><c>output[t, i] += σ(gate[t]) · shared[t, i]</c> in float64.</summary>
    /// <param name="output">Accumulator, <c>[tokenCount, dim]</c>.</param>
    /// <param name="shared">Shared expert output, same shape.</param>
    /// <param name="gate">Gate logit per token.</param>
    public static void AddSigmoidGated(Span<float> output, ReadOnlySpan<float> shared, ReadOnlySpan<float> gate)
    {
        int dim = output.Length / gate.Length;
        for (int t = 0; t < gate.Length; t++)
        {
            double sigma = 1 / (1 + Math.Exp(-(double)gate[t]));
            for (int i = 0; i < dim; i++) output[t * dim + i] = (float)(output[t * dim + i] + sigma * shared[t * dim + i]);
        }
    }
}
