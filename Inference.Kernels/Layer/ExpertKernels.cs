using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels.Layer;

/// <summary>
/// The routing and combining steps of a mixture-of-experts feed-forward (references:
/// <see cref="Reference.ReferenceExperts.Route"/>, <see cref="Reference.ReferenceExperts.Group"/>, <see cref="Reference.ReferenceExperts.Combine"/>,
/// <see cref="Reference.ReferenceExperts.AddSigmoidGated"/>); the experts themselves are ordinary matrix products over
/// the rows routed to them.
/// </summary>
/// <remarks>
/// <code>
/// logits = router · x                         [n, experts]
/// Route:    p = softmax(logits); top-k; w = p or p / Σp      [n, k] expert ids and weights, ties to the lower id
/// Group:    per expert its slots in token order → starts [experts + 1], rowTokens [n·k], slotRows [n·k]
/// (experts: gather the rows of each expert's tokens, run the expert, its outputs land in rows of Y)
/// Combine:  out[t] = Σⱼ w[t, j] · Y[row of slot (t, j)]       j in top-k order
/// AddSigmoidGated: out[t] += σ(g[t]) · shared[t]              qwen2moe's shared expert
/// </code>
/// Every kernel works on one token's values alone, so a row's result does not depend on the other rows of the batch.
/// </remarks>
public static class ExpertKernels
{
    /// <summary>
    /// Top-k routing of one token per thread: its row of router logits becomes probabilities (softmax, in place), the
    /// <paramref name="k"/> largest (the lower expert id on ties) go to <paramref name="chosen"/> in descending order with
    /// their probabilities in <paramref name="weights"/>, divided by their sum when <paramref name="normalize"/> is 1.
    /// Implicitly grouped over the token count.
    /// </summary>
    /// <param name="token">Token.</param>
    /// <param name="logits">Router logits, <c>[tokenCount, experts]</c>; left holding the probabilities.</param>
    /// <param name="chosen">Output expert ids, <c>[tokenCount, k]</c>.</param>
    /// <param name="weights">Output weights, <c>[tokenCount, k]</c>.</param>
    /// <param name="experts">Experts (row length).</param>
    /// <param name="k">Experts per token (1 … experts).</param>
    /// <param name="normalize">1 to renormalise the k weights to sum to 1 (Mixtral, qwen3moe), 0 to keep them (qwen2moe).</param>
    public static void Route(Index1D token, ArrayView<float> logits, ArrayView<int> chosen, ArrayView<float> weights, int experts, int k, int normalize)
    {
        int t = token;
        long row = (long)t * experts, out0 = (long)t * k;
        // NOTE: the maximum first, so large logits do not overflow exp.
        float max = logits[row];
        for (int e = 1; e < experts; e++) max = XMath.Max(max, logits[row + e]);
        float sum = 0f;
        for (int e = 0; e < experts; e++)
        {
            float p = XMath.Exp(logits[row + e] - max);
            logits[row + e] = p;
            sum += p;
        }
        for (int e = 0; e < experts; e++) logits[row + e] /= sum;
        float total = 0f;
        for (int j = 0; j < k; j++)
        {
            int best = -1;
            float bestP = 0f;
            for (int e = 0; e < experts; e++)
            {
                bool taken = false;
                for (int i = 0; i < j; i++) taken |= chosen[out0 + i] == e;
                if (taken) continue;
                float p = logits[row + e];
                if (best < 0 || p > bestP)
                {
                    best = e;
                    bestP = p;
                }
            }
            chosen[out0 + j] = best;
            weights[out0 + j] = bestP;
            total += bestP;
        }
        if (normalize == 0) return;
        for (int j = 0; j < k; j++) weights[out0 + j] /= total;
    }

