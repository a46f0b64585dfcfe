using System.Diagnostics.Metrics;
using Inference.Diagnostics;

namespace Inference.KvCache;

/// <summary>
/// KV cache instruments on <see cref="InferenceMeter.Meter"/>, created once per process. Gauges report every live
/// <see cref="KvCacheManager"/>, tagged with <c>kv_cache.instance</c>.
/// </summary>
/// <remarks>
/// NOTE: gauges are read on the collector's thread. They read single ints that the engine thread writes; a slightly
/// stale value is fine for a gauge, so no lock is taken on the engine side.
/// </remarks>
internal static class KvCacheMetrics
{
    private static readonly Lock Gate = new();
    private static readonly List<WeakReference<KvCacheManager>> Managers = [];
    private static int s_nextInstance;

    public static readonly Counter<long> PrefixQueriedTokens = InferenceMeter.Meter.CreateCounter<long>(
        "inference.kv_cache.prefix.queried_tokens", "{token}", "Prompt tokens looked up in the prefix cache.");

    public static readonly Counter<long> PrefixHitTokens = InferenceMeter.Meter.CreateCounter<long>(
        "inference.kv_cache.prefix.hit_tokens", "{token}", "Prompt tokens served from the prefix cache.");

    static KvCacheMetrics()
    {
        InferenceMeter.Meter.CreateObservableGauge("inference.kv_cache.blocks.total", () => Observe(static m => m.TotalBlockCount), "{block}", "Blocks in the KV cache pool.");
        InferenceMeter.Meter.CreateObservableGauge("inference.kv_cache.blocks.used", () => Observe(static m => m.UsedBlockCount), "{block}", "Blocks referenced by a sequence.");
        InferenceMeter.Meter.CreateObservableGauge("inference.kv_cache.blocks.cached_free", () => Observe(static m => m.CachedFreeBlockCount), "{block}", "Free blocks that still hold a cached prefix block.");
    }

    /// <summary>Adds <paramref name="manager"/> to the gauges; returns its instance number.</summary>
    public static int Register(KvCacheManager manager)
    {
        lock (Gate)
        {
            Managers.RemoveAll(static w => !w.TryGetTarget(out _));
            Managers.Add(new WeakReference<KvCacheManager>(manager));
            return ++s_nextInstance;
        }
    }

    private static List<Measurement<int>> Observe(Func<KvCacheManager, int> value)
    {
        var result = new List<Measurement<int>>();
        lock (Gate)
        {
            foreach (var w in Managers)
                if (w.TryGetTarget(out var m))
                    result.Add(new Measurement<int>(value(m), new KeyValuePair<string, object?>("kv_cache.instance", m.InstanceId)));
        }
        return result;
    }
}
