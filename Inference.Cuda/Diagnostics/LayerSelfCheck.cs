using Inference.Models;
using ILGPU;
using ILGPU.Runtime;
using Inference.Kernels;
using Inference.Kernels.Attention;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;
using Inference.KvCache;

namespace Inference.Cuda.Diagnostics;

/// <summary>
/// Runs the ILGPU layer kernels (<see cref="LayerKernels"/>) on a CUDA device against the plain references with random
/// inputs (outputs poisoned first). Shared by the GPU tests and the device-check runner.
/// </summary>
public static class LayerSelfCheck
{
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Accelerator, LayerKernels> Loaded = new();

    /// <summary>Names of the checks, in the order the device-check runner reports them.</summary>
    public static IReadOnlyList<string> Names { get; } =
    [
        "rmsnorm", "rope-normal", "rope-neox", "swiglu", "matmul-f32", "matmul-f16", "matmul-q8_0",
        "embedding-f32", "embedding-f16", "embedding-q8_0", "argmax", "topk",
        "add-bias", "gather-rows", "rope-table", "kv-write-f32", "kv-write-f16", "kv-write-q8_0", "kv-write-fp8",
        "attention-decode-q8_0", "attention-decode-fp8", "attention-prefill-q8_0", "attention-prefill-fp8",
        "sampling", "experts-f16", "add-rmsnorm", "rope-kv-write-f16", "matmul-glu-f16", "matmul-glu-q8_0",
    ];

    /// <summary>Runs one named check.</summary>
    /// <param name="backend">The CUDA backend.</param>
    /// <param name="name">One of <see cref="Names"/>.</param>
    /// <returns>The result (kernel "ilgpu-vs-reference").</returns>
    /// <exception cref="ArgumentException">Unknown name.</exception>
    public static AttentionSelfCheck.Result Run(CudaBackend backend, string name)
    {
        ArgumentNullException.ThrowIfNull(backend);
        backend.Bind();
        return Run(backend.Accelerator, name);
    }

    /// <summary>Runs one named check on any accelerator (the CPU accelerator too, slowly).</summary>
    /// <param name="acc">The accelerator; its context must have ILGPU.Algorithms enabled.</param>
    /// <param name="name">One of <see cref="Names"/>.</param>
    /// <returns>The result (kernel "ilgpu-vs-reference").</returns>
    /// <exception cref="ArgumentException">Unknown name.</exception>
    public static AttentionSelfCheck.Result Run(Accelerator acc, string name)
    {
        ArgumentNullException.ThrowIfNull(acc);
        var kernels = Loaded.GetValue(acc, a => new LayerKernels(a));
        var rng = new Random(name.Length * 31 + 7);
        return name switch
        {
            "rmsnorm" => RmsNorm(acc, kernels, rng),
            "rope-normal" => Rope(acc, kernels, rng, RopeLayout.Normal),
            "rope-neox" => Rope(acc, kernels, rng, RopeLayout.Neox),
            "swiglu" => SwiGlu(acc, kernels, rng),
            "matmul-f32" or "matmul-f16" or "matmul-q8_0" => MatMul(acc, kernels, rng, name),
            "embedding-f32" or "embedding-f16" or "embedding-q8_0" => Embedding(acc, kernels, rng, name),
            "argmax" or "topk" => Selection(acc, kernels, rng, name),
            "sampling" => Sampling(acc, rng),
            "experts-f16" => Experts(acc, kernels, rng),
            "add-rmsnorm" => AddRmsNorm(acc, kernels, rng),
            "rope-kv-write-f16" => RopeWriteKv(acc, kernels, rng),
            "matmul-glu-f16" or "matmul-glu-q8_0" => MatMulGlu(acc, kernels, rng, name),
            "add-bias" => AddBias(acc, kernels, rng),
            "gather-rows" => GatherRows(acc, kernels, rng),
            "rope-table" => RopeTable(acc, kernels, rng),
            "kv-write-f32" or "kv-write-f16" => WriteKv(acc, kernels, rng, name),
            "kv-write-q8_0" or "kv-write-fp8" => WriteKvBlocks(acc, kernels, rng, name),
            "attention-decode-q8_0" or "attention-prefill-q8_0" => BlockAttention<Q8_0Kv>(acc, rng, name, KvCacheDataType.Q8_0),
            "attention-decode-fp8" or "attention-prefill-fp8" => BlockAttention<Fp8E4M3Kv>(acc, rng, name, KvCacheDataType.Fp8E4M3),
            _ => throw new ArgumentException($"unknown layer check {name}", nameof(name)),
        };
    }

    private static AttentionSelfCheck.Result RmsNorm(Accelerator acc, LayerKernels k, Random rng)
    {
        const int rows = 7, dim = 4096;
        var x = Values(rng, rows * dim, 3f);
        var w = Values(rng, dim, 1f);
        var expected = new float[x.Length];
        ReferenceLayer.RmsNorm(x, w, expected, 1e-5f);
        using var xb = acc.Allocate1D(x);
        using var wb = acc.Allocate1D(w);
        using var yb = Poisoned(acc, x.Length);
        k.RmsNorm(xb.View, wb.View, yb.View, rows, dim, 1e-5f);
        return Compare("rmsnorm", expected, Read(acc, yb), 1e-5, 1e-4);
    }

