using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels.Attention;

/// <summary>
/// Paged prefill / chunk attention: a chunk of new tokens per sequence against the cached prefix plus itself, causal,
/// tiled over queries and keys with an online softmax.
/// </summary>
/// <remarks>
/// Sequence <c>s</c> owns query tokens <c>querySeqStarts[s] .. querySeqStarts[s + 1] - 1</c> (n tokens). Its K/V rows for
/// all <c>contextLens[s]</c> positions, the chunk included, are already in the paged cache; local query <c>i</c> sits at
/// absolute position <c>contextLens[s] - n + i</c> and attends to positions <c>0 .. that position</c>.
/// <code>
///   positions  0 ........................ ctx-n-1 | ctx-n ......... ctx-1
///              cached prefix (earlier chunks)      | this chunk (queries)
///   query i attends to 0 .. ctx-n+i                (causal, inclusive)
///   with a sliding window W:  ctx-n+i-W+1 .. ctx-n+i (from 0)
/// </code>
/// One group handles one tile of <c>QueryTile</c> query tokens of one sequence and one KV head; its rows are the
/// <c>QueryTile * kvMul</c> (token, query head) pairs, so each K/V element is read once per query tile.
/// Decode is the special case n = 1, but <see cref="PagedDecodeAttentionKernels"/> splits long contexts across groups.
/// </remarks>
public static class PagedPrefillAttentionKernels
{
    /// <summary>Threads per group on GPUs, which is also the key tile; any power of two up to 64 works.</summary>
    public const int GroupSize = 64;

    /// <summary>Floats of dynamic shared memory for <paramref name="rows"/> = queryTile * kvMul rows.</summary>
    /// <param name="rows">Query rows per group.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <returns>The count of f32 elements.</returns>
    public static int SharedFloats(int rows, int headDim) => 2 * rows * headDim + rows * GroupSize + 3 * rows;

