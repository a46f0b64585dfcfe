using System.Diagnostics;
using System.Globalization;
using System.Text;
using Inference.Cuda;
using Inference.Engine;
using Inference.Sampling;

namespace Inference.Benchmarks.Gpu;

/// <summary>
/// The decode-graph step of the end-to-end check: the same model on two GPU engines, eager
/// (<see cref="CudaOptions.EnforceEager"/> = true) and with decode steps captured as CUDA graphs (false); greedy decoding
/// of one request and of 64 concurrent ones on each, the tokens compared request by request, decode tokens/s of both.
/// Writes <c>decode_graph_*</c> lines (<c>decode_graph_moe_*</c> for the mixture-of-experts model) to <c>e2e.tsv</c>
/// and a table to the summary.
/// </summary>
/// <remarks>
/// NOTE: a captured step splits attention over <see cref="CudaOptions.MaxSeqLenToCapture"/> positions (capped by the
/// context), the eager step over the batch's longest context, so the PTX kernel merges other partitions and the logits
/// may differ in the last bits: the tokens are reported, and only an exception or a failed capture fails the step.
/// </remarks>
public static class DecodeGraphCheck
{
    // label: the model in the summary's heading; step: the prefix of the tsv lines' step names.
    public static bool Run(string model, string label, string step, string promptText, EngineOptions engine, StringBuilder tsv, StringBuilder summary, bool quick)
    {
        int tokens = quick ? 32 : 128;
        var greedy = SamplingOptions.Greedy with { MaxTokens = tokens, EndOfSequence = EndOfSequenceHandling.Ignore };
        var options = engine with { MaxNumSeqs = 64 };
        int[][] prompts = [];
        var results = new List<(string Name, double One, double SixtyFour, int[] Single, int[][] Batch, string Device)>();
        bool passed = true;
        foreach (bool eager in new[] { true, false })
        {
            string name = eager ? "eager" : "CUDA graphs";
            var gpu = InferenceEngine.LoadAsync(model, options.UseCuda(new CudaOptions { Attention = CudaAttentionKernels.Ptx, EnforceEager = eager })).GetAwaiter().GetResult();
            try
            {
                var prompt = gpu.Tokenize(promptText);
                if (prompts.Length == 0) prompts = [.. Enumerable.Range(0, 64).Select(i => prompt.Take(4 + i % (prompt.Length - 3)).ToArray())];
                gpu.CompleteAsync(prompt, greedy with { MaxTokens = 8 }).GetAwaiter().GetResult();   // warm-up (and the first captures)
                var single = gpu.CompleteAsync(prompt, greedy).GetAwaiter().GetResult();
                var sw = Stopwatch.StartNew();
                var all = Task.WhenAll(prompts.Select(p => gpu.CompleteAsync(p, greedy))).GetAwaiter().GetResult();
                double seconds = sw.Elapsed.TotalSeconds;
                long generated = all.Sum(c => (long)c.TokenIds.Count);
                double one = single.Metrics.DecodeTokensPerSecond, sixtyFour = generated / seconds;
                string device = gpu.DeviceName;
                if (!eager && device.Contains("capture failed", StringComparison.Ordinal)) passed = false;
                tsv.Append(CultureInfo.InvariantCulture, $"{step}_batch1\t{name}\t{one:F1}\ttokens/s\tTPOT {single.Metrics.TimePerOutputToken.TotalMilliseconds:F3} ms; {device}\n");
                tsv.Append(CultureInfo.InvariantCulture, $"{step}_batch64\t{name}\t{sixtyFour:F1}\ttokens/s\t{generated} tokens in {seconds:F2} s, 64 requests, prefill included\n");
                results.Add((name, one, sixtyFour, [.. single.TokenIds], [.. all.Select(c => c.TokenIds.ToArray())], device));
                Console.WriteLine($"decode graphs, {label}, {name}: {one:F1} tok/s (1), {sixtyFour:F1} tok/s (64); {device}");
            }
            catch (Exception e)
            {
                passed = false;
                RunnerFiles.Failed(tsv, summary, $"decode graphs, {label}, {name}", e);
            }
            finally
            {
                gpu.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }
        if (results.Count != 2) return false;
        var (e0, g0) = (results[0], results[1]);
        bool singleSame = e0.Single.SequenceEqual(g0.Single);
        int batchSame = 0;
        for (int i = 0; i < prompts.Length; i++) if (e0.Batch[i].SequenceEqual(g0.Batch[i])) batchSame++;
        tsv.Append(CultureInfo.InvariantCulture, $"{step}_greedy_equal\tbatch 1\t{(singleSame ? 1 : 0)}\t\t{tokens} greedy tokens, graphs vs eager\n");
        tsv.Append(CultureInfo.InvariantCulture, $"{step}_greedy_equal\tbatch 64\t{batchSame}\trequests\tof 64 with all {tokens} greedy tokens equal, graphs vs eager\n");
        summary.AppendLine(CultureInfo.InvariantCulture, $"Decode steps as CUDA graphs, {label} (PTX attention, row kernels; {g0.Device}):\n");
        summary.AppendLine("| decode | tok/s, 1 request | tok/s, 64 requests | greedy tokens = eager |");
        summary.AppendLine("|---|---|---|---|");
        summary.AppendLine(CultureInfo.InvariantCulture, $"| eager | {e0.One:F1} | {e0.SixtyFour:F1} | |");
        summary.AppendLine(CultureInfo.InvariantCulture, $"| CUDA graphs | {g0.One:F1} | {g0.SixtyFour:F1} | batch 1: {(singleSame ? "yes" : "no")}, batch 64: {batchSame} of 64 requests {(passed ? "" : "**capture FAILED**")} |\n");
        return passed;
    }
}
