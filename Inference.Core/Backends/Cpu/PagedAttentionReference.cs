using System.Runtime.CompilerServices;

namespace Inference.Backends.Cpu;

/// <summary>
/// The plain attention loop that <see cref="PagedAttention"/> is checked against: contiguous keys and values, scalar
/// loops, double accumulation, causal, scale 1/√headDim.
/// </summary>
public static class PagedAttentionReference
{
    /// <summary>
    /// out[i, h] = Σ_{first ≤ j ≤ start+i} softmax_j(q[i, h] · k[j, h / kvMul] / √headDim) · v[j, h / kvMul], with
    /// first = 0, or start + i − W + 1 (at least 0) for a <see cref="PagedAttentionShape.SlidingWindow"/> W; each
    /// score soft-capped as c · tanh(s / c) for a <see cref="PagedAttentionShape.LogitSoftCap"/> c.
    /// </summary>
    /// <param name="shape">Heads, head size and window (<see cref="PagedAttentionShape.BlockSize"/> is not used).</param>
    /// <param name="query">[tokenCount, heads, headDim]; token i sits at position <paramref name="startPosition"/> + i.</param>
    /// <param name="keys">[contextLength, kvHeads, headDim] with contextLength ≥ start + tokenCount.</param>
    /// <param name="values">[contextLength, kvHeads, headDim].</param>
    /// <param name="startPosition">Position of the first query token.</param>
    /// <param name="output">[tokenCount, heads, headDim].</param>
    public static void Forward(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<float> keys,
        ReadOnlySpan<float> values,
        int startPosition,
        Span<float> output)
    {
        int heads = shape.HeadCount, kvHeads = shape.KvHeadCount, headDim = shape.HeadDim, kvMul = shape.KvMul;
        int tokenCount = query.Length / shape.QueryStride;
        if (query.Length != tokenCount * shape.QueryStride || output.Length != query.Length)
            throw new ArgumentException("query and output must both be [tokenCount, heads, headDim].");
        if (keys.Length < (startPosition + tokenCount) * shape.KvStride || values.Length != keys.Length)
            throw new ArgumentException("keys and values must be [contextLength ≥ start + tokenCount, kvHeads, headDim].");
        double scale = 1.0 / Math.Sqrt(headDim);
        var scores = new double[startPosition + tokenCount];
        var acc = new double[headDim];
        for (int i = 0; i < tokenCount; i++)
        {
            int contextLength = startPosition + i + 1; // causal: position p sees 0..p
            int first = shape.SlidingWindow > 0 ? Math.Max(0, contextLength - shape.SlidingWindow) : 0; // local: p − W + 1..p
            for (int h = 0; h < heads; h++)
            {
                int g = h / kvMul;
                int q = (i * heads + h) * headDim;
                double max = double.NegativeInfinity;
                for (int j = first; j < contextLength; j++)
                {
                    int k = (j * kvHeads + g) * headDim;
                    double dot = 0;
                    for (int d = 0; d < headDim; d++) dot += (double)query[q + d] * keys[k + d];
                    scores[j] = dot * scale;
                    if (shape.LogitSoftCap != 0) scores[j] = shape.LogitSoftCap * Math.Tanh(scores[j] / shape.LogitSoftCap);
                    max = Math.Max(max, scores[j]);
                }
                double sum = 0;
                for (int j = first; j < contextLength; j++)
                {
                    scores[j] = Math.Exp(scores[j] - max);
                    sum += scores[j];
                }
                Array.Clear(acc);
                for (int j = first; j < contextLength; j++)
                {
                    int v = (j * kvHeads + g) * headDim;
                    for (int d = 0; d < headDim; d++) acc[d] += scores[j] * values[v + d];
                }
                for (int d = 0; d < headDim; d++) output[q + d] = (float)(acc[d] / sum);
            }
        }
    }

    /// <summary>
    /// Dequantizes the first <paramref name="contextLength"/> positions of a paged cache of 34-byte blocks
    /// (<see cref="KvCache.KvCacheDataType.Q8_0"/>, <see cref="KvCache.KvCacheDataType.Fp8E4M3"/>) into a contiguous
    /// [contextLength, kvHeads, headDim] float array, value by value (d · code, exact in float).
    /// </summary>
    /// <param name="shape">KV heads, head size and block size of <paramref name="cache"/>.</param>
    /// <param name="cache">[blockCount, blockSize, kvHeads, headDim / 32 blocks of 34 bytes].</param>
    /// <param name="type">The block format.</param>
    /// <param name="blockTable">Physical block of each logical block.</param>
    /// <param name="contextLength">Positions to gather.</param>
    public static float[] Gather(in PagedAttentionShape shape, ReadOnlySpan<byte> cache, KvCache.KvCacheDataType type, ReadOnlySpan<int> blockTable, int contextLength)
    {
        int stride = shape.KvStride, rowBytes = (int)KvCache.KvBlockFormat.ByteCount(type, stride);
        var result = new float[contextLength * stride];
        for (int p = 0; p < contextLength; p++)
        {
            int src = (blockTable[p / shape.BlockSize] * shape.BlockSize + p % shape.BlockSize) * rowBytes;
            KvCache.KvBlockFormat.Dequantize(type, cache.Slice(src, rowBytes), result.AsSpan(p * stride, stride));
        }
        return result;
    }

    /// <summary>
    /// Copies the first <paramref name="contextLength"/> positions of a paged cache into a contiguous
    /// [contextLength, kvHeads, headDim] float array.
    /// </summary>
    /// <param name="shape">KV heads, head size and block size of <paramref name="cache"/>.</param>
    /// <param name="cache">[blockCount, blockSize, kvHeads, headDim] of float or Half.</param>
    /// <param name="blockTable">Physical block of each logical block.</param>
    /// <param name="contextLength">Positions to gather.</param>
    public static float[] Gather<T>(in PagedAttentionShape shape, ReadOnlySpan<T> cache, ReadOnlySpan<int> blockTable, int contextLength)
        where T : unmanaged
    {
        int stride = shape.KvStride;
        var result = new float[contextLength * stride];
        for (int p = 0; p < contextLength; p++)
        {
            int src = (blockTable[p / shape.BlockSize] * shape.BlockSize + p % shape.BlockSize) * stride;
            for (int e = 0; e < stride; e++)
            {
                T x = cache[src + e];
                if (typeof(T) == typeof(float)) result[p * stride + e] = Unsafe.As<T, float>(ref x);
                else if (typeof(T) == typeof(Half)) result[p * stride + e] = (float)Unsafe.As<T, Half>(ref x);
                else throw new NotSupportedException($"KV element type {typeof(T).Name} is not supported.");
            }
        }
        return result;
    }
}
