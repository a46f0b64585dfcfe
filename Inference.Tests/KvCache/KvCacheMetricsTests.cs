using System.Diagnostics.Metrics;
using Inference.Diagnostics;
using Inference.KvCache;

namespace Inference.Tests.KvCache;

public class KvCacheMetricsTests
{
    [Test]
    public void GaugesAndCountersReportThroughTheInferenceMeter()
    {
        var m = new KvCacheManager(10, new KvCacheOptions { BlockSize = 4, PoolBytes = 1 });
        var gauges = new Dictionary<string, int>();
        long hitTokens = 0, queried = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == InferenceMeter.Name && instrument.Name.StartsWith("inference.kv_cache", StringComparison.Ordinal))
                l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<int>((instrument, value, tags, _) =>
        {
            foreach (var tag in tags)
                if (tag.Key == "kv_cache.instance" && (int)tag.Value! == m.InstanceId) gauges[instrument.Name] = value;
        });
        listener.SetMeasurementEventCallback<long>((instrument, value, _, _) =>
        {
            if (instrument.Name.EndsWith("hit_tokens", StringComparison.Ordinal)) Interlocked.Add(ref hitTokens, value);
            if (instrument.Name.EndsWith("queried_tokens", StringComparison.Ordinal)) Interlocked.Add(ref queried, value);
        });
        listener.Start();

        m.TryAllocate(1, [1, 2, 3, 4, 5, 6, 7, 8, 9], out _);
        m.Free(1);
        m.TryAllocate(2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], out _);
        listener.RecordObservableInstruments();

        Assert.That(gauges["inference.kv_cache.blocks.total"], Is.EqualTo(10));
        Assert.That(gauges["inference.kv_cache.blocks.used"], Is.EqualTo(3));
        Assert.That(gauges["inference.kv_cache.blocks.cached_free"], Is.EqualTo(0));
        // Other tests may run in parallel on other managers: the counters are process-wide, so check lower bounds.
        Assert.That(Interlocked.Read(ref hitTokens), Is.GreaterThanOrEqualTo(8));
        Assert.That(Interlocked.Read(ref queried), Is.GreaterThanOrEqualTo(19));
        var stats = m.GetStats();
        Assert.That((stats.UsedBlockCount, stats.PrefixHitTokenCount, stats.PrefixQueriedTokenCount), Is.EqualTo((3, 8, 19)));
    }
}
