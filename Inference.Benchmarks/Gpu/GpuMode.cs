using System.Diagnostics;
using System.Globalization;
using System.Text;
using ILGPU;
using ILGPU.Runtime;
using Inference.Cuda;
using Inference.Cuda.Diagnostics;
using Inference.Kernels;
using Inference.Kernels.Attention;

namespace Inference.Benchmarks.Gpu;

/// <summary>
/// <c>gpu OUTDIR [--quick] [--no-e2e]</c>: on a CUDA machine, runs the attention checks (PTX vs ILGPU vs reference), the
/// decode-attention benchmark, the matrix-kernel benchmark (<see cref="MatMulBenchmark"/>), the tensor-core GEMM
/// benchmark (<see cref="TensorCoreGemmBenchmark"/>), its block-type forms against the slab path (<see cref="BlockGemmBenchmark"/>),
/// the flash prefill benchmark (<see cref="FlashPrefillBenchmark"/>) and the end-to-end model
/// check (<see cref="EndToEndCheck"/>), writing <c>device.txt</c>, <c>checks.tsv</c>, <c>bench.tsv</c>,
/// <c>matmul.tsv</c>, <c>gemm.tsv</c>, <c>gemm_blocks.tsv</c>, <c>flash.tsv</c>, <c>e2e.tsv</c> and <c>summary.md</c>.
/// Exit status: 0 all checks passed, 1 a check failed, 2 no CUDA device.
/// </summary>
public static class GpuMode
{
    // NOTE: a Llama-3-8B-like layer: 32 query heads, 8 KV heads, head dim 128, f16 KV, 16-token blocks.
    private const int Heads = 32, KvHeads = 8, HeadDim = 128, BlockSize = 16;

    public static int Run(string[] args)
    {
        if (args.Length < 1)
        {
            Console.Error.WriteLine("usage: Inference.Benchmarks gpu OUTDIR [--quick] [--no-e2e]");
            return 2;
        }
        var outDir = Directory.CreateDirectory(args[0]).FullName;
        bool quick = args.Contains("--quick");
        var summary = new StringBuilder();
        var probe = CudaBackend.Probe();
        File.WriteAllText(Path.Combine(outDir, "device.txt"), probe + Environment.NewLine);
        if (!probe.IsAvailable)
        {
            var line = $"no CUDA device: {probe.Reason}";
            Console.WriteLine(line);
            File.WriteAllText(Path.Combine(outDir, "summary.md"), line + Environment.NewLine);
            return 2;
        }

        using var backend = CudaBackend.Create();
        var acc = backend.Accelerator;
        summary.AppendLine(CultureInfo.InvariantCulture, $"# GPU device check\n\ndevice: {acc.Name}, {acc.Architecture}, " +
            $"{acc.MemorySize / (1L << 30)} GiB, driver {acc.DriverVersion}\n");

        bool allPassed = RunChecks(backend, outDir, summary);
        double copyGbs = double.NaN;
        allPassed &= Guarded("benchmark", () =>
        {
            copyGbs = MeasureCopy(acc, 1L << 30);
            RunBenchmark(backend, outDir, summary, quick, copyGbs);
            return true;
        }, summary);
        File.WriteAllText(Path.Combine(outDir, "summary.md"), summary.ToString());
        allPassed &= Guarded("matmul benchmark", () => MatMulBenchmark.Run(acc, outDir, summary, copyGbs), summary);
        File.WriteAllText(Path.Combine(outDir, "summary.md"), summary.ToString());
        allPassed &= Guarded("tensor-core GEMM benchmark", () => TensorCoreGemmBenchmark.Run(acc, outDir, summary, quick), summary);
        File.WriteAllText(Path.Combine(outDir, "summary.md"), summary.ToString());
        allPassed &= Guarded("block-type tensor-core GEMM benchmark", () => BlockGemmBenchmark.Run(acc, outDir, summary, quick), summary);
        File.WriteAllText(Path.Combine(outDir, "summary.md"), summary.ToString());
        allPassed &= Guarded("flash prefill benchmark", () => FlashPrefillBenchmark.Run(acc, outDir, summary, quick), summary);
        File.WriteAllText(Path.Combine(outDir, "summary.md"), summary.ToString());
        allPassed &= Stories260KCheck.Run(summary);
        File.WriteAllText(Path.Combine(outDir, "summary.md"), summary.ToString());
        if (!args.Contains("--no-e2e"))
        {
            summary.AppendLine("## End to end: synthetic GQA model, GPU engine vs CPU engine").AppendLine();
            allPassed &= EndToEndCheck.Run(outDir, summary, quick);
        }

        File.WriteAllText(Path.Combine(outDir, "summary.md"), summary.ToString());
        Console.WriteLine(summary.ToString());
        return allPassed ? 0 : 1;
    }

