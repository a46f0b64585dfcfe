using System.Numerics.Tensors;

namespace Inference.Sampling;

/// <summary>A token and its natural-log probability.</summary>
/// <param name="TokenId">The token id.</param>
/// <param name="Logprob">ln p(token), at most 0.</param>
public readonly record struct TokenLogprob(int TokenId, float Logprob);

/// <summary>The log-probability of one chosen token and the most likely tokens at its position.</summary>
/// <param name="TokenId">The chosen token.</param>
/// <param name="Logprob">ln p(chosen token).</param>
/// <param name="Top">The most likely tokens at the position, most likely first (ties by lower id); may be empty.</param>
public sealed record TokenLogprobs(int TokenId, float Logprob, IReadOnlyList<TokenLogprob> Top)
{
    /// <summary>
    /// Log-softmax of <paramref name="logits"/> / <paramref name="temperature"/> at <paramref name="tokenId"/>, and the
    /// <paramref name="topCount"/> largest entries. Computed in double: a log-probability near 0 keeps its digits.
    /// </summary>
    internal static TokenLogprobs Compute(ReadOnlySpan<float> logits, float temperature, int tokenId, int topCount)
    {
        if ((uint)tokenId >= (uint)logits.Length) throw new ArgumentOutOfRangeException(nameof(tokenId), tokenId, $"token id {tokenId} is outside the vocabulary of {logits.Length}");
        topCount = Math.Min(topCount, logits.Length);
        float max = TensorPrimitives.Max(logits);
        double sum = 0, inv = 1.0 / temperature;
        for (int i = 0; i < logits.Length; i++) sum += Math.Exp((logits[i] - max) * inv);
        double logZ = Math.Log(sum);

        var top = topCount > 0 ? new TokenLogprob[topCount] : [];
        int filled = 0;
        for (int i = 0; i < logits.Length && topCount > 0; i++)
        {
            float v = logits[i];
            if (filled == topCount && v <= logits[top[filled - 1].TokenId]) continue;
            // Insertion into the sorted top list (topCount is small: OpenAI allows at most 20).
            int at = filled < topCount ? filled++ : topCount - 1;
            while (at > 0 && logits[top[at - 1].TokenId] < v) at--;
            for (int j = Math.Min(filled - 1, topCount - 1); j > at; j--) top[j] = top[j - 1];
            top[at] = new TokenLogprob(i, 0);
        }
        for (int j = 0; j < top.Length; j++) top[j] = new TokenLogprob(top[j].TokenId, (float)((logits[top[j].TokenId] - max) * inv - logZ));
        return new TokenLogprobs(tokenId, (float)((logits[tokenId] - max) * inv - logZ), top);
    }
}