    private static AttentionSelfCheck.Result Rope(Accelerator acc, LayerKernels k, Random rng, RopeLayout layout)
    {
        const int tokens = 9, heads = 8, headDim = 128;
        var x = Values(rng, tokens * heads * headDim, 1f);
        int[] positions = [0, 1, 2, 15, 16, 511, 1000, 4095, 8191];
        var expected = (float[])x.Clone();
        ReferenceLayer.Rope(expected, positions, heads, headDim, headDim, 10000f, layout);
        using var xb = acc.Allocate1D(x);
        using var pb = acc.Allocate1D(positions);
        k.Rope(xb.View, pb.View, tokens, heads, headDim, headDim, 10000f, layout);
        // NOTE: angles reach 8191 rad; fast sin/cos with f32 argument reduction costs ~1e-3 there.
        return Compare(layout == RopeLayout.Neox ? "rope-neox" : "rope-normal", expected, Read(acc, xb), 2e-3, 2e-3);
    }

    private static AttentionSelfCheck.Result SwiGlu(Accelerator acc, LayerKernels k, Random rng)
    {
        const int n = 11008 * 3;
        var gate = Values(rng, n, 6f);
        var up = Values(rng, n, 1f);
        var expected = new float[n];
        ReferenceLayer.SwiGlu(gate, up, expected);
        using var gb = acc.Allocate1D(gate);
        using var ub = acc.Allocate1D(up);
        using var ob = Poisoned(acc, n);
        k.SwiGlu(gb.View, ub.View, ob.View, n);
        return Compare("swiglu", expected, Read(acc, ob), 1e-5, 1e-4);
    }

    /// <summary>
    /// (rows, cols, batch) of the matrix checks: a full-size row, rows that leave the last group of 4 partly empty,
    /// batches around the tile of 4 and past the chunk of 16, and the narrowest row (one Q8_0 block).
    /// </summary>
    private static readonly (int Rows, int Cols, int Batch)[] MatMulShapes =
        [(300, 1024, 3), (37, 2048, 5), (13, 96, 16), (5, 32, 9), (6, 96, 17), (2, 2048, 1)];

    private static AttentionSelfCheck.Result MatMul(Accelerator acc, LayerKernels k, Random rng, string name)
    {
        AttentionSelfCheck.Result? worst = null;
        foreach (var (rows, cols, batch) in MatMulShapes)
        {
            var r = MatMul(acc, k, rng, name, rows, cols, batch);
            if (!r.Passed) return r with { Detail = $"{rows}x{cols} batch {batch}: {r.Detail}" };
            if (worst is null || r.MaxAbsError > worst.MaxAbsError) worst = r;
        }
        return worst!;
    }

    private static AttentionSelfCheck.Result MatMul(Accelerator acc, LayerKernels k, Random rng, string name, int rows, int cols, int batch)
    {
        var w = Values(rng, rows * cols, 1f);
        var x = Values(rng, batch * cols, 1f);
        using var xb = acc.Allocate1D(x);
        using var yb = Poisoned(acc, batch * rows);
        float[] effective;
        if (name == "matmul-f32")
        {
            effective = w;
            using var wb = acc.Allocate1D(w);
            k.MatMul(wb.View, xb.View, yb.View, rows, cols, batch);
            acc.Synchronize();
        }
        else if (name == "matmul-f16")
        {
            var h = Array.ConvertAll(w, v => (ILGPU.Half)v);
            effective = Array.ConvertAll(h, v => (float)v);
            using var wb = acc.Allocate1D(h);
            k.MatMul(wb.View, xb.View, yb.View, rows, cols, batch);
            acc.Synchronize();
        }
        else
        {
            var q = ReferenceMatMul.QuantizeQ8_0(w);
            effective = ReferenceMatMul.DequantizeQ8_0(q);
            using var wb = acc.Allocate1D(q);
            k.MatMulQ8_0(wb.View, xb.View, yb.View, rows, cols, batch);
            acc.Synchronize();
        }
        var expected = new float[batch * rows];
        ReferenceMatMul.MatMul(effective, x, expected, rows, cols);
        return Compare(name, expected, Read(acc, yb), 1e-4, 1e-4);
    }

