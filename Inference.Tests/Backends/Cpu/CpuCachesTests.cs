using Inference.Backends.Cpu;

namespace Inference.Tests.Backends.Cpu;

/// <summary>The last-level cache size read from sysfs text, and whether a model's weights stream from memory.</summary>
public class CpuCachesTests
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
        Assert.That(CpuCaches.ParseCacheSize(text), Is.EqualTo(bytes));

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
        Assert.That(CpuCaches.ParseCacheSize(text), Is.Null);

    [Test]
    public void ParsesRandomKibibyteSizes()
    {
        var rng = new Random(11);
        for (int i = 0; i < 200; i++)
        {
            long kib = rng.NextInt64(1, 1L << 40);
            Assert.That(CpuCaches.ParseCacheSize($"{kib}K\n"), Is.EqualTo(kib << 10), kib.ToString(System.Globalization.CultureInfo.InvariantCulture));
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
            Assert.That(CpuCaches.LastLevelCacheOf(xeon.OrderBy(_ => rng.Next()).ToArray()), Is.EqualTo(266240L << 10));
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
        Assert.That(CpuCaches.LastLevelCacheOf(caches), Is.EqualTo(512L << 10));
    }

    [Test]
    public void TakesTheLargestOfSeveralCachesOnTheTopLevelAndAllowsAMissingType()
    {
        (string?, string?, string?)[] caches = [("2", null, "1024K"), ("3", "Unified", "16384K"), ("3", null, "32768K"), ("3", "Data", "8192K")];
        Assert.That(CpuCaches.LastLevelCacheOf(caches), Is.EqualTo(32768L << 10));
    }

    [Test]
    public void NoCachesIsUnknown()
    {
        Assert.That(CpuCaches.LastLevelCacheOf([]), Is.Null);
        Assert.That(CpuCaches.LastLevelCacheOf([("1", "Instruction", "32K"), ("2", "Unified", "0K")]), Is.Null);
    }

    [TestCase(192_300_000L, 266240L << 10, true)]
    [TestCase(110_200_000L, 266240L << 10, false)]
    [TestCase(576_400_000L, 266240L << 10, true)]
    [TestCase(20L << 20, 32L << 20, true)]
    [TestCase(15L << 20, 32L << 20, false)]
    [TestCase(16L << 20, 32L << 20, false)]
    public void WeightsBeyondHalfTheLastLevelCacheStreamFromMemory(long weightBytes, long llc, bool streams) =>
        Assert.That(CpuCaches.StreamsFromMemory(weightBytes, llc), Is.EqualTo(streams));

    [Test]
    public void AnUnknownCacheMeansMemory()
    {
        Assert.That(CpuCaches.StreamsFromMemory(1, null), Is.True);
        Assert.That(CpuCaches.StreamsFromMemory(1L << 40, null), Is.True);
    }

    /// <summary>This Xeon's (family 6 model 207) CPUID 4 subleaves, as read on it: L1d, L1i, L2, L3, then the end.</summary>
    [TestCase(0x04000121u, 0x02C0003Fu, 0x0000003Fu, 1, false, 48L << 10)]
    [TestCase(0x04000122u, 0x01C0003Fu, 0x0000003Fu, 1, true, 32L << 10)]
    [TestCase(0x04000143u, 0x03C0003Fu, 0x000007FFu, 2, false, 2L << 20)]
    [TestCase(0x04004163u, 0x04C0003Fu, 0x00033FFFu, 3, false, 260L << 20)]
    // The AMD leaf 0x8000001D has the same fields: a unified L3 of 16 ways and 32,768 sets of 64-byte lines (a Zen 3 CCX).
    [TestCase(0x0003C163u, 0x03C0003Fu, 0x00007FFFu, 3, false, 32L << 20)]
    public void DecodesCpuIdCacheLeaves(uint eax, uint ebx, uint ecx, int level, bool instruction, long bytes) =>
        Assert.That(CpuCaches.CacheOfCpuIdLeaf(eax, ebx, ecx), Is.EqualTo((level, instruction, bytes)));

    [Test]
    public void TheEndOfTheCpuIdCacheListIsNoCache() => Assert.That(CpuCaches.CacheOfCpuIdLeaf(0, 0, 0), Is.Null);

    /// <summary>Where sysfs lists the caches (Linux computes them from the same CPUID leaves on x86), the processor's own
    /// description gives the same last-level cache.</summary>
    [Test]
    public void TheProcessorAndTheOperatingSystemAgreeWhereBothSay()
    {
        var caches = new List<(string?, string?, string?)>();
        const string root = "/sys/devices/system/cpu/cpu0/cache";
        if (Directory.Exists(root))
            foreach (var dir in Directory.GetDirectories(root, "index*"))
                caches.Add((Read(dir, "level"), Read(dir, "type"), Read(dir, "size")));
        long? sysfs = CpuCaches.LastLevelCacheOf(caches), cpuId = CpuCaches.LastLevelCacheOfCpuId();
        if (sysfs is null || cpuId is null) Assert.Ignore($"sysfs {sysfs?.ToString() ?? "none"}, CPUID {cpuId?.ToString() ?? "none"}: not both");
        Assert.That(cpuId, Is.EqualTo(sysfs));

        static string? Read(string dir, string name) => File.Exists(Path.Combine(dir, name)) ? File.ReadAllText(Path.Combine(dir, name)) : null;
    }
}
