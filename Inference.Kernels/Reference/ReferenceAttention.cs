namespace Inference.Kernels.Reference;

/// <summary>
/// Plain paged attention, the yardstick for the ILGPU and PTX kernels: one query row at a time, the full score row,
/// a max-subtracted softmax, then the weighted sum of V. KV values are given as f32 (widen f16 first).
/// </summary>
public static class ReferenceAttention
{
    /// <summary>Decode attention: one query token per sequence attending to positions <c>0 .. contextLens[s] - 1</c>.</summary>
    /// <param name="shape">Attention shape.</param>
    /// <param name="q">Queries, <c>[seqCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache, <c>[blockCount, blockSize, kvHeads, headDim]</c>.</param>
    /// <param name="vCache">V cache, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="contextLens">Context length per sequence, <c>[seqCount]</c>.</param>
    /// <param name="output">Output, <c>[seqCount, heads, headDim]</c>.</param>
    /// <param name="slidingWindow">A window W: the query at position p sees p − W + 1 … p only; 0 for none.</param>
    /// <param name="logitSoftCap">A cap c: each scaled score s becomes c · tanh(s / c) (gemma2); 0 for none.</param>
    public static void Decode(AttentionShape shape, ReadOnlySpan<float> q, ReadOnlySpan<float> kCache, ReadOnlySpan<float> vCache,
        ReadOnlySpan<int> blockTables, ReadOnlySpan<int> contextLens, Span<float> output, int slidingWindow = 0, float logitSoftCap = 0f)
    {
        ArgumentNullException.ThrowIfNull(shape);
        for (int s = 0; s < contextLens.Length; s++)
        {
            int ctx = contextLens[s];
            for (int h = 0; h < shape.HeadCount; h++)
            {
                int row = s * shape.HeadCount + h;
                AttendOne(shape, q.Slice(row * shape.HeadDim, shape.HeadDim), kCache, vCache,
                    blockTables.Slice(s * shape.MaxBlocksPerSeq, shape.MaxBlocksPerSeq), h, ctx,
                    output.Slice(row * shape.HeadDim, shape.HeadDim), slidingWindow, logitSoftCap);
            }
        }
    }

    /// <summary>Chunk (prefill) attention, causal: query <c>i</c> of sequence <c>s</c> sits at position
    /// <c>contextLens[s] - n_s + i</c> and attends to positions 0 through its own.</summary>
    /// <param name="shape">Attention shape.</param>
    /// <param name="q">Queries, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache, <c>[blockCount, blockSize, kvHeads, headDim]</c>, holding the chunk's rows too.</param>
    /// <param name="vCache">V cache, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="querySeqStarts">First query token of each sequence plus the total, <c>[seqCount + 1]</c>.</param>
    /// <param name="contextLens">Context length per sequence after the chunk, <c>[seqCount]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="slidingWindow">A window W: the query at position p sees p − W + 1 … p only; 0 for none.</param>
    /// <param name="logitSoftCap">A cap c: each scaled score s becomes c · tanh(s / c) (gemma2); 0 for none.</param>
    public static void Prefill(AttentionShape shape, ReadOnlySpan<float> q, ReadOnlySpan<float> kCache, ReadOnlySpan<float> vCache,
        ReadOnlySpan<int> blockTables, ReadOnlySpan<int> querySeqStarts, ReadOnlySpan<int> contextLens, Span<float> output,
        int slidingWindow = 0, float logitSoftCap = 0f)
    {
        ArgumentNullException.ThrowIfNull(shape);
        for (int s = 0; s < contextLens.Length; s++)
        {
            int n = querySeqStarts[s + 1] - querySeqStarts[s];
            for (int i = 0; i < n; i++)
            {
                int token = querySeqStarts[s] + i;
                int position = contextLens[s] - n + i;
                for (int h = 0; h < shape.HeadCount; h++)
                {
                    int row = token * shape.HeadCount + h;
                    AttendOne(shape, q.Slice(row * shape.HeadDim, shape.HeadDim), kCache, vCache,
                        blockTables.Slice(s * shape.MaxBlocksPerSeq, shape.MaxBlocksPerSeq), h, position + 1,
                        output.Slice(row * shape.HeadDim, shape.HeadDim), slidingWindow, logitSoftCap);
                }
            }
        }
    }

    private static void AttendOne(AttentionShape shape, ReadOnlySpan<float> query, ReadOnlySpan<float> kCache,
        ReadOnlySpan<float> vCache, ReadOnlySpan<int> blockTable, int head, int length, Span<float> output, int slidingWindow, float logitSoftCap)
    {
        int hd = shape.HeadDim;
        int kvHead = head / shape.KvMul;
        int first = slidingWindow > 0 ? Math.Max(0, length - slidingWindow) : 0;   // positions before the window are never read
        var scores = new float[length];
        float max = float.NegativeInfinity;
        for (int j = first; j < length; j++)
        {
            var k = kCache.Slice(RowOffset(shape, blockTable, j, kvHead), hd);
            float dot = 0f;
            for (int d = 0; d < hd; d++) dot += query[d] * k[d];
            scores[j] = dot * shape.Scale;
            if (logitSoftCap > 0f) scores[j] = (float)(logitSoftCap * Math.Tanh(scores[j] / (double)logitSoftCap));
            max = MathF.Max(max, scores[j]);
        }
        float sum = 0f;
        for (int j = first; j < length; j++)
        {
            scores[j] = MathF.Exp(scores[j] - max);
            sum += scores[j];
        }
        output.Clear();
        for (int j = first; j < length; j++)
        {
            var v = vCache.Slice(RowOffset(shape, blockTable, j, kvHead), hd);
            float w = scores[j] / sum;
            for (int d = 0; d < hd; d++) output[d] += w * v[d];
        }
    }

    private static int RowOffset(AttentionShape shape, ReadOnlySpan<int> blockTable, int position, int kvHead)
    {
        int block = blockTable[position / shape.BlockSize];
        return ((block * shape.BlockSize + position % shape.BlockSize) * shape.KvHeadCount + kvHead) * shape.HeadDim;
    }
}
