using Inference.Benchmarks.E2e;

namespace Inference.Tests.Benchmarks;

/// <summary>The working set the decode's read bandwidth is measured over, and the roofline bandwidth chosen from it.</summary>
public class BandwidthBenchmarkTests
{
    private const long Ring = (long)BandwidthBenchmark.RingMib << 20;

    /// <summary>The Xeon's L3 (family 6 model 207), 266240K.</summary>
    private const long Llc = 266240L << 10;

    [Test]
    public void TheFootprintIsTheWeightBytesRoundedUpToWholeSteps()
    {
        var rng = new Random(17);
        for (int i = 0; i < 500; i++)
        {
            int threads = rng.Next(1, 65);
            long weights = rng.NextInt64(threads * 1024L, Ring - threads * 1024L);
            long grain = threads * 1024L;
            long? footprint = BandwidthBenchmark.FootprintBytes(weights, threads, Ring, lastLevelCacheBytes: null);
            Assert.That(footprint, Is.Not.Null, $"{weights} bytes, {threads} threads");
            // Never smaller than what the decode reads (a smaller set could be served by a faster cache), less than one
            // step per thread more, and whole steps per thread.
            Assert.That(footprint!.Value, Is.GreaterThanOrEqualTo(weights).And.LessThan(weights + grain));
            Assert.That(footprint.Value % grain, Is.Zero);
        }
    }

    [Test]
    public void TheBenchmarkModelsKeepTheirSize()
    {
        // The Q4_K_M and Q8_0 benchmark models' weight bytes per token, two threads.
        Assert.That(BandwidthBenchmark.FootprintBytes(110_166_016, 2, Ring, Llc), Is.EqualTo(110_166_016));
        Assert.That(BandwidthBenchmark.FootprintBytes(192_300_001, 2, Ring, Llc), Is.EqualTo(192_301_056));
    }

    [Test]
    public void WeightsAsLargeAsTheRingUseTheRingsFigure()
    {
        // The cache size unknown: only the ring decides.
        Assert.That(BandwidthBenchmark.FootprintBytes(Ring, 2, Ring, null), Is.Null);
        Assert.That(BandwidthBenchmark.FootprintBytes(Ring - 1, 2, Ring, null), Is.Null, "rounds up to the ring");
        Assert.That(BandwidthBenchmark.FootprintBytes(723_700_000, 2, 512L << 20, null), Is.Null);
        Assert.That(BandwidthBenchmark.FootprintBytes(Ring - 2048, 2, Ring, null), Is.EqualTo(Ring - 2048));
    }

    [Test]
    public void WeightsLargerThanTheLastLevelCacheUseTheRingsFigure()
    {
        // About the F16/BF16 (363 MB) and F32 (726 MB) benchmark models on the Xeon: read from DRAM, one measurement.
        Assert.That(BandwidthBenchmark.FootprintBytes(362_900_000, 2, Ring, Llc), Is.Null);
        Assert.That(BandwidthBenchmark.FootprintBytes(725_700_000, 2, Ring, Llc), Is.Null);
        // Exactly the cache is measured; one step more is not.
        Assert.That(BandwidthBenchmark.FootprintBytes(Llc, 2, Ring, Llc), Is.EqualTo(Llc));
        Assert.That(BandwidthBenchmark.FootprintBytes(Llc + 1, 2, Ring, Llc), Is.Null, "rounds up past the cache");
        // With the cache size unknown, everything below the ring is measured.
        Assert.That(BandwidthBenchmark.FootprintBytes(725_700_000, 2, Ring, null), Is.EqualTo(725_700_608));
        // A cache larger than the ring does not make the ring's own size worth a second measurement.
        Assert.That(BandwidthBenchmark.FootprintBytes(Ring, 2, Ring, 2 * Ring), Is.Null);
    }

