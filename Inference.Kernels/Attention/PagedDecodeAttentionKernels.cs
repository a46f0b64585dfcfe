using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels.Attention;

/// <summary>
/// Paged decode attention (one query token per sequence) in two passes, Flash-Decoding style:
/// <see cref="Partial{TKv, TConv}"/> attends each query to one partition of its context, then
/// <see cref="Reduce"/> merges the partitions.
/// </summary>
/// <remarks>
/// Effectively computes, for every sequence <c>s</c> and query head <c>h</c> with <c>kvh = h / kvMul</c>:
/// <c>out[s, h] = softmax(q[s, h] · K[s, kvh, f..ctx)ᵀ * scale) · V[s, kvh, f..ctx)</c>, where the K/V rows of position
/// <c>j</c> live in block <c>blockTables[s, j / blockSize]</c> at slot <c>j % blockSize</c> and f is 0, or
/// ctx − W (at least 0) with a <see cref="PagedAttentionParams.SlidingWindow"/> W (partitions before f stay empty).
/// <para>
/// One group handles one (partition, KV head, sequence). The <c>kvMul</c> query heads that share the KV head are processed
/// together, so each K and V element of the partition is read from global memory once. Inside a partition the keys are
/// visited in tiles of <see cref="GroupSize"/> with an online softmax (running max <c>m</c>, running sum <c>l</c>,
/// unnormalized accumulator); the partials are merged by <see cref="Reduce"/>. Contexts must be at least 1 token.
/// </para>
/// </remarks>
public static class PagedDecodeAttentionKernels
{
    /// <summary>Threads per group on GPUs, which is also the key tile; any power of two up to 64 works.</summary>
    public const int GroupSize = 64;

    /// <summary>Floats of dynamic shared memory that <see cref="Partial{TKv, TConv}"/> needs.</summary>
    /// <param name="kvMul">Query heads per KV head.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <returns>The count of f32 elements.</returns>
    public static int SharedFloats(int kvMul, int headDim) => 2 * kvMul * headDim + kvMul * GroupSize + 3 * kvMul;