    /// <summary>
    /// Grid <c>(queryTileCount, kvHeads, seqCount)</c> with <c>queryTileCount = ceil(maxChunk / QueryTile)</c>,
    /// group <c>(GroupSize)</c>, dynamic shared memory <see cref="SharedFloats"/> floats; <c>QueryTile * kvMul ≤ GroupSize</c>.
    /// </summary>
    /// <typeparam name="TKv">Stored KV element (f32, f16, or bytes of a block format).</typeparam>
    /// <typeparam name="TConv">Reads a row of <typeparamref name="TKv"/> (<see cref="IKvRowFormat{T}"/>).</typeparam>
    /// <param name="q">Queries, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache of the layer, <c>[blockCount, blockSize, kvHeads, headDim]</c>.</param>
    /// <param name="vCache">V cache of the layer, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="querySeqStarts">First query token of each sequence plus the total, <c>[seqCount + 1]</c>.</param>
    /// <param name="contextLens">Context length per sequence after this chunk, <c>[seqCount]</c>.</param>
    /// <param name="output">Attention output, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="p">Scalars (uses <see cref="PagedAttentionParams.QueryTile"/>).</param>
    public static void Prefill<TKv, TConv>(
        ArrayView<float> q,
        ArrayView<TKv> kCache,
        ArrayView<TKv> vCache,
        ArrayView<int> blockTables,
        ArrayView<int> querySeqStarts,
        ArrayView<int> contextLens,
        ArrayView<float> output,
        PagedAttentionParams p)
        where TKv : unmanaged
        where TConv : struct, IKvRowFormat<TKv>
    {
        int tile = Grid.IdxX;
        int kvHead = Grid.IdxY;
        int seq = Grid.IdxZ;
        int t = Group.IdxX;
        int groupSize = Group.DimX;
        int kvMul = p.HeadCount / p.KvHeadCount;
        int hd = p.HeadDim;
        int rows = p.QueryTile * kvMul;   // row r = (local token r / kvMul, head r % kvMul)
        int rowsHd = rows * hd;

        int qStart = querySeqStarts[seq];
        int n = querySeqStarts[seq + 1] - qStart;
        int firstLocal = tile * p.QueryTile;
        if (firstLocal >= n) return;   // group-uniform: this sequence has fewer query tiles
        int ctx = contextLens[seq];
        int firstPos = ctx - n;        // absolute position of local query 0
        int lastLocal = XMath.Min(firstLocal + p.QueryTile, n) - 1;
        int keyEnd = firstPos + lastLocal + 1;
        int keyStart = p.FirstVisible(firstPos + firstLocal);   // the first key any row of the tile sees

        var shared = SharedMemory.GetDynamic<float>();
        var sQ = shared.SubView(0, rowsHd);                            // [rows, headDim]
        var sAcc = shared.SubView(rowsHd, rowsHd);                     // [rows, headDim]
        var sS = shared.SubView(2 * rowsHd, rows * groupSize);         // [rows, tile]
        var sM = shared.SubView(2 * rowsHd + rows * groupSize, rows);  // [rows]
        var sL = shared.SubView(2 * rowsHd + rows * groupSize + rows, rows);
        var sAlpha = shared.SubView(2 * rowsHd + rows * groupSize + 2 * rows, rows);

        for (int i = t; i < rowsHd; i += groupSize)
        {
            int r = i / hd;
            int d = i - r * hd;
            int local = firstLocal + r / kvMul;
            int head = kvHead * kvMul + r % kvMul;
            sQ[i] = local < n ? q[((long)(qStart + local) * p.HeadCount + head) * hd + d] : 0f;
            sAcc[i] = 0f;
        }
        for (int r = t; r < rows; r += groupSize)
        {
            sM[r] = float.NegativeInfinity;
            sL[r] = 0f;
        }
        Group.Barrier();

        long tableRow = (long)seq * p.MaxBlocksPerSeq;
        TConv conv = default;
        int rowLength = conv.RowLength(hd);   // elements of one head's row as stored
        int rowStride = p.KvHeadCount * rowLength;
        for (int tileStart = keyStart; tileStart < keyEnd; tileStart += groupSize)
        {
            // 1. scores: thread t owns key tileStart + t against every row (K read once per query tile).
            int j = tileStart + t;
            for (int r = 0; r < rows; r++) sS[r * groupSize + t] = 0f;
            if (j < keyEnd)
            {
                int block = blockTables[tableRow + j / p.BlockSize];
                long kRow = ((long)block * p.BlockSize + j % p.BlockSize) * rowStride + (long)kvHead * rowLength;
                for (int d0 = 0; d0 < hd; d0 += KvRowGroups.GroupValues)
                {
                    float scale = conv.Scale(kCache, kRow, d0 / KvRowGroups.GroupValues);
                    int dEnd = XMath.Min(d0 + KvRowGroups.GroupValues, hd);
                    for (int d = d0; d < dEnd; d++)
                    {
                        float kd = scale * conv.Code(kCache, kRow, d);
                        for (int r = 0; r < rows; r++) sS[r * groupSize + t] += sQ[r * hd + d] * kd;
                    }
                }
            }
            for (int r = 0; r < rows; r++)
            {
                int local = firstLocal + r / kvMul;
                // causal mask, and the window's lower edge
                bool visible = j < keyEnd && local < n && j <= firstPos + local && j >= p.FirstVisible(firstPos + local);
                sS[r * groupSize + t] = visible ? p.Score(sS[r * groupSize + t]) : float.NegativeInfinity;
            }
            Group.Barrier();

            // 2. online softmax bookkeeping, one thread per row.
            for (int r = t; r < rows; r += groupSize)
                OnlineSoftmax.UpdateRow(sS.SubView(r * groupSize, groupSize), sM, sL, sAlpha, r);
            Group.Barrier();

            // 3. acc = acc * alpha + P · V; thread t owns dims t, t + groupSize, …
            int count = XMath.Min(groupSize, keyEnd - tileStart);
            for (int d = t; d < hd; d += groupSize)
            {
                for (int r = 0; r < rows; r++) sAcc[r * hd + d] *= sAlpha[r];
                for (int jj = 0; jj < count; jj++)
                {
                    int pos = tileStart + jj;
                    int block = blockTables[tableRow + pos / p.BlockSize];
                    long vRow = ((long)block * p.BlockSize + pos % p.BlockSize) * rowStride + (long)kvHead * rowLength;
                    float vd = KvRowGroups.Load<TKv, TConv>(vCache, vRow, d);
                    for (int r = 0; r < rows; r++) sAcc[r * hd + d] += sS[r * groupSize + jj] * vd;
                }
            }
            Group.Barrier();
        }

        for (int i = t; i < rowsHd; i += groupSize)
        {
            int r = i / hd;
            int d = i - r * hd;
            int local = firstLocal + r / kvMul;
            if (local >= n) continue;
            int head = kvHead * kvMul + r % kvMul;
            output[((long)(qStart + local) * p.HeadCount + head) * hd + d] = sAcc[i] / sL[r];
        }
    }
}
