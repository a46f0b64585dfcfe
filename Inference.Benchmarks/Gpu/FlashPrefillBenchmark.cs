using System.Globalization;
using System.Text;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Cuda;
using Inference.Cuda.Diagnostics;
using Inference.Kernels;

namespace Inference.Benchmarks.Gpu;

/// <summary>
/// The flash prefill attention (<c>Ptx/flash_prefill_f16.ptx</c>) on a GPU: one layer of the 0.85B model's attention
/// (32 query heads, 8 KV heads, head dim 64, f16 KV, block size 16) for 64 prompts of 512 tokens (--quick: 16), next
/// to the per-token PTX prefill kernel on the same inputs. Reports µs per layer, prompt tokens per second of one layer's
/// attention, TFLOP/s (4 · heads · D per visible query-key pair) and the largest difference between the two kernels'
/// outputs (relative to the largest output; the flash kernel rounds queries and probabilities to f16). Writes
/// <c>flash.tsv</c> and a table in the summary.
/// </summary>
public static class FlashPrefillBenchmark
{
    private const int Heads = 32, KvHeads = 8, HeadDim = 64, BlockSize = 16, PromptLength = 512;

    /// <summary>Largest accepted difference between the kernels, relative to the largest output.</summary>
    private const double Tolerance = 5e-3;

    /// <summary>Runs the benchmark; returns whether the two kernels agree within <see cref="Tolerance"/>.</summary>
    /// <param name="acc">The CUDA accelerator.</param>
    /// <param name="outDir">Where <c>flash.tsv</c> goes.</param>
    /// <param name="summary">Gets the table.</param>
    /// <param name="quick">16 prompts instead of 64.</param>
    public static bool Run(CudaAccelerator acc, string outDir, StringBuilder summary, bool quick)
    {
        ArgumentNullException.ThrowIfNull(acc);
        ArgumentNullException.ThrowIfNull(summary);
        int seqs = quick ? 16 : 64, tokens = seqs * PromptLength, blocksPerSeq = PromptLength / BlockSize;
        var shape = new AttentionShape(Heads, KvHeads, HeadDim, BlockSize, blocksPerSeq);
        var rng = new Random(26);
        long kvLength = (long)seqs * PromptLength * KvHeads * HeadDim;
        var kHost = new ushort[kvLength];
        var vHost = new ushort[kvLength];
        for (long i = 0; i < kvLength; i++)
        {
            kHost[i] = BitConverter.HalfToUInt16Bits((System.Half)(rng.NextSingle() * 2f - 1f));
            vHost[i] = BitConverter.HalfToUInt16Bits((System.Half)(rng.NextSingle() * 2f - 1f));
        }
        var qHost = new float[(long)tokens * Heads * HeadDim];
        for (long i = 0; i < qHost.Length; i++) qHost[i] = rng.NextSingle() * 4f - 2f;
        // blocks of each sequence scattered over the pool: sequence s, logical block b -> physical block b * seqs + s
        var blockIds = new int[seqs * blocksPerSeq];
        for (int s = 0; s < seqs; s++)
            for (int b = 0; b < blocksPerSeq; b++) blockIds[s * blocksPerSeq + b] = b * seqs + s;
        var prompts = Enumerable.Repeat(PromptLength, seqs).ToArray();
        using var batch = new PagedBatch(acc, prompts, prompts, BlockSize, blocksPerSeq, blockIds);
        using var k = acc.Allocate1D(kHost);
        using var v = acc.Allocate1D(vHost);
        using var q = acc.Allocate1D(qHost);
        using var outFlash = acc.Allocate1D<float>(qHost.Length);
        using var outTokens = acc.Allocate1D<float>(qHost.Length);
        using var flash = new PtxFlashPrefillAttention(acc, shape);
        using var perToken = new PtxPagedPrefillAttention<ILGPU.Half>(acc, shape);
        var kView = ((ArrayView<ushort>)k.View).Cast<ILGPU.Half>();
        var vView = ((ArrayView<ushort>)v.View).Cast<ILGPU.Half>();

        void RunFlash() => flash.Run(q.View, kView, vView, batch.TablesView, batch.StartsView, batch.ContextsView, seqs, PromptLength, outFlash.View);
        void RunPerToken() => perToken.Run(q.View, kView, vView, batch.TablesView, batch.TokenSeqsView, batch.PositionsView, tokens, PromptLength, outTokens.View);

        outFlash.MemSetToZero();
        outTokens.MemSetToZero();
        RunFlash();
        RunPerToken();
        acc.Synchronize();
        double diff = MatMulBenchmark.MaxRelativeDifference(outFlash.GetAsArray1D(), outTokens.GetAsArray1D());
        bool ok = diff <= Tolerance;
        double tFlash = GpuMode.Time(acc, RunFlash), tTokens = GpuMode.Time(acc, RunPerToken);
        double pairs = (double)seqs * PromptLength * (PromptLength + 1) / 2;
        double flops = 4.0 * Heads * HeadDim * pairs;
        string Row(string name, double t) => string.Create(CultureInfo.InvariantCulture,
            $"{name}\t{seqs}\t{PromptLength}\t{t * 1e6:F1}\t{tokens / t:F0}\t{flops / t / 1e12:F1}\t{diff:E3}\n");
        File.WriteAllText(Path.Combine(outDir, "flash.tsv"),
            "kernel\tprompts\tprompt_tokens\tus_per_layer\tprompt_tokens_per_s_per_layer\tTFLOPs\tmax_rel_diff\n" + Row("flash", tFlash) + Row("per-token", tTokens));
        summary.AppendLine(CultureInfo.InvariantCulture,
            $"## Prefill attention (one layer: {Heads}/{KvHeads} heads, head dim {HeadDim}, f16 KV, block size {BlockSize}), {seqs} × {PromptLength}-token prompts\n");
        summary.AppendLine("| kernel | µs per layer | prompt tokens/s (one layer) | TFLOP/s | max rel diff flash vs per-token |");
        summary.AppendLine("|---|---|---|---|---|");
        string diffText = diff.ToString("E1", CultureInfo.InvariantCulture) + (ok ? "" : " **FAIL**");
        summary.AppendLine(CultureInfo.InvariantCulture, $"| flash (mma.sync, 64-row query tiles) | {tFlash * 1e6:F1} | {tokens / tFlash:N0} | {flops / tFlash / 1e12:F1} | {diffText} |");
        summary.AppendLine(CultureInfo.InvariantCulture, $"| per-token PTX | {tTokens * 1e6:F1} | {tokens / tTokens:N0} | {flops / tTokens / 1e12:F1} | |");
        summary.AppendLine();
        Console.WriteLine($"flash prefill {seqs}x{PromptLength}: {tFlash * 1e6:F1} us per layer; per-token kernel {tTokens * 1e6:F1} us; diff {diff:E2}");
        return ok;
    }
}
