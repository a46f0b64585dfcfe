using Inference.Kernels;
using Inference.Kernels.Reference;
using Inference.Tests.Kernels;

namespace Inference.Tests.Cuda;

/// <summary>
/// A lane-level C# model of the algorithm in <c>Inference.Cuda/Ptx/paged_attention_{f32,f16}.ptx</c> and
/// <c>paged_attention_reduce.ptx</c>, checked against <see cref="ReferenceAttention"/> on the CPU.
/// </summary>
/// <remarks>
/// NOTE: this checks the design the PTX transcribes — lane layout (G lanes per row, 32/G slots), per-slot online
/// softmax in the log2 domain, butterfly reductions, the slot merge, empty partitions and the reduce pass — where no
/// GPU exists. It cannot catch PTX transcription errors: <see cref="PtxPagedAttentionInterpreterTests"/> runs the PTX
/// text itself in the interpreter, and <see cref="PtxAttentionGpuTests"/> on a device.
/// Register names in the model follow the PTX.
/// </remarks>
public class PtxAlgorithmModelTests
{
    [TestCase(8, 8, 64, 16, 4, 128, new[] { 1, 15, 16, 17, 300 })]   // MHA, f32 layout: G = 16
    [TestCase(8, 2, 128, 32, 4, 256, new[] { 1, 33, 700 })]          // GQA, f32 layout: G = 32
    [TestCase(8, 1, 64, 16, 8, 128, new[] { 2, 129, 1000 })]         // MQA, f16 layout: G = 8
    [TestCase(8, 2, 128, 8, 8, 64, new[] { 5, 64, 65 })]             // GQA, f16 layout: G = 16
    public void DecodeModelMatchesReference(int heads, int kvHeads, int headDim, int blockSize, int vecWidth, int partitionSize, int[] contexts)
    {
        var c = PagedAttentionCase.Create(heads, kvHeads, headDim, blockSize, contexts, KvStorage.F32, seed: 99);
        var s = c.Shape;
        var q = PagedAttentionCase.Random(new Random(5), c.SeqCount * s.HeadCount * s.HeadDim);
        var expected = new float[q.Length];
        ReferenceAttention.Decode(s, q, c.K, c.V, c.BlockTables, c.ContextLens, expected);

        var positions = c.ContextLens.Select(n => n - 1).ToArray();
        var actual = RunModel(s, q, c.K, c.V, c.BlockTables, Enumerable.Range(0, c.SeqCount).ToArray(), positions,
            c.MaxContext, partitionSize, vecWidth);
        PagedAttentionCase.AssertClose(expected, actual, 2e-5f, 1e-4f, "ptx model decode");
    }

    [Test]
    public void PrefillModelMatchesReference()
    {
        var c = PagedAttentionCase.Create(8, 2, 64, 16, [40, 300], KvStorage.F32, seed: 7);
        var s = c.Shape;
        int[] starts = [0, 40, 52];   // a full 40-token prompt and a 12-token chunk after 288 cached tokens
        var q = PagedAttentionCase.Random(new Random(6), starts[^1] * s.HeadCount * s.HeadDim);
        var expected = new float[q.Length];
        ReferenceAttention.Prefill(s, q, c.K, c.V, c.BlockTables, starts, c.ContextLens, expected);
        var seqs = new int[52];
        var positions = new int[52];
        for (int t = 0; t < 52; t++)
        {
            seqs[t] = t < 40 ? 0 : 1;
            positions[t] = t < 40 ? t : 288 + (t - 40);
        }
        var actual = RunModel(s, q, c.K, c.V, c.BlockTables, seqs, positions, c.MaxContext, 64, 8);
        PagedAttentionCase.AssertClose(expected, actual, 2e-5f, 1e-4f, "ptx model prefill");
    }

