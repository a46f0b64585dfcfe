using ILGPU;
using ILGPU.Runtime;
using Inference.Kernels;
using Inference.Kernels.Attention;
using Inference.Kernels.Reference;

namespace Inference.Cuda.Diagnostics;

/// <summary>
/// Runs the PTX and the ILGPU paged attention on a CUDA device against <see cref="ReferenceAttention"/> with random
/// inputs (outputs poisoned with NaN first). Used by the GPU tests and by the device-check runner, so both report the
/// same checks.
/// </summary>
public static class AttentionSelfCheck
{
    /// <summary>One check: a shape, a KV type and either decode contexts or prefill chunks.</summary>
    /// <param name="Name">Case name, e.g. <c>decode-gqa-hd128-f16-bs32</c>.</param>
    /// <param name="Heads">Query heads.</param>
    /// <param name="KvHeads">KV heads.</param>
    /// <param name="HeadDim">Elements per head.</param>
    /// <param name="BlockSize">Tokens per KV block.</param>
    /// <param name="F16">Whether the KV cache is f16 (else f32).</param>
    /// <param name="ContextLens">Context length per sequence.</param>
    /// <param name="ChunkLens">Null for decode; else query tokens per sequence (the last ones of each context).</param>
    /// <param name="PartitionSize">Partition size of the PTX kernels (0: automatic); ILGPU uses it too, or 512 when 0.</param>
    /// <param name="Window">Sliding window W (the query at p sees p − W + 1 … p); 0 for none.</param>
    public sealed record Case(string Name, int Heads, int KvHeads, int HeadDim, int BlockSize, bool F16, int[] ContextLens,
        int[]? ChunkLens, int PartitionSize, int Window = 0)
    {
        /// <inheritdoc />
        public override string ToString() => Name;
    }

    /// <summary>Error of one kernel in one case.</summary>
    /// <param name="Case">Case name.</param>
    /// <param name="Kernel">What was compared, e.g. <c>ptx-vs-reference</c>.</param>
    /// <param name="MaxAbsError">Largest absolute error (NaN when an output was NaN).</param>
    /// <param name="Passed">Whether every element was within tolerance.</param>
    /// <param name="Detail">The first failing element, or null.</param>
    public sealed record Result(string Case, string Kernel, double MaxAbsError, bool Passed, string? Detail);

    /// <summary>Absolute tolerance (ex2.approx and f32 accumulation order).</summary>
    public const float AbsTolerance = 2e-4f;

    /// <summary>Relative tolerance.</summary>
    public const float RelTolerance = 2e-3f;

    /// <summary>
    /// MHA (8/8), GQA (8/2), MQA (8/1) × f32/f16 × head dims 64/128, decode and prefill, contexts 1 .. 1500; and sliding
    /// windows (1, 100 and 1,000 positions: inside one partition, across partitions, wider than most contexts).
    /// </summary>
    public static IReadOnlyList<Case> StandardCases { get; } = BuildCases();

    private static Case[] BuildCases()
    {
        var list = new List<Case>();
        foreach (var (heads, kvHeads, label) in new[] { (8, 8, "mha"), (8, 2, "gqa"), (8, 1, "mqa") })
            foreach (var hd in new[] { 64, 128 })
                foreach (var f16 in new[] { false, true })
                {
                    int bs = hd == 64 ? 16 : 32;
                    string kv = f16 ? "f16" : "f32";
                    list.Add(new Case($"decode-{label}-hd{hd}-{kv}-bs{bs}", heads, kvHeads, hd, bs, f16,
                        [1, bs - 1, bs, bs + 1, 700, 1500], null, hd == 64 ? 256 : 0));
                    list.Add(new Case($"prefill-{label}-hd{hd}-{kv}-bs{bs}", heads, kvHeads, hd, bs, f16,
                        [37, 600], [37, 45], 256));
                }
        foreach (var (window, f16, hd, kvHeads) in new[] { (1, true, 128, 2), (100, false, 64, 8), (100, true, 128, 1), (1000, true, 64, 2) })
        {
            string kv = f16 ? "f16" : "f32";
            int bs = hd == 64 ? 16 : 32;
            list.Add(new Case($"decode-window{window}-kv{kvHeads}-hd{hd}-{kv}", 8, kvHeads, hd, bs, f16,
                [1, window, window + 1, 700, 1500], null, 0, window));
            list.Add(new Case($"prefill-window{window}-kv{kvHeads}-hd{hd}-{kv}", 8, kvHeads, hd, bs, f16,
                [37, 600, 1500], [37, 45, 130], 256, window));
        }
        return [.. list];
    }

