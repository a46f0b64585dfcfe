using Inference.Benchmarks.Kernels;
using Inference.Loading;

namespace Inference.Tests.Benchmarks;

/// <summary>The last-level cache size every benchmark line carries, read from sysfs text.</summary>
public class DecodeCeilingTests
{
    [TestCase("266240K\n", 266240L << 10)]
    [TestCase("32K", 32L << 10)]
    [TestCase("48K\n", 48L << 10)]
    [TestCase("2048K", 2048L << 10)]
    [TestCase(" 512K ", 512L << 10)]
    [TestCase("260M", 260L << 20)]
    [TestCase("2M\n", 2L << 20)]
    [TestCase("1G", 1L << 30)]
    public void ParsesCacheSizes(string text, long bytes) =>
        Assert.That(DecodeCeiling.ParseCacheSize(text), Is.EqualTo(bytes));

    // lscpu's forms ("260 MiB"), bare or byte counts and lower case are not what sysfs writes.
    [TestCase(null)]
    [TestCase("")]
    [TestCase("K")]
    [TestCase("-48K")]
    [TestCase("+48K")]
    [TestCase("48X")]
    [TestCase("48k")]
    [TestCase("4096")]
    [TestCase("4096B")]
    [TestCase("512 K")]
    [TestCase("260 MiB")]
    [TestCase("260MiB")]
    [TestCase("3 GB")]
    [TestCase("1.5M")]
    [TestCase("99999999999999999999K")]
    [TestCase("9223372036854775807G")]
    public void RefusesWhatIsNotACacheSize(string? text) =>
        Assert.That(DecodeCeiling.ParseCacheSize(text), Is.Null);

    [Test]
    public void ParsesRandomKibibyteSizes()
    {
        var rng = new Random(11);
        for (int i = 0; i < 200; i++)
        {
            long kib = rng.NextInt64(1, 1L << 40);
            Assert.That(DecodeCeiling.ParseCacheSize($"{kib}K\n"), Is.EqualTo(kib << 10), kib.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
    }

    [Test]
    public void TakesTheHighestLevelDataOrUnifiedCacheInAnyOrder()
    {
        // This Xeon's (family 6 model 207) cpu0: L1d, L1i, L2, L3.
        (string?, string?, string?)[] xeon =
        [
            ("1\n", "Data\n", "48K\n"), ("1\n", "Instruction\n", "32K\n"), ("2\n", "Unified\n", "2048K\n"), ("3\n", "Unified\n", "266240K\n"),
        ];
        var rng = new Random(5);
        for (int i = 0; i < 20; i++)
            Assert.That(DecodeCeiling.LastLevelCacheOf(xeon.OrderBy(_ => rng.Next()).ToArray()), Is.EqualTo(266240L << 10));
    }

    [Test]
    public void SkipsInstructionCachesAndWhatDoesNotParse()
    {
        // An instruction cache at the top level is not where the weights go; unreadable entries are skipped.
        (string?, string?, string?)[] caches =
        [
            ("1", "Data", "32K"), ("2", "Unified", "512K"), ("3", "Instruction", "65536K"),
            ("4", "Unified", "lots"), (null, "Unified", "1048576K"), ("5", "Unified", null),
        ];
        Assert.That(DecodeCeiling.LastLevelCacheOf(caches), Is.EqualTo(512L << 10));
    }

    [Test]
    public void TakesTheLargestOfSeveralCachesOnTheTopLevelAndAllowsAMissingType()
    {
        (string?, string?, string?)[] caches = [("2", null, "1024K"), ("3", "Unified", "16384K"), ("3", null, "32768K"), ("3", "Data", "8192K")];
        Assert.That(DecodeCeiling.LastLevelCacheOf(caches), Is.EqualTo(32768L << 10));
    }

    [Test]
    public void NoCachesIsUnknown()
    {
        Assert.That(DecodeCeiling.LastLevelCacheOf([]), Is.Null);
        Assert.That(DecodeCeiling.LastLevelCacheOf([("1", "Instruction", "32K"), ("2", "Unified", "0K")]), Is.Null);
    }

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
