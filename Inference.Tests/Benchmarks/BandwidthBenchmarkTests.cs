using Inference.Benchmarks.E2e;

namespace Inference.Tests.Benchmarks;

/// <summary>The working set the decode's read bandwidth is measured over, and the roofline bandwidth chosen from it.</summary>
public class BandwidthBenchmarkTests
{
    private const long Ring = (long)BandwidthBenchmark.RingMib << 20;

    [Test]
    public void TheFootprintIsTheWeightBytesRoundedUpToWholeSteps()
    {
        var rng = new Random(17);
        for (int i = 0; i < 500; i++)
        {
            int threads = rng.Next(1, 65);
            long weights = rng.NextInt64(threads * 1024L, Ring - threads * 1024L);
            long grain = threads * 1024L;
            long? footprint = BandwidthBenchmark.FootprintBytes(weights, threads, Ring);
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
        Assert.That(BandwidthBenchmark.FootprintBytes(110_166_016, 2, Ring), Is.EqualTo(110_166_016));
        Assert.That(BandwidthBenchmark.FootprintBytes(192_300_001, 2, Ring), Is.EqualTo(192_301_056));
    }

    [Test]
    public void WeightsAsLargeAsTheRingUseTheRingsFigure()
    {
        Assert.That(BandwidthBenchmark.FootprintBytes(Ring, 2, Ring), Is.Null);
        Assert.That(BandwidthBenchmark.FootprintBytes(Ring - 1, 2, Ring), Is.Null, "rounds up to the ring");
        Assert.That(BandwidthBenchmark.FootprintBytes(723_700_000, 2, 512L << 20), Is.Null);
        Assert.That(BandwidthBenchmark.FootprintBytes(Ring - 2048, 2, Ring), Is.EqualTo(Ring - 2048));
    }

    [Test]
    public void RefusesNoWeightsOrNoThreads()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => BandwidthBenchmark.FootprintBytes(0, 2, Ring));
        Assert.Throws<ArgumentOutOfRangeException>(() => BandwidthBenchmark.FootprintBytes(1000, 0, Ring));
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