    [Test]
    public void ASecondMeasurementOnlyWhereTheFootprintFitsTheCacheAndIsBelowTheRing()
    {
        var rng = new Random(31);
        for (int i = 0; i < 1000; i++)
        {
            int threads = rng.Next(1, 65);
            long grain = threads * 1024L;
            long weights = rng.NextInt64(1, 2 * Ring);
            long? cache = rng.Next(4) == 0 ? null : rng.NextInt64(1L << 20, 2 * Ring);
            long rounded = (weights + grain - 1) / grain * grain;
            bool measured = rounded < Ring && (cache is null || rounded <= cache);
            long? footprint = BandwidthBenchmark.FootprintBytes(weights, threads, Ring, cache);
            Assert.That(footprint, measured ? Is.EqualTo(rounded) : Is.Null, $"{weights} bytes, {threads} threads, cache {cache}");
        }
    }

    [Test]
    public void RefusesNoWeightsOrNoThreads()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => BandwidthBenchmark.FootprintBytes(0, 2, Ring, Llc));
        Assert.Throws<ArgumentOutOfRangeException>(() => BandwidthBenchmark.FootprintBytes(1000, 0, Ring, Llc));
        Assert.Throws<ArgumentOutOfRangeException>(() => BandwidthBenchmark.MeasureBytes(2, 2047));
    }

    [Test]
    public void SmallerSetsGetMorePassesUpToALimit()
    {
        Assert.That(BandwidthBenchmark.Passes(Ring), Is.EqualTo(8));
        Assert.That(BandwidthBenchmark.Passes(4 * Ring), Is.EqualTo(8));
        Assert.That(BandwidthBenchmark.Passes(1024), Is.EqualTo(4096));
        var rng = new Random(23);
        for (int i = 0; i < 200; i++)
        {
            // NOTE: from where the passes stop being capped at 4,096 (2 MiB for the 1 GiB ring) up.
            long bytes = rng.NextInt64(8 * Ring / 4096, Ring);
            int passes = BandwidthBenchmark.Passes(bytes);
            // As many bytes read as the ring's eight passes, within one pass.
            Assert.That(passes * bytes, Is.LessThanOrEqualTo(8 * Ring).And.GreaterThan(8 * Ring - bytes), bytes.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
    }

    [Test]
    public void TheBandwidthLineHasTheFootprintFieldsOnlyWhereAskedFor()
    {
        var read = new ReadBandwidth(28.714, 53.386, 110_166_016);
        var line = BandwidthBenchmark.ResultLine(2, read, withFootprint: true);
        Assert.That(line.Keys, Is.EqualTo(new[] { "mode", "threads", "read_gb_s", "footprint_mb", "footprint_read_gb_s", "dram_read_gb_s", "cpu", "llc_mib" }));
        Assert.That(line["read_gb_s"], Is.EqualTo(53.39));
        Assert.That(line["footprint_mb"], Is.EqualTo(110.2));
        Assert.That(line["footprint_read_gb_s"], Is.EqualTo(53.39));
        Assert.That(line["dram_read_gb_s"], Is.EqualTo(28.71));
        Assert.That(line["threads"], Is.EqualTo(2));

        var ring = BandwidthBenchmark.ResultLine(4, ReadBandwidth.RingOnly(16.237, BandwidthBenchmark.RingMib), withFootprint: false);
        Assert.That(ring.Keys, Is.EqualTo(new[] { "mode", "threads", "read_gb_s", "dram_read_gb_s", "cpu", "llc_mib" }));
        Assert.That(ring["read_gb_s"], Is.EqualTo(16.24));
        Assert.That(ring["dram_read_gb_s"], Is.EqualTo(16.24));
        Assert.That(ring["threads"], Is.EqualTo(4));
    }

    [Test]
    public void TheRooflineIsTheFootprintsFigureNeverBelowTheRings()
    {
        var rng = new Random(29);
        for (int i = 0; i < 100; i++)
        {
            double dram = 10 + 30 * rng.NextDouble(), cache = dram * (1 + rng.NextDouble());
            Assert.That(new ReadBandwidth(dram, cache, 110_000_000).RooflineGbs, Is.EqualTo(cache));
            Assert.That(new ReadBandwidth(cache, dram, 110_000_000).RooflineGbs, Is.EqualTo(cache), "a footprint figure below the ring's is noise");
        }
    }
}