    private static AttentionSelfCheck.Result Embedding(Accelerator acc, LayerKernels k, Random rng, string name)
    {
        const int vocab = 1000, dim = 256;
        var table = Values(rng, vocab * dim, 1f);
        int[] ids = [0, 999, 17, 17, 512];
        using var ib = acc.Allocate1D(ids);
        using var ob = Poisoned(acc, ids.Length * dim);
        float[] effective;
        if (name == "embedding-f32")
        {
            effective = table;
            using var tb = acc.Allocate1D(table);
            k.Embedding(tb.View, ib.View, ob.View, ids.Length, dim);
            acc.Synchronize();
        }
        else if (name == "embedding-f16")
        {
            var h = Array.ConvertAll(table, v => (ILGPU.Half)v);
            effective = Array.ConvertAll(h, v => (float)v);
            using var tb = acc.Allocate1D(h);
            k.Embedding(tb.View, ib.View, ob.View, ids.Length, dim);
            acc.Synchronize();
        }
        else
        {
            var q = ReferenceMatMul.QuantizeQ8_0(table);
            effective = ReferenceMatMul.DequantizeQ8_0(q);
            using var tb = acc.Allocate1D(q);
            k.EmbeddingQ8_0(tb.View, ib.View, ob.View, ids.Length, dim);
            acc.Synchronize();
        }
        var expected = new float[ids.Length * dim];
        ReferenceLayer.Embedding(effective, ids, expected, dim);
        return Compare(name, expected, Read(acc, ob), 0, 0);
    }

    private static AttentionSelfCheck.Result Selection(Accelerator acc, LayerKernels k, Random rng, string name)
    {
        const int rows = 4, cols = 32000, topK = 40;
        var logits = Values(rng, rows * cols, 10f);
        logits[5] = 50f;
        logits[cols - 1] = 50f;            // tie in row 0: index 5 must win
        logits[cols + 7] = float.NaN;      // NaN is never selected
        using var lb = acc.Allocate1D(logits);
        if (name == "argmax")
        {
            using var ib = acc.Allocate1D(Enumerable.Repeat(-7, rows).ToArray());
            k.ArgMax(lb.View, ib.View, rows, cols);
            acc.Synchronize();
            var got = ib.GetAsArray1D();
            for (int r = 0; r < rows; r++)
            {
                int want = ReferenceSelection.ArgMax(logits.AsSpan(r * cols, cols));
                if (got[r] != want)
                    return new AttentionSelfCheck.Result("argmax", "ilgpu-vs-reference", double.NaN, false, $"row {r}: expected {want}, got {got[r]}");
            }
            return new AttentionSelfCheck.Result("argmax", "ilgpu-vs-reference", 0, true, null);
        }
        using var vb = Poisoned(acc, rows * topK);
        using var tb = acc.Allocate1D(Enumerable.Repeat(-7, rows * topK).ToArray());
        k.TopK(lb.View, vb.View, tb.View, rows, cols, topK);
        acc.Synchronize();
        var indices = tb.GetAsArray1D();
        for (int r = 0; r < rows; r++)
        {
            var want = ReferenceSelection.TopK(logits.AsSpan(r * cols, cols), topK);
            for (int i = 0; i < topK; i++)
                if (indices[r * topK + i] != want[i])
                    return new AttentionSelfCheck.Result("topk", "ilgpu-vs-reference", double.NaN, false,
                        $"row {r} rank {i}: expected {want[i]}, got {indices[r * topK + i]}");
        }
        return new AttentionSelfCheck.Result("topk", "ilgpu-vs-reference", 0, true, null);
    }

    /// <summary>
    /// The device sampler against the host <see cref="Inference.Sampling.Sampler"/>: every option, penalties, two
    /// vocabulary sizes (one not a multiple of the group), rows at shuffled logit rows; the chosen tokens must be equal.
    /// </summary>
    private static AttentionSelfCheck.Result Sampling(Accelerator acc, Random rng)
    {
        using var sampler = new DeviceSampler(acc);
        int mismatches = 0, compared = 0;
        string? first = null;
        foreach (int vocab in (int[])[32000, 1537])
        {
            const int rows = 12;
            var batch = new Inference.Sampling.DeviceSamplingRows { VocabSize = vocab };
            var logits = new float[(rows + 1) * vocab];
            using var buffer = acc.Allocate1D<float>(logits.Length);
            for (int step = 0; step < 3; step++)
            {
                for (int i = 0; i < logits.Length; i++) logits[i] = (float)(rng.NextDouble() * 16 - 8);
                var host = (float[])logits.Clone();
                var expected = new int[rows];
                batch.Clear();
                for (int r = 0; r < rows; r++)
                {
                    var options = new Inference.Sampling.SamplingOptions
                    {
                        Temperature = r % 5 == 0 ? 0 : 0.3f + r * 0.15f,
                        TopK = (r % 4) switch { 0 => 0, 1 => 1, 2 => 40, _ => 5000 },
                        TopP = r % 3 == 0 ? 1 : 0.9f,
                        MinP = r % 2 == 0 ? 0 : 0.05f,
                        RepetitionPenalty = r % 3 == 1 ? 1.2f : 1,
                        FrequencyPenalty = r % 4 == 3 ? 0.5f : 0,
                        PresencePenalty = r % 4 == 3 ? 0.25f : 0,
                        Seed = (ulong)(1000 * step + r),
                    };
                    var history = new int[24];
                    for (int i = 0; i < history.Length; i++) history[i] = rng.Next(vocab);
                    int row = (r * 7 + step) % (rows + 1);
                    expected[r] = new Inference.Sampling.Sampler(options, vocab).Sample(host.AsSpan(row * vocab, vocab), history, 8);
                    new Inference.Sampling.Sampler(options, vocab).AddDeviceRow(batch, row, history, 8);
                }
                buffer.CopyFromCPU(logits);
                sampler.Run(buffer.View, batch);
                for (int r = 0; r < rows; r++, compared++)
                {
                    if (batch.Tokens[r] == expected[r]) continue;
                    mismatches++;
                    first ??= $"vocab {vocab} step {step} row {r}: expected {expected[r]}, got {batch.Tokens[r]}";
                }
            }
        }
        return new AttentionSelfCheck.Result("sampling", "ilgpu-vs-reference", mismatches, mismatches == 0,
            first is null ? $"{compared} choices equal the host sampler's" : $"{mismatches} of {compared} differ; first: {first}");
    }