    /// <summary>
    /// The sliding-window path (<c>p_window</c>): decode and chunks whose windows start inside, at the edge of and before
    /// partitions, with every K/V row before each query's window NaN (a read of one shows in the output).
    /// </summary>
    [TestCase(8, 2, 64, 16, 8, 64, 1)]
    [TestCase(8, 8, 128, 32, 4, 128, 17)]
    [TestCase(8, 1, 64, 16, 8, 64, 64)]
    [TestCase(8, 2, 128, 8, 8, 64, 100)]
    [TestCase(8, 2, 64, 16, 4, 256, 1000)]
    public void WindowedModelMatchesReference(int heads, int kvHeads, int headDim, int blockSize, int vecWidth, int partitionSize, int window)
    {
        int[] contexts = [1, window, window + 1, 130, 700];
        var c = PagedAttentionCase.Create(heads, kvHeads, headDim, blockSize, contexts, KvStorage.F32, seed: 31 + window);
        var s = c.Shape;
        var q = PagedAttentionCase.Random(new Random(8), c.SeqCount * s.HeadCount * s.HeadDim);
        var expected = new float[q.Length];
        ReferenceAttention.Decode(s, q, c.K, c.V, c.BlockTables, contexts, expected, window);
        // a 12-token chunk at the end of the 700-token sequence, against the same cache
        int[] starts = [0, 12];
        var chunkQ = PagedAttentionCase.Random(new Random(9), 12 * s.HeadCount * s.HeadDim);
        var chunkExpected = new float[chunkQ.Length];
        var table = c.BlockTables.AsSpan(4 * s.MaxBlocksPerSeq, s.MaxBlocksPerSeq).ToArray();
        ReferenceAttention.Prefill(s, chunkQ, c.K, c.V, table, starts, [700], chunkExpected, window);
        for (int seq = 0; seq < c.SeqCount; seq++) c.PoisonBefore(seq, Math.Max(0, contexts[seq] - (seq == 4 ? 12 : 1) + 1 - window));

        var actual = RunModel(s, q, c.K, c.V, c.BlockTables, Enumerable.Range(0, c.SeqCount).ToArray(), contexts.Select(n => n - 1).ToArray(),
            c.MaxContext, partitionSize, vecWidth, window);
        PagedAttentionCase.AssertClose(expected, actual, 2e-5f, 1e-4f, "ptx model windowed decode");
        var chunkActual = RunModel(s, chunkQ, c.K, c.V, table, new int[12], Enumerable.Range(688, 12).ToArray(), 700, partitionSize, vecWidth, window);
        PagedAttentionCase.AssertClose(chunkExpected, chunkActual, 2e-5f, 1e-4f, "ptx model windowed chunk");
    }

    /// <summary>
    /// The PTX modules declare the window as their last parameter, in the order and number the launcher passes
    /// (<see cref="Inference.Cuda.PtxPagedAttention.PartialArgumentCount"/>), and bound the partition with it.
    /// </summary>
    [TestCase("paged_attention_f32")]
    [TestCase("paged_attention_f16")]
    public void PtxModules_TakeTheWindow(string module)
    {
        using var stream = typeof(Inference.Cuda.PtxPagedAttention).Assembly.GetManifestResourceStream($"Inference.Cuda.Ptx.{module}.ptx")!;
        string ptx = new StreamReader(stream).ReadToEnd();
        var parameters = System.Text.RegularExpressions.Regex.Matches(ptx, @"\.param \.(u64|u32|f32) (p_\w+)");
        Assert.That(parameters, Has.Count.EqualTo(Inference.Cuda.PtxPagedAttention.PartialArgumentCount));
        Assert.That(parameters[^1].Groups[2].Value, Is.EqualTo("p_window"));
        Assert.That(parameters[^2].Groups[2].Value, Is.EqualTo("p_scale_log2"));
        Assert.That(ptx, Does.Contain("ld.param.u32    window, [p_window]").And.Contain("@windowed max.u32 part_start, part_start, tmp"));
    }