    private static bool RunChecks(CudaBackend backend, string outDir, StringBuilder summary)
    {
        var tsv = new StringBuilder("case\tkernel\tpassed\tmax_abs_error\tdetail\n");
        int passed = 0, failed = 0;
        foreach (var c in AttentionSelfCheck.StandardCases)
        {
            IReadOnlyList<AttentionSelfCheck.Result> results;
            try
            {
                results = AttentionSelfCheck.Run(backend, c);
            }
            catch (Exception e)
            {
                results = [new AttentionSelfCheck.Result(c.Name, "exception", double.NaN, false, e.GetType().Name + ": " + e.Message)];
            }
            foreach (var r in results)
            {
                tsv.Append(CultureInfo.InvariantCulture, $"{r.Case}\t{r.Kernel}\t{r.Passed}\t{r.MaxAbsError:E3}\t{r.Detail}\n");
                if (r.Passed) passed++; else failed++;
                Console.WriteLine($"{(r.Passed ? "PASS" : "FAIL")} {r.Case} {r.Kernel} max_abs={r.MaxAbsError:E3} {r.Detail}");
            }
        }
        foreach (var name in LayerSelfCheck.Names)
        {
            AttentionSelfCheck.Result r;
            try
            {
                r = LayerSelfCheck.Run(backend, name);
            }
            catch (Exception e)
            {
                r = new AttentionSelfCheck.Result(name, "exception", double.NaN, false, e.GetType().Name + ": " + e.Message);
            }
            tsv.Append(CultureInfo.InvariantCulture, $"{r.Case}\t{r.Kernel}\t{r.Passed}\t{r.MaxAbsError:E3}\t{r.Detail}\n");
            if (r.Passed) passed++; else failed++;
            Console.WriteLine($"{(r.Passed ? "PASS" : "FAIL")} {r.Case} {r.Kernel} max_abs={r.MaxAbsError:E3} {r.Detail}");
        }
        File.WriteAllText(Path.Combine(outDir, "checks.tsv"), tsv.ToString());
        summary.AppendLine(CultureInfo.InvariantCulture, $"checks: {passed} passed, {failed} failed (see checks.tsv)\n");
        return failed == 0;
    }

