using System.Numerics.Tensors;
using Inference.Backends.Cpu;

namespace Inference.Parallelism;

/// <summary>
/// Attention of queries over one contiguous range of key positions, with the log-sum-exp of its scores, and the
/// online-softmax rule that merges such partial results: ring attention computes each query's attention block by block
/// (the cached positions, then each rank's new K/V as it comes round) and merges the blocks in any grouping.
/// </summary>
/// <remarks>
/// <code>
///  partial over keys K_b:  s_j = q·k_j / √d (soft-capped),  lse_b = log Σ_j e^{s_j},  o_b = Σ_j e^{s_j − lse_b} v_j
///  merge (o, lse) with (o_b, lse_b):  lse' = log(e^{lse} + e^{lse_b}),  o' = e^{lse − lse'} o + e^{lse_b − lse'} o_b
///  no visible key: lse = −∞, o = 0 (the identity of the merge)
/// </code>
/// Merging the partials of a partition of the visible keys gives softmax attention over all of them (up to rounding).
/// </remarks>
internal static class PartialAttention
{
    /// <summary>
    /// Causal attention of <paramref name="query"/> (token i at position <paramref name="queryStart"/> + i) over the keys
    /// at positions <paramref name="keyStart"/> … (those a query sees: not after it, and within
    /// <see cref="PagedAttentionShape.SlidingWindow"/>), normalized over those keys alone, and each (token, head)'s
    /// log-sum-exp of its scores in <paramref name="lse"/> (−∞ and a zero output where it sees none of them).
    /// </summary>
    /// <param name="shape">Heads, head size, window and score cap (<see cref="PagedAttentionShape.BlockSize"/> is not used).</param>
    /// <param name="query">[tokens, heads, headDim].</param>
    /// <param name="queryStart">Position of the first query token.</param>
    /// <param name="keys">[keyCount, kvHeads, headDim].</param>
    /// <param name="values">[keyCount, kvHeads, headDim].</param>
    /// <param name="keyStart">Position of the first key.</param>
    /// <param name="output">[tokens, heads, headDim].</param>
    /// <param name="lse">[tokens, heads].</param>
    /// <param name="scores">Scratch of at least keyCount floats.</param>
    public static void Forward(in PagedAttentionShape shape, ReadOnlySpan<float> query, int queryStart, ReadOnlySpan<float> keys, ReadOnlySpan<float> values,
        int keyStart, Span<float> output, Span<float> lse, Span<float> scores)
    {
        int heads = shape.HeadCount, hd = shape.HeadDim, kvMul = shape.KvMul, qStride = shape.QueryStride, kvStride = shape.KvStride;
        int tokens = query.Length / qStride, keyCount = keys.Length / kvStride;
        if (query.Length != tokens * qStride || output.Length != query.Length || lse.Length != tokens * heads)
            throw new ArgumentException("query and output must be [tokens, heads, headDim] and lse [tokens, heads]");
        if (keys.Length != keyCount * kvStride || values.Length != keys.Length) throw new ArgumentException("keys and values must both be [keys, kvHeads, headDim]");
        if (scores.Length < keyCount) throw new ArgumentException($"scores needs {keyCount} floats", nameof(scores));
        float scale = 1f / MathF.Sqrt(hd), cap = shape.LogitSoftCap;
        for (int i = 0; i < tokens; i++)
        {
            int position = queryStart + i;
            int first = Math.Max(shape.FirstVisible(position + 1) - keyStart, 0), last = Math.Min(position - keyStart, keyCount - 1);
            for (int h = 0; h < heads; h++)
            {
                var o = output.Slice((i * heads + h) * hd, hd);
                o.Clear();
                if (first > last)
                {
                    lse[i * heads + h] = float.NegativeInfinity;
                    continue;
                }
                var q = query.Slice((i * heads + h) * hd, hd);
                int g = h / kvMul;
                float max = float.NegativeInfinity;
                for (int j = first; j <= last; j++)
                {
                    float s = TensorPrimitives.Dot(q, keys.Slice(j * kvStride + g * hd, hd)) * scale;
                    if (cap != 0) s = cap * MathF.Tanh(s / cap);
                    scores[j] = s;
                    max = MathF.Max(max, s);
                }
                float sum = 0;
                for (int j = first; j <= last; j++)
                {
                    float e = MathF.Exp(scores[j] - max);
                    sum += e;
                    TensorPrimitives.MultiplyAdd(values.Slice(j * kvStride + g * hd, hd), e, o, o);
                }
                TensorPrimitives.Multiply(o, 1f / sum, o);
                lse[i * heads + h] = max + MathF.Log(sum);
            }
        }
    }

    /// <summary>
    /// Merges the partial result (<paramref name="partOutput"/>, <paramref name="partLse"/>) over some keys into the
    /// running one (<paramref name="output"/>, <paramref name="lse"/>) over other keys: afterwards they are the result
    /// over both sets. Rows of <paramref name="headDim"/> values, one log-sum-exp each.
    /// </summary>
    public static void Combine(Span<float> output, Span<float> lse, ReadOnlySpan<float> partOutput, ReadOnlySpan<float> partLse, int headDim)
    {
        if (output.Length != lse.Length * headDim || partOutput.Length != output.Length || partLse.Length != lse.Length)
            throw new ArgumentException("output and partOutput must be [rows, headDim], lse and partLse [rows]");
        for (int r = 0; r < lse.Length; r++)
        {
            float a = lse[r], b = partLse[r];
            if (float.IsNegativeInfinity(b)) continue;
            var o = output.Slice(r * headDim, headDim);
            var p = partOutput.Slice(r * headDim, headDim);
            if (float.IsNegativeInfinity(a))
            {
                p.CopyTo(o);
                lse[r] = b;
                continue;
            }
            float max = MathF.Max(a, b), wa = MathF.Exp(a - max), wb = MathF.Exp(b - max), sum = wa + wb;
            TensorPrimitives.Multiply(o, wa / sum, o);
            TensorPrimitives.MultiplyAdd(p, wb / sum, o, o);
            lse[r] = max + MathF.Log(sum);
        }
    }
}
