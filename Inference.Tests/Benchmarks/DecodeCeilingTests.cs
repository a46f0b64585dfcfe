using Inference.Benchmarks.Kernels;
using Inference.Loading;

namespace Inference.Tests.Benchmarks;

/// <summary>The last-level cache tag every benchmark line carries.</summary>
public class DecodeCeilingTests
{
    [Test]
    public void TheCacheTagMatchesTheSize()
    {
        // Whatever this machine has: the tag and the MiB figure say the same.
        if (DecodeCeiling.LastLevelCacheBytes is long bytes)
        {
            Assert.That(bytes, Is.GreaterThan(0));
            Assert.That(DecodeCeiling.LastLevelCacheMib, Is.EqualTo(Math.Round(bytes / 1048576.0, 1)));
            Assert.That(DecodeCeiling.CacheTag, Does.StartWith("LLC ").And.EndWith(" MiB"));
        }
        else
        {
            Assert.That(DecodeCeiling.LastLevelCacheMib, Is.Null);
            Assert.That(DecodeCeiling.CacheTag, Is.EqualTo("LLC unknown"));
        }
    }

    [Test]
    public void The_in_cache_rate_is_each_types_best_round_measured_interleaved()
    {
        var order = new List<GgmlType>();
        var scripted = new Dictionary<GgmlType, Queue<double>>
        {
            [GgmlType.Q4_K] = new([23.0, 33.3, 32.9]),   // a disturbed first round
            [GgmlType.Q6_K] = new([29.2, 29.3, 12.0]),   // a disturbed last round
        };
        var best = DecodeCeiling.BestOfRounds([GgmlType.Q4_K, GgmlType.Q6_K], 3, t => { order.Add(t); return scripted[t].Dequeue(); });
        Assert.That(best[GgmlType.Q4_K], Is.EqualTo(33.3));
        Assert.That(best[GgmlType.Q6_K], Is.EqualTo(29.3));
        Assert.That(order, Is.EqualTo(new[] { GgmlType.Q4_K, GgmlType.Q6_K, GgmlType.Q4_K, GgmlType.Q6_K, GgmlType.Q4_K, GgmlType.Q6_K }), "interleaved");
        Assert.Throws<ArgumentOutOfRangeException>(() => DecodeCeiling.BestOfRounds([GgmlType.Q4_K], 0, _ => 1));
    }
}