    private static void RunBenchmark(CudaBackend backend, string outDir, StringBuilder summary, bool quick, double copyGbs)
    {
        var acc = backend.Accelerator;
        int[] batches = [1, 16, 64];
        int[] contexts = quick ? [1024, 4096] : [1024, 4096, 16384];
        int maxBlocks = contexts.Max() / BlockSize;
        long blockCount = (long)batches.Max() * maxBlocks;
        var shape = new AttentionShape(Heads, KvHeads, HeadDim, BlockSize, maxBlocks);

        // K/V filled with 0x3C3C (f16 ≈ 1.06): values do not matter for bandwidth, only that they are finite.
        using var k = acc.Allocate1D<ILGPU.Half>(blockCount * shape.BlockElements);
        using var v = acc.Allocate1D<ILGPU.Half>(blockCount * shape.BlockElements);
        k.View.MemSet((byte)0x3C);
        v.View.MemSet((byte)0x3C);
        using var q = acc.Allocate1D<float>((long)batches.Max() * Heads * HeadDim);
        q.View.MemSet((byte)0x3C);
        using var output = acc.Allocate1D<float>(q.Length);

        var tsv = new StringBuilder("kernel\tbatch\tcontext\tus_per_call\tkv_bytes\tGB_per_s\tfraction_of_copy\n");
        summary.AppendLine(CultureInfo.InvariantCulture,
            $"device-to-device copy (1 GiB, read + write counted): {copyGbs:F0} GB/s\n");
        summary.AppendLine("| kernel | batch | context | µs/call | KV GB/s | of copy |");
        summary.AppendLine("|---|---|---|---|---|---|");

        using var ptx = new PtxPagedDecodeAttention<ILGPU.Half>(acc, shape);   // automatic partition size
        using var ptx256 = new PtxPagedDecodeAttention<ILGPU.Half>(acc, shape, 256);   // the earlier fixed minimum
        using var ilgpu = new PagedDecodeAttention<ILGPU.Half, F16Element>(acc, shape, 512);
        var rng = new Random(7);
        foreach (var batch in batches)
            foreach (var context in contexts)
            {
                // each sequence gets its own shuffled set of physical blocks
                int blocksPerSeq = context / BlockSize;
                var lengths = Enumerable.Repeat(context, batch).ToArray();
                using var paged = new PagedBatch(acc, lengths, Enumerable.Repeat(1, batch).ToArray(), BlockSize, maxBlocks,
                    PagedBatch.ShuffledBlocks(rng, batch * blocksPerSeq));
                var tableBuf = paged.TablesView;
                var lens = paged.ContextsView;
                long kvBytes = 2L * batch * context * KvHeads * HeadDim * 2;   // K and V, f16

                var qv = q.View.SubView(0, (long)batch * Heads * HeadDim);
                var ov = output.View.SubView(0, qv.Length);
                foreach (var (name, run) in new (string, Action)[]
                {
                    ("ptx", () => ptx.Run(qv, k.View, v.View, tableBuf, lens, batch, context, ov)),
                    ("ptx-p256", () => ptx256.Run(qv, k.View, v.View, tableBuf, lens, batch, context, ov)),
                    ("ilgpu", () => ilgpu.Run(qv, k.View, v.View, tableBuf, lens, batch, context, ov)),
                })
                {
                    double seconds = Time(acc, run);
                    double gbs = kvBytes / seconds / 1e9;
                    tsv.Append(CultureInfo.InvariantCulture,
                        $"{name}\t{batch}\t{context}\t{seconds * 1e6:F1}\t{kvBytes}\t{gbs:F1}\t{gbs / copyGbs:F3}\n");
                    summary.AppendLine(CultureInfo.InvariantCulture,
                        $"| {name} | {batch} | {context} | {seconds * 1e6:F1} | {gbs:F0} | {gbs / copyGbs:P0} |");
                }
            }
        File.WriteAllText(Path.Combine(outDir, "bench.tsv"), tsv.ToString());
    }

    /// <summary>Mean seconds per call: warm-up, then enough calls for ≥ 200 ms.</summary>
    internal static double Time(Accelerator acc, Action run)
    {
        for (int i = 0; i < 3; i++) run();
        acc.Synchronize();
        int iterations = 1;
        while (true)
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < iterations; i++) run();
            acc.Synchronize();
            if (sw.Elapsed.TotalSeconds >= 0.2 || iterations >= 1 << 16) return sw.Elapsed.TotalSeconds / iterations;
            iterations *= 4;
        }
    }

    /// <summary>Runs one step of the check; an exception fails it with a line in the summary instead of ending the run.</summary>
    private static bool Guarded(string label, Func<bool> step, StringBuilder summary)
    {
        try
        {
            return step();
        }
        catch (Exception e)
        {
            summary.AppendLine(CultureInfo.InvariantCulture, $"{label}: **exception** {RunnerFiles.OneLine(e)}\n");
            Console.WriteLine($"{label}: {e}");
            return false;
        }
    }

    /// <summary>Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written.</summary>
    private static double MeasureCopy(Accelerator acc, long bytes)
    {
        using var src = acc.Allocate1D<byte>(bytes);
        using var dst = acc.Allocate1D<byte>(bytes);
        src.View.MemSet((byte)1);
        double seconds = Time(acc, () => src.View.CopyTo(dst.View));
        return 2.0 * bytes / seconds / 1e9;
    }
}
