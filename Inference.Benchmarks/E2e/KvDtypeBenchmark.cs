using System.Globalization;
using System.Text.Json;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;

namespace Inference.Benchmarks.E2e;

/// <summary>
/// Decode after a long prompt with each K/V type side by side (<c>kv-dtype --model PATH -p 4096 -n 32 --kv f32,f16,q8_0,fp8</c>):
/// round by round every type runs once (a fresh engine, one prompt of -p random tokens, then -n greedy tokens); the first
/// round warms up and is not counted. Prints one JSON line per type: the best decode tok/s, its CPU ms per token, the
/// prefill tok/s and the KV bytes per token of the layout.
/// </summary>
public static class KvDtypeBenchmark
{
    public static async Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        string model = a.Required("--model");
        int p = a.Int("-p", 4096), n = a.Int("-n", 32), threads = a.Int("--threads", 2), repeat = a.Int("--repeat", 3);
        var types = a.String("--kv", "f32,f16,q8_0").Split(',').Select(Kernels.AttentionQuickBench.ParseKv).ToArray();
        if (!File.Exists(model)) throw new FileNotFoundException($"{model}: file not found", model);
        ModelConfig config;
        using (var gguf = GgufFile.Open(model)) config = ModelConfig.FromGguf(gguf);
        var prompts = E2eBenchmark.MakePrompts(model, p, 1);
        var best = new E2eResult?[types.Length];
        for (int round = 0; round < repeat + 1; round++)
        {
            for (int t = 0; t < types.Length; t++)
            {
                var r = await E2eBenchmark.RunInferenceAsync(model, prompts, n, threads, types[t]);
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"round {round} {KvBlockFormat.Name(types[t])}: decode {r.DecodeTokS:F2} tok/s, {r.DecodeCpuMsPerToken:F1} CPU ms/token, prefill {r.PrefillTokS:F1} tok/s"));
                if (round > 0 || repeat == 0) best[t] = best[t] is null || r.DecodeTokS > best[t]!.DecodeTokS ? r : best[t];
            }
        }
        for (int t = 0; t < types.Length; t++)
        {
            var r = best[t]!;
            Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["mode"] = "kv-dtype",
                ["model"] = Path.GetFileName(model),
                ["kv"] = KvBlockFormat.Name(types[t]),
                ["kv_bytes_per_token"] = KvCacheStorage.GetTokenByteCount(config.LayerCount, config.KvHeadCount, config.HeadDim, types[t]),
                ["prompt"] = p,
                ["generated"] = n,
                ["threads"] = threads,
                ["decode_tok_s"] = Math.Round(r.DecodeTokS, 2),
                ["decode_cpu_ms_per_token"] = Math.Round(r.DecodeCpuMsPerToken, 2),
                ["prefill_tok_s"] = Math.Round(r.PrefillTokS, 1),
            }));
        }
        return 0;
    }
}