    private static AttentionSelfCheck.Result AddBias(Accelerator acc, LayerKernels k, Random rng)
    {
        const int rows = 7, width = 2048;
        var x = Values(rng, rows * width, 1f);
        var y = Values(rng, rows * width, 1f);
        var bias = Values(rng, width, 1f);
        var expected = (float[])x.Clone();
        ReferenceLayer.Add(expected, y);
        ReferenceLayer.AddBias(expected, bias);
        using var xb = acc.Allocate1D(x);
        using var yb = acc.Allocate1D(y);
        using var bb = acc.Allocate1D(bias);
        k.Add(xb.View, yb.View, x.Length);
        k.AddBias(xb.View, bb.View, rows, width);
        return Compare("add-bias", expected, Read(acc, xb), 1e-6, 1e-6);
    }

    private static AttentionSelfCheck.Result GatherRows(Accelerator acc, LayerKernels k, Random rng)
    {
        const int width = 2048;
        var x = Values(rng, 40 * width, 1f);
        int[] rows = [39, 0, 17, 17];
        var expected = new float[rows.Length * width];
        ReferenceLayer.GatherRows(x, rows, expected, width);
        using var xb = acc.Allocate1D(x);
        using var rb = acc.Allocate1D(rows);
        using var ob = Poisoned(acc, expected.Length);
        k.GatherRows(xb.View, rb.View, ob.View, rows.Length, width);
        return Compare("gather-rows", expected, Read(acc, ob), 0, 0);
    }

    /// <summary>
    /// The device mixture-of-experts path with nothing read back between its kernels: route (top-2 of 8, renormalised),
    /// group by expert, gather, one launch of every expert's F16 product; against the reference routing and grouping and
    /// a float64 product per slot. 21 tokens, experts 0 and 1 favoured (more than one batch chunk of rows), the last
    /// never chosen.
    /// </summary>
    private static AttentionSelfCheck.Result Experts(Accelerator acc, LayerKernels k, Random rng)
    {
        const int tokens = 21, experts = 8, topK = 2, rows = 64, cols = 256, slots = tokens * topK;
        var logits = Values(rng, tokens * experts, 3f);
        for (int t = 0; t < tokens; t++)
        {
            logits[t * experts] += 6f;
            logits[t * experts + 1] += 5f;
            logits[t * experts + experts - 1] = -40f;
        }
        var h = Array.ConvertAll(Values(rng, experts * rows * cols, 1f), v => (ILGPU.Half)v);
        var x = Values(rng, tokens * cols, 1f);

        var chosen = new int[slots];
        var weights = new double[slots];
        ReferenceExperts.Route(logits, experts, topK, true, chosen, weights);
        var starts = new int[experts + 1];
        var rowTokens = new int[slots];
        var slotRows = new int[slots];
        ReferenceExperts.Group(chosen, experts, topK, starts, rowTokens, slotRows);
        var expected = new float[slots * rows];
        for (int i = 0; i < slots; i++)
            for (int r = 0; r < rows; r++)
            {
                double sum = 0;
                long w0 = ((long)chosen[i] * rows + r) * cols;
                for (int c = 0; c < cols; c++) sum += (double)(float)h[w0 + c] * x[i / topK * cols + c];
                expected[slotRows[i] * rows + r] = (float)sum;
            }

        using var lb = acc.Allocate1D(logits);
        using var cb = acc.Allocate1D(new int[slots]);
        using var wb = acc.Allocate1D(new float[slots]);
        using var ib = acc.Allocate1D(Enumerable.Repeat(-1, experts + 1 + 2 * slots).ToArray());
        using var hb = acc.Allocate1D(h);
        using var xb = acc.Allocate1D(x);
        using var gb = acc.Allocate1D<float>((long)slots * cols);
        using var yb = Poisoned(acc, slots * rows);
        var sv = ib.View.SubView(0, experts + 1);
        var rv = ib.View.SubView(experts + 1, slots);
        var ov = ib.View.SubView(experts + 1 + slots, slots);
        k.RouteExperts(lb.View, cb.View, wb.View, tokens, experts, topK, normalize: true);
        k.GroupExperts(cb.View, sv, rv, ov, tokens, experts, topK);
        k.GatherRows(xb.View, rv, gb.View, slots, cols);
        k.MatMulExperts(Loading.GgmlType.F16, ((ArrayView<ILGPU.Half>)hb.View).Cast<byte>(), gb.View, yb.View, sv, experts, rows, cols, tokens);
        acc.Synchronize();
        var grouping = ib.GetAsArray1D();
        if (!grouping.AsSpan(0, experts + 1).SequenceEqual(starts) || !grouping.AsSpan(experts + 1, slots).SequenceEqual(rowTokens)
            || !grouping.AsSpan(experts + 1 + slots).SequenceEqual(slotRows))
            return new AttentionSelfCheck.Result("experts-f16", "ilgpu-vs-reference", double.NaN, false, "the grouping by expert differs from the reference");
        return Compare("experts-f16", expected, Read(acc, yb), 1e-4, 1e-4);
    }

