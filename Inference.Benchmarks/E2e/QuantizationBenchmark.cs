using System.Diagnostics;
using System.Globalization;
using Inference.KvCache;
using Inference.Quantization;
using LLama;
using LLama.Native;

namespace Inference.Benchmarks.E2e;

/// <summary>
/// A float model run five ways, beside llama.cpp on the same files: as stored (F16), quantized while loading
/// (<see cref="Engine.EngineOptions.Quantization"/>) and loaded from a file quantized ahead of time
/// (<see cref="ModelQuantizer"/>), for each preset. Prints one JSON line per run and a Markdown table on stderr.
/// </summary>
/// <remarks>
/// ready_s is the time from the start of loading until a warm-up request (8 prompt tokens) is answered, so it includes
/// the quantization at load and the repacking of the weights for the kernels; decode_tok_s is the best of
/// <c>--repeat</c> runs after the first. llama.cpp has no quantization at load: its rows are the stored file and the
/// ahead-of-time files (written here, byte-identical to its own quantizer's).
/// </remarks>
public static class QuantizationBenchmark
{
    public static async Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        string model = a.Required("--model");
        int p = a.Int("-p", 16), n = a.Int("-n", 64), threads = a.Int("--threads", 2), repeat = a.Int("--repeat", 2);
        var presets = a.String("--presets", "q8_0,q4_k_m").Split(',').Select(QuantizationPresets.Parse).ToArray();
        if (!File.Exists(model)) throw new FileNotFoundException($"{model}: file not found", model);
        string dir = Path.Combine(Path.GetTempPath(), "inference-quantization-bench");
        Directory.CreateDirectory(dir);
        var prompts = E2eBenchmark.MakePrompts(model, p, 1);
        var rows = new List<(string Engine, string How, string Weights, double QuantizeS, E2eResult Result)>();

        async Task Measure(string engine, string how, string file, QuantizationPreset? atLoad, double quantizeS)
        {
            E2eResult? best = null;
            double ready = double.MaxValue;
            for (int i = 0; i < repeat + 1; i++)
            {
                var r = engine == "llama.cpp"
                    ? LlamaCppE2e.Run(file, prompts, n, threads)
                    : await E2eBenchmark.RunInferenceAsync(file, prompts, n, threads, KvCacheDataType.Float16, atLoad);
                if (i == 0) continue; // the first pass reads the file from disk
                ready = Math.Min(ready, r.ReadyS);
                if (best is null || r.DecodeTokS > best.DecodeTokS) best = r;
            }
            var result = best! with { ReadyS = ready };
            string weights = atLoad is { } q ? q.ToString() : Path.GetFileNameWithoutExtension(file);
            rows.Add((engine, how, weights, quantizeS, result));
            Console.WriteLine(result.ToJson().TrimEnd('}') + $",\"how\":\"{how}\",\"weights\":\"{weights}\",\"quantize_s\":{quantizeS.ToString("F2", CultureInfo.InvariantCulture)}}}");
        }

        await Measure("inference", "as stored", model, null, 0);
        await Measure("llama.cpp", "as stored", model, null, 0);
        foreach (var preset in presets)
        {
            await Measure("inference", "quantized at load", model, preset, 0);
            string ours = Path.Combine(dir, $"{Path.GetFileNameWithoutExtension(model)}-{preset}.gguf");
            var sw = Stopwatch.StartNew();
            await ModelQuantizer.QuantizeAsync(model, ours, preset);
            double oursS = sw.Elapsed.TotalSeconds;
            string theirs = Path.Combine(dir, $"{Path.GetFileNameWithoutExtension(model)}-{preset}.llama.gguf");
            LlamaCppSetup.EnsureQuiet();
            sw.Restart();
            if (!LLamaQuantizer.Quantize(model, theirs, (LLamaFtype)(int)preset, threads, quantizeOutputTensor: true))
                throw new InvalidOperationException($"llama.cpp could not quantize {model} to {preset}");
            double theirsS = sw.Elapsed.TotalSeconds;
            File.Delete(theirs);
            await Measure("inference", "quantized ahead", ours, null, oursS);
            await Measure("llama.cpp", "quantized ahead", ours, null, theirsS);
            File.Delete(ours);
        }

        Console.Error.WriteLine($"| engine | weights | how | quantize s | ready s | decode tok/s |");
        Console.Error.WriteLine("|---|---|---|---:|---:|---:|");
        foreach (var r in rows)
        {
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Engine} | {r.Weights} | {r.How} | {(r.QuantizeS > 0 ? r.QuantizeS.ToString("F2", CultureInfo.InvariantCulture) : "")} | {r.Result.ReadyS:F2} | {r.Result.DecodeTokS:F1} |"));
        }
        return 0;
    }
}
