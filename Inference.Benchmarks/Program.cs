using BenchmarkDotNet.Running;
using Inference.Benchmarks.Kernels;

namespace Inference.Benchmarks;

/// <summary>
/// Entry point: <c>dotnet run -c Release --project Inference.Benchmarks -- MODE [options]</c>.
/// Each mode prints one JSON line on stdout (BenchmarkDotNet modes print their own tables).
/// </summary>
public static class Program
{
    private static readonly Dictionary<string, (string Help, Func<string[], Task<int>> Run)> Modes = new()
    {
        ["kernels"] = ("BenchmarkDotNet CPU kernel micro-benchmarks [BenchmarkDotNet args]", a => { BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(a); return Task.FromResult(0); }),
        ["kernels-quick"] = ("GB/s of weights per type at 1 and 2 threads [--seconds S --threads 1,2 --batch 1,8 --types ... --shape 2816x1024]", a => Task.FromResult(QuickKernelBench.Run(a))),
        ["half-widening"] = ("GB/s of F16 halves widened and multiplied on one core, per widening and per data (normal, subnormal, Gaussian, rescaled) [--passes 30]", a => Task.FromResult(Kernels.HalfWidening.Run(a))),
        ["vector-ops"] = ("cycles per 256-bit vpmaddubsw, vpmaddwd, vpsrlw, vpaddw on this core [--millions 50]", a => Task.FromResult(Kernels.VectorOpCosts.Run(a))),
        ["attention"] = ("CPU paged attention, one layer, µs per call: [--context 160 --tokens 1 --threads 1 --kv f16|f32|q8_0|fp8 (comma-separated: side by side) --heads 16 --kv-heads 4 --head-dim 64 --cold]", Kernels.AttentionQuickBench.RunAsync),
        ["write-model"] = ("write a random-weight GGUF: --out PATH [--arch llama|qwen2|qwen3|gemma2|gemma3|phi3|qwen2moe|qwen3moe] --type f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|iq4_nl|iq4_xs|q2_k|q3_k|q3_k_s|q4_k|q4_k_s|q5_k|q5_k_s|q6_k [--dim --layers --heads --kv-heads --ffn] [--experts N --experts-used K --expert-ffn --shared-expert-ffn] (llama with --experts: Mixtral)", Models.WriteModel.RunAsync),
        ["e2e"] = ("end-to-end generation like llama-bench: -p P -n N --batch B --threads T [--engine inference|llama.cpp] [--quantization q8_0|q4_k_m|...]", E2e.E2eBenchmark.RunAsync),
        ["quantization"] = ("ready time and decode speed of a float model as stored, quantized at load, and quantized ahead, beside llama.cpp: --model F16.gguf [--threads 2 -p 16 -n 64 --repeat 2 --presets q8_0,q4_k_m]", E2e.QuantizationBenchmark.RunAsync),
        ["kv-dtype"] = ("decode after a long prompt per K/V type, side by side: --model PATH [-p 4096 -n 32 --threads 2 --repeat 3 --kv f32,f16,q8_0,fp8]", E2e.KvDtypeBenchmark.RunAsync),
        ["forward-profile"] = ("decode step time vs its matrix products alone: --model PATH [--threads 2 --steps 64 --batch 1]", E2e.ForwardProfile.RunAsync),
        ["bandwidth"] = ("memory read bandwidth: --threads T", E2e.BandwidthBenchmark.RunAsync),
        ["prefix"] = ("prefix reuse: --model PATH --shared-prefix-tokens 1024 --suffix-tokens 32 --threads 2", Prefix.PrefixBenchmark.RunAsync),
        ["kv-waste"] = ("KV waste of paged blocks vs contiguous reservations: [--sequences 300 --context 4096 --block-size 16]", Prefix.KvWasteBenchmark.RunAsync),
        ["grammar-mask"] = ("constrained-decoding mask cost per token: [--vocab ../shared/testdata/vocab/ggml-vocab-deepseek-llm.gguf --json-schema FILE --walks 8 --steps 300]", Constraints.GrammarMaskBenchmark.RunAsync),
        ["dump-ptx"] = ("DIR: write the ILGPU-generated PTX of every kernel (sm_80, sm_90)", a => Task.FromResult(Gpu.PtxDumpMode.Run(a))),
        ["gpu"] = ("OUTDIR: GPU checks and the decode-attention benchmark (needs a CUDA device)", a => Task.FromResult(Gpu.GpuMode.Run(a))),
    };

    public static async Task<int> Main(string[] args)
    {
        if (args.Length == 0 || !Modes.TryGetValue(args[0], out var mode))
        {
            Console.Error.WriteLine("usage: Inference.Benchmarks MODE [options]");
            foreach (var (name, m) in Modes) Console.Error.WriteLine($"  {name,-12} {m.Help}");
            return 1;
        }
        try
        {
            return await mode.Run(args[1..]);
        }
        catch (Exception e) when (e is ArgumentException or FileNotFoundException or Inference.Loading.ModelFormatException)
        {
            Console.Error.WriteLine("error: " + e.Message.ReplaceLineEndings(" "));
            return 1;
        }
    }
}