    private static AttentionSelfCheck.Result RopeTable(Accelerator acc, LayerKernels k, Random rng)
    {
        const int tokens = 9, heads = 8, headDim = 128;
        var x = Values(rng, tokens * heads * headDim, 1f);
        var angles = Values(rng, tokens * headDim / 2, 3f);
        var cos = Array.ConvertAll(angles, MathF.Cos);
        var sin = Array.ConvertAll(angles, MathF.Sin);
        var expected = (float[])x.Clone();
        ReferenceLayer.RopeTable(expected, cos, sin, heads, headDim, headDim, RopeLayout.Neox);
        using var xb = acc.Allocate1D(x);
        using var cb = acc.Allocate1D(cos);
        using var sb = acc.Allocate1D(sin);
        k.RopeTable(xb.View, cb.View, sb.View, tokens, heads, headDim, headDim, RopeLayout.Neox);
        return Compare("rope-table", expected, Read(acc, xb), 1e-6, 1e-6);
    }

    private static AttentionSelfCheck.Result WriteKv(Accelerator acc, LayerKernels k, Random rng, string name)
    {
        const int kvDim = 1024, slotCount = 64;
        var key = Values(rng, 5 * kvDim, 1f);
        var value = Values(rng, 5 * kvDim, 1f);
        int[] slots = [63, 0, 16, 17, 40];
        var kExpected = new float[slotCount * kvDim];
        var vExpected = new float[slotCount * kvDim];
        ReferenceLayer.WriteKv(key, value, slots, kExpected, vExpected, kvDim);
        using var kb = acc.Allocate1D(key);
        using var vb = acc.Allocate1D(value);
        using var sb = acc.Allocate1D(slots);
        float[] kActual, vActual;
        if (name == "kv-write-f32")
        {
            using var kc = acc.Allocate1D(new float[slotCount * kvDim]);
            using var vc = acc.Allocate1D(new float[slotCount * kvDim]);
            k.WriteKv(kb.View, vb.View, sb.View, kc.View, vc.View, slots.Length, kvDim);
            kActual = Read(acc, kc);
            vActual = Read(acc, vc);
        }
        else
        {
            // f16: the expected values are System.Half's round-to-nearest-even of the inputs.
            kExpected = Array.ConvertAll(kExpected, f => (float)(System.Half)f);
            vExpected = Array.ConvertAll(vExpected, f => (float)(System.Half)f);
            using var kc = acc.Allocate1D(new ILGPU.Half[slotCount * kvDim]);
            using var vc = acc.Allocate1D(new ILGPU.Half[slotCount * kvDim]);
            k.WriteKv(kb.View, vb.View, sb.View, kc.View, vc.View, slots.Length, kvDim);
            acc.Synchronize();
            kActual = Array.ConvertAll(kc.GetAsArray1D(), h => (float)h);
            vActual = Array.ConvertAll(vc.GetAsArray1D(), h => (float)h);
        }
        // NOTE: exact on CUDA (cvt.rn); ILGPU's CPU accelerator converts to f16 in software, up to one ulp away.
        bool soft = name == "kv-write-f16" && acc.AcceleratorType != AcceleratorType.Cuda;
        double atol = soft ? 6e-8 : 0, rtol = soft ? 1.0 / 1024 : 0;   // one f16 ulp: subnormal spacing, relative spacing
        var a = Compare(name, kExpected, kActual, atol, rtol);
        return a.Passed ? Compare(name, vExpected, vActual, atol, rtol) : a;
    }

