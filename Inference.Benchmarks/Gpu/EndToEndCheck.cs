using Inference.Kernels.Reference;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Inference.Cuda;
using Inference.Engine;
using Inference.Loading;
using Inference.Quantization;
using Inference.Sampling;

namespace Inference.Benchmarks.Gpu;

/// <summary>
/// The end-to-end step of <c>gpu OUTDIR</c>: writes a random-weight 0.85B-parameter GQA model on this machine (dim 2048,
/// 16 layers, 32 heads, 8 KV heads, ffn 5632, the 32,000-token llama SentencePiece vocabulary), then compares the GPU
/// engine's last-position logits with the CPU engine's (relative L2, target &lt; 5e-3) for PTX and ILGPU attention (F16
/// products of 16+ rows on the tensor-core kernel) and for PTX attention with every product on the row kernels, and
/// measures GPU decode tokens/s for one request and for 16 concurrent requests; then the same for a Q4_K_M copy of the
/// model quantized on this machine (<see cref="ModelQuantizer"/>: Q4_K, Q6_K for V, FFN down and the output), whose
/// weights stay in their GGUF types on the device; for a Q8_0 copy and the Q4_K_M copy, prefill of 64 × 512-token prompts
/// with <see cref="CudaOptions.QuantizedTensorCoreMatMul"/> on and off; and decode captured as CUDA graphs against eager
/// decode on the F16 model (<see cref="DecodeGraphCheck"/>). Writes <c>e2e.tsv</c>.
/// </summary>
/// <remarks>
/// NOTE: F16 weights: the CPU path quantizes activations to Q8 for Q8_0 weights (as ggml does), the GPU keeps them in
/// f32, so a Q8_0 comparison measures that rounding (≈ 1e-2) rather than the GPU path.
/// </remarks>
public static class EndToEndCheck
{
    private const string Prompt = "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who";

