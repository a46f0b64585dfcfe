using System.Text.Json;
using Inference.KvCache;

namespace Inference.Benchmarks.Prefix;

/// <summary>KV memory waste of the paged cache against contiguous reservations on a chat-like length mix.</summary>
public static class KvWasteBenchmark
{
    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        var r = KvWasteMeasurement.Run(a.Int("--sequences", 300), a.Int("--context", 4096), a.Int("--block-size", 16));
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mode"] = "kv-waste",
            ["sequences"] = r.Sequences,
            ["tokens"] = r.Tokens,
            ["block_size"] = r.BlockSize,
            ["paged_waste"] = Math.Round(r.PagedWaste, 4),
            ["contiguous_context_waste"] = Math.Round(r.ContiguousContextWaste, 4),
            ["contiguous_max_new_waste"] = Math.Round(r.ContiguousMaxNewWaste, 4),
        }));
        return Task.FromResult(0);
    }
}