    /// <summary>
    /// The block formats' KV write kernel: the device must write the bytes the CPU's <see cref="KvBlockFormat.Quantize"/>
    /// writes, exactly (block magnitudes from 1e-6 to 1e4, so f16 scales from subnormal up).
    /// </summary>
    private static AttentionSelfCheck.Result WriteKvBlocks(Accelerator acc, LayerKernels k, Random rng, string name)
    {
        var type = name == "kv-write-q8_0" ? KvCacheDataType.Q8_0 : KvCacheDataType.Fp8E4M3;
        const int kvDim = 1024, slotCount = 64, tokens = 5;
        var key = Values(rng, tokens * kvDim, 1f);
        var value = Values(rng, tokens * kvDim, 1f);
        for (int b = 0; b < tokens * kvDim / 32; b++)
        {
            float scale = MathF.Pow(10, (float)(rng.NextDouble() * 10 - 6));
            for (int i = 0; i < 32; i++)
            {
                key[b * 32 + i] *= scale;
                value[b * 32 + i] *= scale;
            }
        }
        int[] slots = [63, 0, 16, 17, 40];
        int rowBytes = (int)KvBlockFormat.ByteCount(type, kvDim);
        var kExpected = Enumerable.Repeat((byte)0xCD, slotCount * rowBytes).ToArray();
        var vExpected = (byte[])kExpected.Clone();
        for (int t = 0; t < tokens; t++)
        {
            KvBlockFormat.Quantize(type, key.AsSpan(t * kvDim, kvDim), kExpected.AsSpan(slots[t] * rowBytes, rowBytes));
            KvBlockFormat.Quantize(type, value.AsSpan(t * kvDim, kvDim), vExpected.AsSpan(slots[t] * rowBytes, rowBytes));
        }
        using var kb = acc.Allocate1D(key);
        using var vb = acc.Allocate1D(value);
        using var sb = acc.Allocate1D(slots);
        using var kc = acc.Allocate1D(Enumerable.Repeat((byte)0xCD, slotCount * rowBytes).ToArray());
        using var vc = acc.Allocate1D(Enumerable.Repeat((byte)0xCD, slotCount * rowBytes).ToArray());
        k.WriteKv(kb.View, vb.View, sb.View, kc.View, vc.View, tokens, kvDim, type);
        acc.Synchronize();
        foreach (var (expected, actual, what) in new[] { (kExpected, kc.GetAsArray1D(), "K"), (vExpected, vc.GetAsArray1D(), "V") })
            for (int i = 0; i < expected.Length; i++)
                if (expected[i] != actual[i])
                    return new AttentionSelfCheck.Result(name, "ilgpu-vs-cpu-bytes", double.NaN, false,
                        $"{what} byte {i} (slot {i / rowBytes}, block {i % rowBytes / 34}): expected {expected[i]:X2}, got {actual[i]:X2}");
        return new AttentionSelfCheck.Result(name, "ilgpu-vs-cpu-bytes", 0, true, null);
    }

    /// <summary>
    /// The ILGPU attention kernels reading Q8_0 or FP8 blocks against the plain reference over the dequantized cache
    /// (GQA 8/2, head size 128, blocks of 16, shuffled physical blocks, contexts 1 … 700).
    /// </summary>
    private static AttentionSelfCheck.Result BlockAttention<TFormat>(Accelerator acc, Random rng, string name, KvCacheDataType type)
        where TFormat : struct, IKvRowFormat<byte>
    {
        bool prefill = name.StartsWith("attention-prefill", StringComparison.Ordinal);
        int[] contexts = [1, 17, 700], chunks = prefill ? [1, 17, 45] : [1, 1, 1];
        const int heads = 8, kvHeads = 2, headDim = 128, blockSize = 16;
        int maxBlocks = (contexts.Max() + blockSize - 1) / blockSize;
        var shape = new AttentionShape(heads, kvHeads, headDim, blockSize, maxBlocks);
        int blockCount = contexts.Sum(c => (c + blockSize - 1) / blockSize) + 2;
        using var batch = new PagedBatch(acc, contexts, chunks, blockSize, maxBlocks, PagedBatch.ShuffledBlocks(rng, blockCount));
        var kf = Values(rng, blockCount * shape.BlockElements, 1f);
        var vf = Values(rng, kf.Length, 1f);
        var kq = new byte[KvBlockFormat.ByteCount(type, kf.Length)];
        var vq = new byte[kq.Length];
        KvBlockFormat.Quantize(type, kf, kq);
        KvBlockFormat.Quantize(type, vf, vq);
        KvBlockFormat.Dequantize(type, kq, kf);
        KvBlockFormat.Dequantize(type, vq, vf);
        var q = Values(rng, batch.TokenCount * heads * headDim, 1f);
        var expected = new float[q.Length];
        if (prefill) ReferenceAttention.Prefill(shape, q, kf, vf, batch.Tables, batch.Starts, contexts, expected);
        else ReferenceAttention.Decode(shape, q, kf, vf, batch.Tables, contexts, expected);

        using var qb = acc.Allocate1D(q);
        using var kb = acc.Allocate1D(kq);
        using var vb = acc.Allocate1D(vq);
        using var ob = Poisoned(acc, q.Length);
        if (prefill)
        {
            new PagedPrefillAttention<byte, TFormat>(acc, shape).Run(qb.View, kb.View, vb.View, batch.TablesView, batch.StartsView, batch.ContextsView,
                contexts.Length, chunks.Max(), ob.View);
            return Compare(name, expected, Read(acc, ob), AttentionSelfCheck.AbsTolerance, AttentionSelfCheck.RelTolerance);
        }
        using var decode = new PagedDecodeAttention<byte, TFormat>(acc, shape, 256);
        decode.Run(qb.View, kb.View, vb.View, batch.TablesView, batch.ContextsView, contexts.Length, contexts.Max(), ob.View);
        return Compare(name, expected, Read(acc, ob), AttentionSelfCheck.AbsTolerance, AttentionSelfCheck.RelTolerance);
    }