    public static bool Run(string outDir, StringBuilder summary, bool quick)
    {
        var tsv = new StringBuilder("step\tattention\tvalue\tunit\tdetail\n");
        string work = Path.Combine(Path.GetTempPath(), "inference-gpu-e2e-" + Environment.ProcessId);
        Directory.CreateDirectory(work);
        bool passed = true;
        try
        {
            string donor = FindDonor();
            string model = Path.Combine(work, "synthetic-1b-f16.gguf");
            var options = new SyntheticModelOptions
            {
                TokenizerDonorPath = donor, Dimension = 2048, LayerCount = quick ? 4 : 16, HeadCount = 32, KvHeadCount = 8,
                FeedForwardLength = 5632, TensorType = GgmlType.F16, ContextLength = 2048, Name = "synthetic-1b",
                WeightScale = 0.02f,
            };
            var sw = Stopwatch.StartNew();
            SyntheticModel.Write(model, options);
            Console.WriteLine($"e2e: wrote {model} ({new FileInfo(model).Length / 1e9:F2} GB) in {sw.Elapsed.TotalSeconds:F0} s");

            var engine = new EngineOptions { ContextLength = 1024, MaxNumSeqs = 16 };
            float[] cpuLogits;
            int[] cpuTokens;
            var greedy = SamplingOptions.Greedy with { MaxTokens = 8, EndOfSequence = EndOfSequenceHandling.Ignore };
            using (var _ = new Timing("cpu engine"))
            {
                var cpu = InferenceEngine.LoadAsync(model, engine with { Device = Device.Cpu }).GetAwaiter().GetResult();
                try
                {
                    var tokens = cpu.Tokenize(Prompt);
                    cpuLogits = cpu.GetLogitsAsync(tokens).GetAwaiter().GetResult();
                    cpuTokens = [.. cpu.CompleteAsync(tokens, greedy).GetAwaiter().GetResult().TokenIds];
                    summary.AppendLine(CultureInfo.InvariantCulture, $"e2e model: {cpu.ParameterCount / 1e9:F2}B parameters, F16, {cpu.Config.LayerCount} layers, prompt {tokens.Length} tokens; CPU: {cpu.DeviceName}\n");
                }
                finally
                {
                    cpu.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }

            summary.AppendLine("| attention | logits rel. L2 vs CPU | greedy 8 tokens = CPU | decode tok/s, 1 request | decode tok/s, 16 requests |");
            summary.AppendLine("|---|---|---|---|---|");
            foreach (var (attention, tensorCores) in new[] { (CudaAttentionKernels.Ptx, true), (CudaAttentionKernels.Ilgpu, true), (CudaAttentionKernels.Ptx, false) })
            {
                var gpu = InferenceEngine.LoadAsync(model, engine.UseCuda(new CudaOptions { Attention = attention, TensorCoreMatMul = tensorCores })).GetAwaiter().GetResult();
                try
                {
                    string name = tensorCores ? attention.ToString() : $"{attention}, row kernels only";
                    var tokens = gpu.Tokenize(Prompt);
                    var logits = gpu.GetLogitsAsync(tokens).GetAwaiter().GetResult();
                    double l2 = ReferenceCompare.RelativeL2(logits, cpuLogits);
                    bool ok = l2 < 5e-3;
                    passed &= ok;
                    var gpuTokens = gpu.CompleteAsync(tokens, greedy).GetAwaiter().GetResult().TokenIds;
                    bool same = gpuTokens.SequenceEqual(cpuTokens);
                    tsv.Append(CultureInfo.InvariantCulture, $"logits_rel_l2\t{name}\t{l2:E3}\t\t{(ok ? "pass" : "FAIL")} (target < 5e-3); {gpu.DeviceName}\n");
                    tsv.Append(CultureInfo.InvariantCulture, $"greedy8_equal\t{name}\t{(same ? 1 : 0)}\t\t{string.Join(",", gpuTokens)} vs {string.Join(",", cpuTokens)}\n");

                    var (tps1, tps16) = MeasureDecode(gpu, tokens, name, quick, tsv);
                    summary.AppendLine(CultureInfo.InvariantCulture, $"| {name} | {l2:E2} {(ok ? "" : "**FAIL**")} | {(same ? "yes" : "no")} | {tps1:F1} | {tps16:F1} |");
                    Console.WriteLine($"e2e {name}: rel L2 {l2:E3}, greedy equal {same}, decode {tps1:F1} tok/s (1), {tps16:F1} tok/s (16)");
                }
                catch (Exception e)
                {
                    passed = false;
                    tsv.Append(CultureInfo.InvariantCulture, $"exception\t{attention}\t\t\t{RunnerFiles.OneLine(e)}\n");
                    summary.AppendLine(CultureInfo.InvariantCulture, $"| {attention} | **exception**: {RunnerFiles.OneLine(e)} | | | |");
                    Console.WriteLine($"e2e {attention}: {e}");
                }
                finally
                {
                    gpu.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }
            summary.AppendLine();
            using (var _ = new Timing("decode graphs"))
                passed &= DecodeGraphCheck.Run(model, "0.85B F16", "decode_graph", Prompt, engine, tsv, summary, quick);
            string moe = Path.Combine(work, "synthetic-moe-f16.gguf");
            SyntheticModel.Write(moe, new SyntheticModelOptions
            {
                Architecture = "qwen3moe", TokenizerDonorPath = donor, Dimension = 1024, LayerCount = quick ? 2 : 8, HeadCount = 16,
                KvHeadCount = 4, FeedForwardLength = 2816, ExpertCount = 8, ExpertUsedCount = 2, ExpertFeedForwardLength = 704,
                TensorType = GgmlType.F16, ContextLength = 2048, Name = "synthetic-moe", WeightScale = 0.02f,
            });
            using (var _ = new Timing("decode graphs, MoE"))
                passed &= DecodeGraphCheck.Run(moe, "qwen3moe F16, 8 experts, top 2", "decode_graph_moe", Prompt, engine, tsv, summary, quick);
            File.Delete(moe);
            string q8 = Path.Combine(work, "synthetic-1b-q8_0.gguf");
            ModelQuantizer.QuantizeAsync(model, q8, QuantizationPreset.Q8_0).GetAwaiter().GetResult();
            passed &= MeasurePrefill(q8, "Q8_0", engine, greedy, tsv, summary, quick);
            File.Delete(q8);
            passed &= RunQ4_K_M(model, work, engine, greedy, tsv, summary, quick);
        }
        catch (Exception e)
        {
            passed = false;
            RunnerFiles.Failed(tsv, summary, "e2e", e);
        }
        finally
        {
            File.WriteAllText(Path.Combine(outDir, "e2e.tsv"), tsv.ToString());
            Directory.Delete(work, recursive: true);
        }
        return passed;
    }

    /// <summary>
    /// The Q4_K_M copy: GPU (PTX attention, weights kept as Q4_K / Q6_K blocks) against the CPU engine on the same file.
    /// NOTE: the CPU engine quantizes activations to Q8_K for K-quant weights (as ggml does), the GPU keeps them in f32: the
    /// logits differ by that rounding (target &lt; 8e-2, the bound of the CPU-accelerator tests, which measure 2.8e-2 to
    /// 5.3e-2 on a small random model), and the greedy tokens are reported, not required.
    /// </summary>
    private static bool RunQ4_K_M(string f16Model, string work, EngineOptions engine, SamplingOptions greedy, StringBuilder tsv, StringBuilder summary, bool quick)
    {
        const string name = "Q4_K_M, Ptx";
        string model = Path.Combine(work, "synthetic-1b-q4_k_m.gguf");
        var sw = Stopwatch.StartNew();
        ModelQuantizer.QuantizeAsync(f16Model, model, QuantizationPreset.Q4_K_M).GetAwaiter().GetResult();
        Console.WriteLine($"e2e: quantized {model} ({new FileInfo(model).Length / 1e9:F2} GB) in {sw.Elapsed.TotalSeconds:F0} s");
        File.Delete(f16Model);   // NOTE: frees the disk the F16 copy took
        float[] cpuLogits;
        int[] cpuTokens;
        using (var _ = new Timing("cpu engine, Q4_K_M"))
        {
            var cpu = InferenceEngine.LoadAsync(model, engine with { Device = Device.Cpu }).GetAwaiter().GetResult();
            try
            {
                var tokens = cpu.Tokenize(Prompt);
                cpuLogits = cpu.GetLogitsAsync(tokens).GetAwaiter().GetResult();
                cpuTokens = [.. cpu.CompleteAsync(tokens, greedy).GetAwaiter().GetResult().TokenIds];
            }
            finally
            {
                cpu.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }
        InferenceEngine? gpu = InferenceEngine.LoadAsync(model, engine.UseCuda(new CudaOptions { Attention = CudaAttentionKernels.Ptx })).GetAwaiter().GetResult();
        try
        {
            var tokens = gpu.Tokenize(Prompt);
            double l2 = ReferenceCompare.RelativeL2(gpu.GetLogitsAsync(tokens).GetAwaiter().GetResult(), cpuLogits);
            bool ok = l2 < 8e-2;
            var gpuTokens = gpu.CompleteAsync(tokens, greedy).GetAwaiter().GetResult().TokenIds;
            bool same = gpuTokens.SequenceEqual(cpuTokens);
            tsv.Append(CultureInfo.InvariantCulture, $"logits_rel_l2\t{name}\t{l2:E3}\t\t{(ok ? "pass" : "FAIL")} (target < 8e-2, CPU rounds activations to Q8_K); {new FileInfo(model).Length} bytes\n");
            tsv.Append(CultureInfo.InvariantCulture, $"greedy8_equal\t{name}\t{(same ? 1 : 0)}\t\t{string.Join(",", gpuTokens)} vs {string.Join(",", cpuTokens)}\n");
            var (tps1, tps16) = MeasureDecode(gpu, tokens, name, quick, tsv);
            summary.AppendLine("| Q4_K_M copy | logits rel. L2 vs CPU (target < 8e-2) | greedy 8 tokens = CPU | decode tok/s, 1 request | decode tok/s, 16 requests |");
            summary.AppendLine("|---|---|---|---|---|");
            summary.AppendLine(CultureInfo.InvariantCulture, $"| {name} | {l2:E2} {(ok ? "" : "**FAIL**")} | {(same ? "yes" : "no")} | {tps1:F1} | {tps16:F1} |\n");
            Console.WriteLine($"e2e {name}: rel L2 {l2:E3}, greedy equal {same}, decode {tps1:F1} tok/s (1), {tps16:F1} tok/s (16); {gpu.DeviceName}");
            gpu.DisposeAsync().AsTask().GetAwaiter().GetResult();
            gpu = null;
            return MeasurePrefill(model, "Q4_K_M", engine, greedy, tsv, summary, quick) && ok;
        }
        catch (Exception e)
        {
            RunnerFiles.Failed(tsv, summary, name, e);
            return false;
        }
        finally
        {
            gpu?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    /// <summary>
    /// Prefill through the engine of 64 prompts of 512 random tokens (--quick: 16), one greedy token each, with
    /// <see cref="CudaOptions.QuantizedTensorCoreMatMul"/> on (weights widened to f16 for the tensor-core kernel, inside it
    /// for Q8_0, Q4_K, Q6_K and the other types of <c>PtxTensorCoreGemm.WidensInKernel</c>, slab by slab for the rest) and off (the block row kernels): prompt tokens/s for each, whether the 64 first tokens agree between the two,
    /// and the first prompt's 8 greedy tokens against the CPU engine's (reported, not required: the CPU rounds activations
    /// to Q8 for these weights). Fails only on an exception.
    /// </summary>
    private static bool MeasurePrefill(string model, string label, EngineOptions engine, SamplingOptions greedy, StringBuilder tsv, StringBuilder summary, bool quick)
    {
        const int promptLength = 512, vocabulary = 32000;
        var rng = new Random(512);
        var prompts = new int[quick ? 16 : 64][];
        for (int p = 0; p < prompts.Length; p++)
        {
            prompts[p] = new int[promptLength];
            for (int i = 0; i < promptLength; i++) prompts[p][i] = rng.Next(3, vocabulary);
        }
        var warmUp = prompts[0].Reverse().ToArray();   // not a prefix of any timed prompt
        int[] cpuTokens;
        var cpu = InferenceEngine.LoadAsync(model, engine with { Device = Device.Cpu }).GetAwaiter().GetResult();
        try { cpuTokens = [.. cpu.CompleteAsync(prompts[0], greedy).GetAwaiter().GetResult().TokenIds]; }
        finally { cpu.DisposeAsync().AsTask().GetAwaiter().GetResult(); }

        var firstTokens = new int[2][];
        var tps = new double[2];
        var same = new bool[2];
        var one = SamplingOptions.Greedy with { MaxTokens = 1, EndOfSequence = EndOfSequenceHandling.Ignore };
        foreach (bool on in new[] { true, false })
        {
            string name = $"{label} prefill, quantized tensor cores {(on ? "on" : "off")}";
            int slot = on ? 1 : 0;
            InferenceEngine? gpu = null;
            try
            {
                gpu = InferenceEngine.LoadAsync(model, (engine with { MaxNumSeqs = prompts.Length })
                    .UseCuda(new CudaOptions { Attention = CudaAttentionKernels.Ptx, QuantizedTensorCoreMatMul = on })).GetAwaiter().GetResult();
                gpu.CompleteAsync(warmUp, one).GetAwaiter().GetResult();
                var sw = Stopwatch.StartNew();
                var all = Task.WhenAll(prompts.Select(p => gpu.CompleteAsync(p, one))).GetAwaiter().GetResult();
                double seconds = sw.Elapsed.TotalSeconds;
                tps[slot] = prompts.Length * promptLength / seconds;
                firstTokens[slot] = [.. all.Select(c => c.TokenIds[0])];
                var tokens = gpu.CompleteAsync(prompts[0], greedy).GetAwaiter().GetResult().TokenIds;
                same[slot] = tokens.SequenceEqual(cpuTokens);
                tsv.Append(CultureInfo.InvariantCulture, $"prefill_tok_s\t{name}\t{tps[slot]:F0}\ttokens/s\t{prompts.Length} x {promptLength} tokens in {seconds:F2} s, one output token each; {gpu.DeviceName}\n");
                tsv.Append(CultureInfo.InvariantCulture, $"greedy8_equal\t{name}\t{(same[slot] ? 1 : 0)}\t\t{string.Join(",", tokens)} vs CPU {string.Join(",", cpuTokens)}\n");
                Console.WriteLine($"e2e {name}: {tps[slot]:F0} prompt tokens/s, greedy 8 = CPU {same[slot]}; {gpu.DeviceName}");
            }
            catch (Exception e)
            {
                RunnerFiles.Failed(tsv, summary, name, e);
                return false;
            }
            finally
            {
                gpu?.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }
        int agree = 0;
        for (int p = 0; p < prompts.Length; p++) agree += firstTokens[0][p] == firstTokens[1][p] ? 1 : 0;
        tsv.Append(CultureInfo.InvariantCulture, $"prefill_first_token_agree\t{label}\t{agree}\tprompts\tof {prompts.Length}: first greedy token, tensor cores on vs off\n");
        summary.AppendLine(CultureInfo.InvariantCulture, $"| {label} prefill, {prompts.Length} x {promptLength} tokens | prompt tok/s, quantized tensor cores on | off | first tokens on = off | greedy 8 = CPU (on / off) |");
        summary.AppendLine("|---|---|---|---|---|");
        summary.AppendLine(CultureInfo.InvariantCulture, $"| | {tps[1]:F0} | {tps[0]:F0} | {agree} of {prompts.Length} | {(same[1] ? "yes" : "no")} / {(same[0] ? "yes" : "no")} |\n");
        return true;
    }

    /// <summary>The 32,000-token llama vocabulary: packed beside the runner, or from ../shared/testdata in a checkout.</summary>
    /// <summary>Decode speed of one greedy request, then of 16 concurrent ones (prefill included), as TSV lines.</summary>
    private static (double One, double Sixteen) MeasureDecode(InferenceEngine gpu, int[] tokens, string name, bool quick, StringBuilder tsv)
    {
        var one = SamplingOptions.Greedy with { MaxTokens = quick ? 32 : 128, EndOfSequence = EndOfSequenceHandling.Ignore };
        gpu.CompleteAsync(tokens, one with { MaxTokens = 8 }).GetAwaiter().GetResult();   // warm-up
        var single = gpu.CompleteAsync(tokens, one).GetAwaiter().GetResult();
        double tps1 = single.Metrics.DecodeTokensPerSecond;
        tsv.Append(CultureInfo.InvariantCulture, $"decode_batch1\t{name}\t{tps1:F1}\ttokens/s\tTPOT {single.Metrics.TimePerOutputToken.TotalMilliseconds:F2} ms, TTFT {single.Metrics.TimeToFirstToken.TotalMilliseconds:F1} ms\n");
        var prompts = Enumerable.Range(0, 16).Select(i => tokens.Take(8 + i).ToArray()).ToArray();
        var sw = Stopwatch.StartNew();
        var all = Task.WhenAll(prompts.Select(p => gpu.CompleteAsync(p, one))).GetAwaiter().GetResult();
        double seconds = sw.Elapsed.TotalSeconds;
        long generated = all.Sum(c => (long)c.TokenIds.Count);
        double tps16 = generated / seconds;
        tsv.Append(CultureInfo.InvariantCulture, $"decode_batch16\t{name}\t{tps16:F1}\ttokens/s\t{generated} tokens in {seconds:F2} s, all 16 requests, prefill included\n");
        return (tps1, tps16);
    }

    private static string FindDonor() =>
        RunnerFiles.Find("vocab-llama-spm.gguf", Path.Combine("vocab", "ggml-vocab-llama-spm.gguf"))
        ?? throw new FileNotFoundException("the tokenizer donor vocab-llama-spm.gguf is neither beside the runner nor in ../shared/testdata/vocab");


    private sealed class Timing(string what) : IDisposable
    {
        private readonly Stopwatch _watch = Stopwatch.StartNew();

        public void Dispose() => Console.WriteLine($"e2e: {what} took {_watch.Elapsed.TotalSeconds:F1} s");
    }
}