    /// <summary>
    /// Pass 1: attention of every query head of one KV head group over one partition of the context.
    /// Grid <c>(partitionCount, kvHeads, seqCount)</c>, group <c>(GroupSize)</c>, dynamic shared memory
    /// <see cref="SharedFloats"/> floats.
    /// </summary>
    /// <typeparam name="TKv">Stored KV element (f32, f16, or bytes of a block format).</typeparam>
    /// <typeparam name="TConv">Reads a row of <typeparamref name="TKv"/> (<see cref="IKvRowFormat{T}"/>).</typeparam>
    /// <param name="q">Queries, <c>[seqCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache of the layer, <c>[blockCount, blockSize, kvHeads, headDim]</c>.</param>
    /// <param name="vCache">V cache of the layer, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="contextLens">Context length per sequence (≥ 0; 0, a padding row, gives a zero output row), <c>[seqCount]</c>.</param>
    /// <param name="partialOut">Unnormalized partial outputs, <c>[seqCount, heads, partitionCount, headDim]</c>.</param>
    /// <param name="partialMax">Running max per partition, <c>[seqCount, heads, partitionCount]</c> (-∞ when empty).</param>
    /// <param name="partialSum">Softmax denominator per partition, same shape (0 when empty).</param>
    /// <param name="p">Scalars.</param>
    public static void Partial<TKv, TConv>(
        ArrayView<float> q,
        ArrayView<TKv> kCache,
        ArrayView<TKv> vCache,
        ArrayView<int> blockTables,
        ArrayView<int> contextLens,
        ArrayView<float> partialOut,
        ArrayView<float> partialMax,
        ArrayView<float> partialSum,
        PagedAttentionParams p)
        where TKv : unmanaged
        where TConv : struct, IKvRowFormat<TKv>
    {
        int partition = Grid.IdxX;
        int kvHead = Grid.IdxY;
        int seq = Grid.IdxZ;
        int t = Group.IdxX;
        int groupSize = Group.DimX;
        int kvMul = p.HeadCount / p.KvHeadCount;
        int hd = p.HeadDim;
        int rowsHd = kvMul * hd;

        var shared = SharedMemory.GetDynamic<float>();
        var sQ = shared.SubView(0, rowsHd);                              // [kvMul, headDim]
        var sAcc = shared.SubView(rowsHd, rowsHd);                       // [kvMul, headDim] unnormalized output
        var sS = shared.SubView(2 * rowsHd, kvMul * groupSize);          // [kvMul, tile] scores, then probabilities
        var sM = shared.SubView(2 * rowsHd + kvMul * groupSize, kvMul);  // [kvMul] running max
        var sL = shared.SubView(2 * rowsHd + kvMul * groupSize + kvMul, kvMul);                               // [kvMul] running sum
        var sAlpha = shared.SubView(2 * rowsHd + kvMul * groupSize + 2 * kvMul, kvMul);                       // [kvMul] rescale of this tile

        int ctx = contextLens[seq];
        // The partition's part of the window: empty (start ≥ end) when it lies wholly before it.
        int start = XMath.Max(partition * p.PartitionSize, p.FirstVisible(ctx - 1));
        int end = XMath.Min(partition * p.PartitionSize + p.PartitionSize, ctx);
        long tableRow = (long)seq * p.MaxBlocksPerSeq;
        TConv conv = default;
        int rowLength = conv.RowLength(hd);       // elements of one head's row as stored
        int rowStride = p.KvHeadCount * rowLength;   // elements between consecutive positions of one block

        for (int i = t; i < rowsHd; i += groupSize)
        {
            int h = i / hd;
            int d = i - h * hd;
            sQ[i] = q[((long)seq * p.HeadCount + kvHead * kvMul + h) * hd + d];
            sAcc[i] = 0f;
        }
        for (int i = t; i < kvMul; i += groupSize)
        {
            sM[i] = float.NegativeInfinity;
            sL[i] = 0f;
        }
        Group.Barrier();

        for (int tileStart = start; tileStart < end; tileStart += groupSize)
        {
            // 1. scores: thread t owns key tileStart + t and dots it with all kvMul queries (K read once).
            int j = tileStart + t;
            for (int h = 0; h < kvMul; h++) sS[h * groupSize + t] = 0f;
            if (j < end)
            {
                int block = blockTables[tableRow + j / p.BlockSize];
                long kRow = ((long)block * p.BlockSize + j % p.BlockSize) * rowStride + (long)kvHead * rowLength;
                for (int d0 = 0; d0 < hd; d0 += KvRowGroups.GroupValues)
                {
                    // the row as stored: one scale per 32 values (1 for f32/f16), each value scale · code (exact)
                    float scale = conv.Scale(kCache, kRow, d0 / KvRowGroups.GroupValues);
                    int dEnd = XMath.Min(d0 + KvRowGroups.GroupValues, hd);
                    for (int d = d0; d < dEnd; d++)
                    {
                        float kd = scale * conv.Code(kCache, kRow, d);
                        for (int h = 0; h < kvMul; h++) sS[h * groupSize + t] += sQ[h * hd + d] * kd;
                    }
                }
                for (int h = 0; h < kvMul; h++) sS[h * groupSize + t] = p.Score(sS[h * groupSize + t]);
            }
            else
            {
                for (int h = 0; h < kvMul; h++) sS[h * groupSize + t] = float.NegativeInfinity;
            }
            Group.Barrier();

            // 2. online softmax bookkeeping, one thread per query head.
            for (int h = t; h < kvMul; h += groupSize)
                OnlineSoftmax.UpdateRow(sS.SubView(h * groupSize, groupSize), sM, sL, sAlpha, h);
            Group.Barrier();

            // 3. acc = acc * alpha + P · V; thread t owns dims t, t + groupSize, … (coalesced V reads).
            int count = XMath.Min(groupSize, end - tileStart);
            for (int d = t; d < hd; d += groupSize)
            {
                for (int h = 0; h < kvMul; h++) sAcc[h * hd + d] *= sAlpha[h];
                for (int jj = 0; jj < count; jj++)
                {
                    int pos = tileStart + jj;
                    int block = blockTables[tableRow + pos / p.BlockSize];
                    long vRow = ((long)block * p.BlockSize + pos % p.BlockSize) * rowStride + (long)kvHead * rowLength;
                    float vd = KvRowGroups.Load<TKv, TConv>(vCache, vRow, d);
                    for (int h = 0; h < kvMul; h++) sAcc[h * hd + d] += sS[h * groupSize + jj] * vd;
                }
            }
            Group.Barrier();
        }

        for (int i = t; i < rowsHd; i += groupSize)
        {
            int h = i / hd;
            int d = i - h * hd;
            long row = ((long)seq * p.HeadCount + kvHead * kvMul + h) * p.PartitionCount + partition;
            partialOut[row * hd + d] = sAcc[i];
        }
        for (int h = t; h < kvMul; h += groupSize)
        {
            long row = ((long)seq * p.HeadCount + kvHead * kvMul + h) * p.PartitionCount + partition;
            partialMax[row] = sM[h];
            partialSum[row] = sL[h];
        }
    }

    /// <summary>
    /// Pass 2: merges the partitions of each (sequence, head) into the normalized output.
    /// Implicitly grouped over <c>seqCount * heads * headDim</c>.
    /// </summary>
    /// <param name="index">Flat index into <paramref name="output"/>.</param>
    /// <param name="partialOut">From pass 1, <c>[seqCount, heads, partitionCount, headDim]</c>.</param>
    /// <param name="partialMax">From pass 1, <c>[seqCount, heads, partitionCount]</c>.</param>
    /// <param name="partialSum">From pass 1, <c>[seqCount, heads, partitionCount]</c>.</param>
    /// <param name="output">Attention output, <c>[seqCount, heads, headDim]</c>.</param>
    /// <param name="p">Scalars.</param>
    public static void Reduce(
        Index1D index,
        ArrayView<float> partialOut,
        ArrayView<float> partialMax,
        ArrayView<float> partialSum,
        ArrayView<float> output,
        PagedAttentionParams p)
    {
        int hd = p.HeadDim;
        long row = index / hd;          // seq * heads + head
        int d = index - (int)(row * hd);
        long first = row * p.PartitionCount;

        float globalMax = float.NegativeInfinity;
        for (int part = 0; part < p.PartitionCount; part++) globalMax = XMath.Max(globalMax, partialMax[first + part]);

        float numerator = 0f;
        float denominator = 0f;
        for (int part = 0; part < p.PartitionCount; part++)
        {
            float m = partialMax[first + part];
            if (m == float.NegativeInfinity) continue;   // empty partition past the end of this context
            float w = XMath.Exp(m - globalMax);
            numerator += partialOut[(first + part) * hd + d] * w;
            denominator += partialSum[first + part] * w;
        }
        // NOTE: a context of 0 (a padding row of a padded decode step) has only empty partitions: 0, not 0 / 0.
        output[index] = denominator > 0f ? numerator / denominator : 0f;
    }
}