    /// <summary>The fused residual add and RMSNorm against the references of both (the stream and the norm).</summary>
    private static AttentionSelfCheck.Result AddRmsNorm(Accelerator acc, LayerKernels k, Random rng)
    {
        const int rows = 7, dim = 4096;
        var x = Values(rng, rows * dim, 3f);
        var delta = Values(rng, rows * dim, 2f);
        var w = Values(rng, dim, 1f);
        var sum = (float[])x.Clone();
        ReferenceLayer.Add(sum, delta);
        var expected = new float[x.Length];
        ReferenceLayer.RmsNorm(sum, w, expected, 1e-5f);
        using var xb = acc.Allocate1D(x);
        using var db = acc.Allocate1D(delta);
        using var wb = acc.Allocate1D(w);
        using var ob = Poisoned(acc, x.Length);
        k.AddRmsNorm(xb.View, db.View, wb.View, ob.View, rows, dim, 1e-5f);
        var stream = Compare("add-rmsnorm", sum, Read(acc, xb), 0, 0);
        return stream.Passed ? Compare("add-rmsnorm", expected, Read(acc, ob), 1e-5, 1e-4) : stream with { Detail = $"x: {stream.Detail}" };
    }

    /// <summary>
    /// The fused RoPE + K/V write (f16 pool, 32/8 heads of 128, a query factor) against the reference RoPE, the factor
    /// and the f16 rounding of the rotated keys and the values at their slots; every other slot stays poisoned.
    /// </summary>
    private static AttentionSelfCheck.Result RopeWriteKv(Accelerator acc, LayerKernels k, Random rng)
    {
        const int tokens = 9, heads = 32, kvHeads = 8, headDim = 128, slotCount = 64;
        const float scale = 0.9f;
        int kvDim = kvHeads * headDim;
        var q = Values(rng, tokens * heads * headDim, 1f);
        var keys = Values(rng, tokens * kvDim, 1f);
        var values = Values(rng, tokens * kvDim, 1f);
        var angles = Values(rng, tokens * headDim / 2, 3f);
        var cos = Array.ConvertAll(angles, MathF.Cos);
        var sin = Array.ConvertAll(angles, MathF.Sin);
        var slots = Enumerable.Range(0, slotCount).OrderBy(_ => rng.Next()).Take(tokens).ToArray();
        var expectedQ = (float[])q.Clone();
        var rotatedK = (float[])keys.Clone();
        ReferenceLayer.RopeTable(expectedQ, cos, sin, heads, headDim, headDim, RopeLayout.Neox);
        ReferenceLayer.RopeTable(rotatedK, cos, sin, kvHeads, headDim, headDim, RopeLayout.Neox);
        for (int i = 0; i < expectedQ.Length; i++) expectedQ[i] *= scale;
        var expectedK = Enumerable.Repeat(float.NaN, slotCount * kvDim).ToArray();
        var expectedV = (float[])expectedK.Clone();
        ReferenceLayer.WriteKv(rotatedK, values, slots, expectedK, expectedV, kvDim);
        for (int i = 0; i < expectedK.Length; i++)
        {
            expectedK[i] = (float)(System.Half)expectedK[i];
            expectedV[i] = (float)(System.Half)expectedV[i];
        }
        using var qb = acc.Allocate1D(q);
        using var kb = acc.Allocate1D(keys);
        using var vb = acc.Allocate1D(values);
        using var cb = acc.Allocate1D(cos);
        using var sb = acc.Allocate1D(sin);
        using var slotb = acc.Allocate1D(slots);
        using var kc = acc.Allocate1D(Enumerable.Repeat(ILGPU.Half.NaN, slotCount * kvDim).ToArray());
        using var vc = acc.Allocate1D(Enumerable.Repeat(ILGPU.Half.NaN, slotCount * kvDim).ToArray());
        k.RopeWriteKv(qb.View, kb.View, vb.View, cb.View, sb.View, slotb.View, kc.View, vc.View, tokens, new RopeKvShape(heads, kvHeads, headDim, headDim, 1, scale));
        acc.Synchronize();
        var r = Compare("rope-kv-write-f16", expectedQ, qb.GetAsArray1D(), 1e-5, 1e-5);
        if (!r.Passed) return r with { Detail = $"q: {r.Detail}" };
        // NOTE: one f16 ulp (2⁻¹¹ relative) where the device's f32 rotation and the reference's differ in the last bit, or
        // where ILGPU's CPU accelerator rounds to f16 in software (see KvCacheKernels.WriteF16)
        r = CompareNaN("rope-kv-write-f16", expectedK, Array.ConvertAll(kc.GetAsArray1D(), h => (float)h), 1e-3);
        if (!r.Passed) return r with { Detail = $"K cache: {r.Detail}" };
        r = CompareNaN("rope-kv-write-f16", expectedV, Array.ConvertAll(vc.GetAsArray1D(), h => (float)h), 1e-3);
        return r.Passed ? r : r with { Detail = $"V cache: {r.Detail}" };
    }