    /// <summary>Both passes: every CTA (token, kvHead, partition), every warp (query head), all 32 lanes in lockstep.</summary>
    private static float[] RunModel(AttentionShape s, float[] q, float[] kCache, float[] vCache, int[] blockTables,
        int[] tokenSeqs, int[] tokenPositions, int maxContext, int partitionSize, int vecWidth, int window = 0)
    {
        int tokenCount = tokenSeqs.Length;
        int partitionCount = (maxContext + partitionSize - 1) / partitionSize;
        int hd = s.HeadDim;
        float scaleLog2 = s.Scale * 1.4426950408889634f;
        var partialOut = new float[tokenCount * s.HeadCount * partitionCount * hd];
        Array.Fill(partialOut, float.NaN);
        var partialMl = new float[tokenCount * s.HeadCount * partitionCount * 2];

        for (int token = 0; token < tokenCount; token++)
        for (int kvHead = 0; kvHead < s.KvHeadCount; kvHead++)
        for (int partition = 0; partition < partitionCount; partition++)
        {
            int seq = tokenSeqs[token], pos = tokenPositions[token];
            int partStart = partition * partitionSize;
            int partEnd = Math.Min(partStart + partitionSize, pos + 1);
            if (window > 0 && pos >= window) partStart = Math.Max(partStart, pos + 1 - window);   // @windowed max.u32
            bool isEmpty = partStart >= partEnd;
            // s_blocks staging
            int firstBlock = partStart / s.BlockSize;
            int[] sBlocks = isEmpty ? [] : Enumerable.Range(0, (partEnd - 1) / s.BlockSize - firstBlock + 1)
                .Select(i => blockTables[seq * s.MaxBlocksPerSeq + firstBlock + i]).ToArray();
            for (int warp = 0; warp < s.KvMul; warp++)
            {
                int head = kvHead * s.KvMul + warp;
                long row = ((long)token * s.HeadCount + head) * partitionCount + partition;
                if (isEmpty)
                {
                    partialMl[row * 2] = float.NegativeInfinity;
                    partialMl[row * 2 + 1] = 0f;
                    continue;
                }
                int lanesPerRow = hd / vecWidth, rowsPerStep = 32 / lanesPerRow;
                var m = new float[32];
                var l = new float[32];
                var a = new float[32, vecWidth];
                var qr = new float[32, vecWidth];
                Array.Fill(m, float.NegativeInfinity);
                for (int lane = 0; lane < 32; lane++)
                    for (int e = 0; e < vecWidth; e++)
                        qr[lane, e] = q[(token * s.HeadCount + head) * hd + lane % lanesPerRow * vecWidth + e] * scaleLog2;

                for (int j0 = partStart; j0 < partEnd; j0 += rowsPerStep)
                {
                    var sc = new float[32];
                    var v = new float[32, vecWidth];
                    var valid = new bool[32];
                    for (int lane = 0; lane < 32; lane++)
                    {
                        int slot = lane / lanesPerRow, vec = lane % lanesPerRow, j = j0 + slot;
                        valid[lane] = j < partEnd;
                        if (!valid[lane]) continue;
                        int blk = sBlocks[j / s.BlockSize - firstBlock];
                        long elem = (((long)blk * s.BlockSize + j % s.BlockSize) * s.KvHeadCount + kvHead) * hd + vec * vecWidth;
                        for (int e = 0; e < vecWidth; e++)
                        {
                            sc[lane] += qr[lane, e] * kCache[elem + e];
                            v[lane, e] = vCache[elem + e];
                        }
                    }
                    for (int offset = lanesPerRow / 2; offset >= 1; offset /= 2)
                    {
                        var partner = Butterfly(sc, offset);
                        for (int lane = 0; lane < 32; lane++) sc[lane] += partner[lane];
                    }
                    for (int lane = 0; lane < 32; lane++)
                    {
                        if (!valid[lane]) continue;
                        float mNew = MathF.Max(m[lane], sc[lane]);
                        float corr = float.Exp2(m[lane] - mNew), prob = float.Exp2(sc[lane] - mNew);
                        l[lane] = l[lane] * corr + prob;
                        for (int e = 0; e < vecWidth; e++) a[lane, e] = a[lane, e] * corr + prob * v[lane, e];
                        m[lane] = mNew;
                    }
                }
                for (int offset = lanesPerRow; offset < 32; offset *= 2)
                {
                    var mo = Butterfly(m, offset);
                    var lo = Butterfly(l, offset);
                    var ao = new float[32, vecWidth];
                    for (int lane = 0; lane < 32; lane++)
                        for (int e = 0; e < vecWidth; e++) ao[lane, e] = a[lane ^ offset, e];
                    for (int lane = 0; lane < 32; lane++)
                    {
                        float mNew = MathF.Max(m[lane], mo[lane]);
                        bool bothEmpty = mNew == float.NegativeInfinity;
                        float c1 = bothEmpty ? 0f : float.Exp2(m[lane] - mNew), c2 = bothEmpty ? 0f : float.Exp2(mo[lane] - mNew);
                        l[lane] = l[lane] * c1 + lo[lane] * c2;
                        for (int e = 0; e < vecWidth; e++) a[lane, e] = a[lane, e] * c1 + ao[lane, e] * c2;
                        m[lane] = mNew;
                    }
                }
                for (int lane = 0; lane < lanesPerRow; lane++)   // slot 0 stores
                    for (int e = 0; e < vecWidth; e++) partialOut[row * hd + lane * vecWidth + e] = a[lane, e];
                partialMl[row * 2] = m[0];
                partialMl[row * 2 + 1] = l[0];
            }
        }

        // paged_attention_reduce
        var output = new float[tokenCount * s.HeadCount * hd];
        for (int r = 0; r < tokenCount * s.HeadCount; r++)
            for (int d = 0; d < hd; d++)
            {
                float mMax = float.NegativeInfinity;
                for (int p = 0; p < partitionCount; p++) mMax = MathF.Max(mMax, partialMl[(r * partitionCount + p) * 2]);
                float num = 0f, den = 0f;
                for (int p = 0; p < partitionCount; p++)
                {
                    float mp = partialMl[(r * partitionCount + p) * 2];
                    if (mp == float.NegativeInfinity) continue;
                    float w = float.Exp2(mp - mMax);
                    num += partialOut[(r * partitionCount + p) * hd + d] * w;
                    den += partialMl[(r * partitionCount + p) * 2 + 1] * w;
                }
                output[r * hd + d] = num / den;
            }
        return output;
    }

    /// <summary><c>shfl.sync.bfly</c>: lane i receives lane i ^ offset, then the PTX adds (dot) or merges (slots).</summary>
    private static float[] Butterfly(float[] values, int offset)
    {
        var r = new float[32];
        for (int lane = 0; lane < 32; lane++) r[lane] = values[lane ^ offset];
        return r;
    }
}