    /// <summary>Runs one case with the PTX kernels and the ILGPU kernels on <paramref name="backend"/>.</summary>
    /// <param name="backend">The CUDA backend.</param>
    /// <param name="c">The case.</param>
    /// <param name="seed">Seed of the random inputs.</param>
    /// <returns>PTX vs reference, ILGPU vs reference and PTX vs ILGPU.</returns>
    public static IReadOnlyList<Result> Run(CudaBackend backend, Case c, int seed = 1)
    {
        var rng = new Random(seed);
        int maxContext = c.ContextLens.Max();
        int maxBlocks = (maxContext + c.BlockSize - 1) / c.BlockSize;
        var shape = new AttentionShape(c.Heads, c.KvHeads, c.HeadDim, c.BlockSize, maxBlocks);
        var acc = backend.Accelerator;
        backend.Bind();

        // Block tables over shuffled physical blocks; query tokens: decode = one per sequence, prefill = the last chunk
        // tokens of each context.
        int needed = c.ContextLens.Sum(n => (n + c.BlockSize - 1) / c.BlockSize);
        int blockCount = needed + 2;
        using var batch = new PagedBatch(acc, c.ContextLens, c.ChunkLens ?? Enumerable.Repeat(1, c.ContextLens.Length).ToArray(), c.BlockSize, maxBlocks,
            PagedBatch.ShuffledBlocks(rng, blockCount));
        var tables = batch.Tables;
        var starts = batch.Starts;
        int tokenCount = batch.TokenCount;

        int kvLength = blockCount * shape.BlockElements;
        var k = RandomValues(rng, kvLength);
        var v = RandomValues(rng, kvLength);
        var kHalf = new ILGPU.Half[kvLength];
        var vHalf = new ILGPU.Half[kvLength];
        if (c.F16)
        {
            for (int i = 0; i < kvLength; i++)
            {
                kHalf[i] = (ILGPU.Half)k[i];
                vHalf[i] = (ILGPU.Half)v[i];
                k[i] = kHalf[i];
                v[i] = vHalf[i];
            }
        }

        var q = RandomValues(rng, tokenCount * shape.HeadCount * shape.HeadDim);
        var expected = new float[q.Length];
        if (c.ChunkLens is null) ReferenceAttention.Decode(shape, q, k, v, tables, c.ContextLens, expected, c.Window);
        else ReferenceAttention.Prefill(shape, q, k, v, tables, starts, c.ContextLens, expected, c.Window);
        if (c.Window > 0)
        {
            // every K/V row before each sequence's first visible position becomes NaN: a kernel reading one shows it
            int rowLength = shape.KvHeadCount * shape.HeadDim;
            for (int s = 0; s < c.ContextLens.Length; s++)
                for (int p = 0; p < c.ContextLens[s] - (starts[s + 1] - starts[s]) + 1 - c.Window; p++)
                {
                    int at = (tables[s * maxBlocks + p / c.BlockSize] * c.BlockSize + p % c.BlockSize) * rowLength;
                    Array.Fill(k, float.NaN, at, rowLength);
                    Array.Fill(v, float.NaN, at, rowLength);
                    Array.Fill(kHalf, (ILGPU.Half)float.NaN, at, rowLength);
                    Array.Fill(vHalf, (ILGPU.Half)float.NaN, at, rowLength);
                }
        }

        using var qBuf = acc.Allocate1D(q);
        using var ptxOut = acc.Allocate1D<float>(q.Length);
        using var ilgpuOut = acc.Allocate1D<float>(q.Length);
        var poison = Enumerable.Repeat(float.NaN, q.Length).ToArray();
        ptxOut.CopyFromCPU(poison);
        ilgpuOut.CopyFromCPU(poison);

        if (c.F16)
        {
            using var kBuf = acc.Allocate1D(kHalf);
            using var vBuf = acc.Allocate1D(vHalf);
            RunKernels<ILGPU.Half, F16Element>(acc, c, shape, maxContext, tokenCount, qBuf.View, kBuf.View, vBuf.View, batch.TablesView,
                batch.ContextsView, batch.StartsView, batch.TokenSeqsView, batch.PositionsView, ptxOut.View, ilgpuOut.View);
        }
        else
        {
            using var kBuf = acc.Allocate1D(k);
            using var vBuf = acc.Allocate1D(v);
            RunKernels<float, F32Element>(acc, c, shape, maxContext, tokenCount, qBuf.View, kBuf.View, vBuf.View, batch.TablesView,
                batch.ContextsView, batch.StartsView, batch.TokenSeqsView, batch.PositionsView, ptxOut.View, ilgpuOut.View);
        }
        acc.Synchronize();
        var ptx = ptxOut.GetAsArray1D();
        var ilgpu = ilgpuOut.GetAsArray1D();
        return
        [
            Compare(c.Name, "ptx-vs-reference", expected, ptx),
            Compare(c.Name, "ilgpu-vs-reference", expected, ilgpu),
            Compare(c.Name, "ptx-vs-ilgpu", ilgpu, ptx),
        ];
    }