    /// <summary>Compare with NaN required where expected (slots no token writes).</summary>
    private static AttentionSelfCheck.Result CompareNaN(string name, float[] expected, float[] actual, double rtol)
    {
        for (int i = 0; i < expected.Length; i++)
            if (float.IsNaN(expected[i]) != float.IsNaN(actual[i]))
                return new AttentionSelfCheck.Result(name, "ilgpu-vs-reference", double.NaN, false, $"element {i}: expected {expected[i]}, got {actual[i]}");
        var e = Array.ConvertAll(expected, v => float.IsNaN(v) ? 0f : v);
        var a = Array.ConvertAll(actual, v => float.IsNaN(v) ? 0f : v);
        return Compare(name, e, a, 1e-6, rtol);
    }

    /// <summary>The gate/up products with SwiGLU in the epilogue against the reference products and SwiGLU.</summary>
    private static AttentionSelfCheck.Result MatMulGlu(Accelerator acc, LayerKernels k, Random rng, string name)
    {
        AttentionSelfCheck.Result? worst = null;
        foreach (var (rows, cols, batch) in MatMulShapes)
        {
            if (cols % 32 != 0) continue;
            var gate = Values(rng, rows * cols, 1f);
            var up = Values(rng, rows * cols, 1f);
            var x = Values(rng, batch * cols, 1f);
            bool f16 = name == "matmul-glu-f16";
            using var xb = acc.Allocate1D(x);
            using var yb = Poisoned(acc, batch * rows);
            float[] g, u;
            bool ran;
            if (f16)
            {
                var gh = Array.ConvertAll(gate, v => (ILGPU.Half)v);
                var uh = Array.ConvertAll(up, v => (ILGPU.Half)v);
                (g, u) = (Array.ConvertAll(gh, v => (float)v), Array.ConvertAll(uh, v => (float)v));
                using var gb = acc.Allocate1D(gh);
                using var ub = acc.Allocate1D(uh);
                ran = k.TryMatMulGlu(GluActivation.Silu, gb.View, ub.View, xb.View, yb.View, rows, cols, batch);
                acc.Synchronize();
            }
            else
            {
                var gq = ReferenceMatMul.QuantizeQ8_0(gate);
                var uq = ReferenceMatMul.QuantizeQ8_0(up);
                (g, u) = (ReferenceMatMul.DequantizeQ8_0(gq), ReferenceMatMul.DequantizeQ8_0(uq));
                using var gb = acc.Allocate1D(gq);
                using var ub = acc.Allocate1D(uq);
                ran = k.TryMatMulGlu(GluActivation.Silu, Inference.Loading.GgmlType.Q8_0, gb.View, ub.View, xb.View, yb.View, rows, cols, batch);
                acc.Synchronize();
            }
            if (!ran) return new AttentionSelfCheck.Result(name, "ilgpu-vs-reference", double.NaN, false, $"{rows}x{cols}: the fused kernel refused the shape");
            var gy = new float[batch * rows];
            var uy = new float[batch * rows];
            ReferenceMatMul.MatMul(g, x, gy, rows, cols);
            ReferenceMatMul.MatMul(u, x, uy, rows, cols);
            var expected = new float[batch * rows];
            ReferenceLayer.SwiGlu(gy, uy, expected);
            var r = Compare(name, expected, Read(acc, yb), 1e-3, 1e-4);
            if (!r.Passed) return r with { Detail = $"{rows}x{cols} batch {batch}: {r.Detail}" };
            if (worst is null || r.MaxAbsError > worst.MaxAbsError) worst = r;
        }
        return worst!;
    }

    private static MemoryBuffer1D<float, Stride1D.Dense> Poisoned(Accelerator acc, int length) =>
        acc.Allocate1D(Enumerable.Repeat(float.NaN, length).ToArray());

    private static float[] Read(Accelerator acc, MemoryBuffer1D<float, Stride1D.Dense> buffer)
    {
        acc.Synchronize();
        return buffer.GetAsArray1D();
    }

    private static AttentionSelfCheck.Result Compare(string name, float[] expected, float[] actual, double atol, double rtol)
    {
        double maxAbs = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double err = Math.Abs((double)actual[i] - expected[i]);
            if (!(err <= atol + rtol * Math.Abs(expected[i])))
                return new AttentionSelfCheck.Result(name, "ilgpu-vs-reference", err, false,
                    $"element {i}: expected {expected[i]}, got {actual[i]}");
            maxAbs = Math.Max(maxAbs, err);
        }
        return new AttentionSelfCheck.Result(name, "ilgpu-vs-reference", maxAbs, true, null);
    }

    private static float[] Values(Random rng, int count, float scale)
    {
        var a = new float[count];
        for (int i = 0; i < count; i++)
        {
            float x = (float)(rng.NextDouble() * 2 - 1);
            a[i] = (x == 0f ? 0.25f : x) * scale;
        }
        return a;
    }
}