    /// <summary>
    /// Groups the routed slots by expert, one thread per expert and no atomics, so the order is the CPU path's (a counting
    /// sort: experts in id order, an expert's slots in token order): expert e's rows of the expert products are
    /// <c>starts[e] … starts[e + 1] − 1</c>, row r holds token <c>rowTokens[r]</c>, and slot i's output is row
    /// <c>slotRows[i]</c>. Implicitly grouped over the experts.
    /// </summary>
    /// <remarks>
    /// Thread e counts the slots that chose an expert below e (its first row) and e itself, then walks the slots in order.
    /// That is <c>experts · slots</c> reads in all, nothing for a decode step and small beside the expert products of a
    /// prefill. The ids come from <see cref="Route"/>, which always picks k distinct experts in range (NaN logits
    /// included: the first unpicked id wins), so every slot gets exactly one row.
    /// </remarks>
    /// <param name="expert">Expert.</param>
    /// <param name="chosen">Expert of each slot, <c>[tokenCount, k]</c>.</param>
    /// <param name="starts">Output, first row of each expert, <c>[experts + 1]</c> (the last is <paramref name="slots"/>).</param>
    /// <param name="rowTokens">Output, token of each row, <c>[slots]</c>.</param>
    /// <param name="slotRows">Output, row of each slot, <c>[slots]</c>.</param>
    /// <param name="slots">tokenCount · k.</param>
    /// <param name="k">Experts per token.</param>
    public static void Group(Index1D expert, ArrayView<int> chosen, ArrayView<int> starts, ArrayView<int> rowTokens, ArrayView<int> slotRows, int slots, int k)
    {
        int e = expert, before = 0, count = 0;
        for (int i = 0; i < slots; i++)
        {
            int c = chosen[i];
            before += c < e ? 1 : 0;
            count += c == e ? 1 : 0;
        }
        if (e == 0) starts[0] = 0;
        starts[e + 1] = before + count;
        int row = before;
        for (int i = 0; i < slots; i++)
        {
            if (chosen[i] != e) continue;
            slotRows[i] = row;
            rowTokens[row] = i / k;
            row++;
        }
    }

    /// <summary>
    /// <c>output[t, i] = Σⱼ weights[t, j] · y[slotRows[t, j], i]</c>, j from 0 to k − 1 in order. Implicitly grouped
    /// over <c>(dim, tokenCount)</c>.
    /// </summary>
    /// <param name="index">(element, token).</param>
    /// <param name="y">The experts' outputs, <c>[tokenCount · k, dim]</c> (rows grouped by expert).</param>
    /// <param name="weights">Routing weights, <c>[tokenCount, k]</c>.</param>
    /// <param name="slotRows">Row of <paramref name="y"/> holding each slot's output, <c>[tokenCount, k]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="dim">Row length.</param>
    /// <param name="k">Experts per token.</param>
    public static void Combine(Index2D index, ArrayView<float> y, ArrayView<float> weights, ArrayView<int> slotRows, ArrayView<float> output, int dim, int k)
    {
        long slot0 = (long)index.Y * k;
        float sum = 0f;
        for (int j = 0; j < k; j++) sum += weights[slot0 + j] * y[(long)slotRows[slot0 + j] * dim + index.X];
        output[(long)index.Y * dim + index.X] = sum;
    }

    /// <summary>
    /// <c>output[t, i] += σ(gate[t]) · shared[t, i]</c>, σ the logistic function (qwen2moe's gated shared expert).
    /// Implicitly grouped over <c>(dim, tokenCount)</c>.
    /// </summary>
    /// <param name="index">(element, token).</param>
    /// <param name="output">Accumulator, <c>[tokenCount, dim]</c>.</param>
    /// <param name="shared">The shared expert's output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="gate">The gate's logit per token, <c>[tokenCount]</c>.</param>
    /// <param name="dim">Row length.</param>
    public static void AddSigmoidGated(Index2D index, ArrayView<float> output, ArrayView<float> shared, ArrayView<float> gate, int dim)
    {
        long at = (long)index.Y * dim + index.X;
        float sigma = 1f / (1f + XMath.Exp(-gate[index.Y]));
        output[at] += sigma * shared[at];
    }
}