    private static void RunKernels<TKv, TConv>(Accelerator acc, Case c, AttentionShape shape, int maxContext, int tokenCount,
        ArrayView<float> q, ArrayView<TKv> k, ArrayView<TKv> v, ArrayView<int> tables, ArrayView<int> lens, ArrayView<int> starts,
        ArrayView<int> seqs, ArrayView<int> positions, ArrayView<float> ptxOut, ArrayView<float> ilgpuOut)
        where TKv : unmanaged
        where TConv : struct, IKvRowFormat<TKv>
    {
        var cuda = (ILGPU.Runtime.Cuda.CudaAccelerator)acc;
        if (c.ChunkLens is null)
        {
            using var ptx = new PtxPagedDecodeAttention<TKv>(cuda, shape, c.PartitionSize);
            ptx.Run(q, k, v, tables, lens, c.ContextLens.Length, maxContext, ptxOut, c.Window);
            using var ilgpu = new PagedDecodeAttention<TKv, TConv>(acc, shape, c.PartitionSize > 0 ? c.PartitionSize : 512);
            ilgpu.Run(q, k, v, tables, lens, c.ContextLens.Length, maxContext, ilgpuOut, c.Window);
            acc.Synchronize();
        }
        else
        {
            using var ptx = new PtxPagedPrefillAttention<TKv>(cuda, shape, c.PartitionSize);
            ptx.Run(q, k, v, tables, seqs, positions, tokenCount, maxContext, ptxOut, c.Window);
            new PagedPrefillAttention<TKv, TConv>(acc, shape).Run(q, k, v, tables, starts, lens, c.ContextLens.Length,
                c.ChunkLens.Max(), ilgpuOut, c.Window);
            acc.Synchronize();
        }
    }

    private static Result Compare(string name, string kernel, float[] expected, float[] actual)
    {
        double maxAbs = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double err = Math.Abs((double)actual[i] - expected[i]);
            if (!(err <= AbsTolerance + RelTolerance * Math.Abs(expected[i])))
                return new Result(name, kernel, double.IsNaN(err) ? double.NaN : err, false,
                    $"element {i}: expected {expected[i]}, got {actual[i]}");
            maxAbs = Math.Max(maxAbs, err);
        }
        return new Result(name, kernel, maxAbs, true, null);
    }

    private static float[] RandomValues(Random rng, int count)
    {
        var a = new float[count];
        for (int i = 0; i < count; i++)
        {
            float x = (float)(rng.NextDouble() * 2 - 1);
            a[i] = x == 0f ? 0.25f : x;
        }
        return a;
    }
}
