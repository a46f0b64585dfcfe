using System.Text.Json;
using Inference.Engine;
using Inference.Sampling;

namespace Inference.Benchmarks.Prefix;

/// <summary>
/// Prefix reuse on one engine: a first request computes a shared prefix plus a suffix (cold), a second with the same
/// prefix and another suffix hits the cached blocks (warm). Prints cold_ttft_ms, warm_ttft_ms and hit_tokens.
/// <code>
/// dotnet run -c Release --project Inference.Benchmarks -- prefix --model PATH --shared-prefix-tokens 1024 --suffix-tokens 32 --threads 2
/// </code>
/// </summary>
public static class PrefixBenchmark
{
    public static async Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        string model = a.Required("--model");
        int prefix = a.Int("--shared-prefix-tokens", 1024), suffix = a.Int("--suffix-tokens", 32), threads = a.Int("--threads", 2);
        if (!File.Exists(model)) throw new FileNotFoundException($"{model}: file not found", model);
        var prompts = E2e.E2eBenchmark.MakePrompts(model, prefix + suffix, 3);
        // prompts[0] supplies the shared prefix; each request gets its own suffix.
        int[] Prompt(int i) => [.. prompts[0].AsSpan(0, prefix), .. prompts[i].AsSpan(prefix, suffix)];

        var options = new EngineOptions { Threads = threads, ContextLength = prefix + suffix + 16, MaxNumBatchedTokens = 512 };
        await using var engine = await InferenceEngine.LoadAsync(model, options);
        var sampling = SamplingOptions.Greedy with { MaxTokens = 1, EndOfSequence = EndOfSequenceHandling.Ignore };
        // Warm the weights (page cache) with a request that shares nothing with the measured ones.
        await engine.CompleteAsync(prompts[2][..16], sampling);

        var cold = await engine.CompleteAsync(Prompt(0), sampling);
        var warm = await engine.CompleteAsync(Prompt(1), sampling);
        var stats = await engine.GetStatsAsync();
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["model"] = Path.GetFileName(model),
            ["shared_prefix_tokens"] = prefix,
            ["suffix_tokens"] = suffix,
            ["threads"] = threads,
            ["cold_ttft_ms"] = Math.Round(cold.Metrics.TimeToFirstToken.TotalMilliseconds, 2),
            ["warm_ttft_ms"] = Math.Round(warm.Metrics.TimeToFirstToken.TotalMilliseconds, 2),
            ["warm_over_cold"] = Math.Round(warm.Metrics.TimeToFirstToken / cold.Metrics.TimeToFirstToken, 4),
            ["hit_tokens"] = warm.Metrics.PrefixHitTokens,
            ["prefix_hit_rate"] = Math.Round(stats.KvCache.PrefixHitRate, 4),
        }));
        return 0;
    }
}
