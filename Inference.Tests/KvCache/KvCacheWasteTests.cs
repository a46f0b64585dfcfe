using Inference.KvCache;

namespace Inference.Tests.KvCache;

public class KvCacheWasteTests
{
    [Test]
    public void PagedWasteIsSmallComparedWithContiguousReservation()
    {
        // A chat-like mix: log-normal prompt and output lengths (medians ≈ 300 and ≈ 150 tokens), max context 4096.
        const int maxContext = 4096, blockSize = 16, sequenceCount = 300;
        var rng = new Random(2026);
        int LogNormal(double median, double sigma, int min, int max)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            double z = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
            return (int)Math.Clamp(median * Math.Exp(sigma * z), min, max);
        }

        var m = new KvCacheManager(20_000, new KvCacheOptions { BlockSize = blockSize, PoolBytes = 1, PrefixCaching = PrefixCachingMode.Disabled });
        long tokens = 0, requestedMax = 0;
        var decodeToken = new int[1];
        for (int id = 0; id < sequenceCount; id++)
        {
            int prompt = LogNormal(300, 1.0, 4, 3000);
            int output = LogNormal(150, 1.0, 1, maxContext - prompt);
            int maxNew = Math.Min(maxContext - prompt, Math.Max(output, 256)); // what a client asks for
            Assert.That(m.TryAllocate(id, Enumerable.Range(0, prompt).Select(_ => rng.Next(32000)).ToArray(), out _), Is.True);
            for (int t = 0; t < output; t++)
            {
                decodeToken[0] = rng.Next(32000);
                Assert.That(m.TryAppendSlots(id, decodeToken), Is.True); // decode: one slot per step
            }
            tokens += prompt + output;
            requestedMax += prompt + maxNew;
        }

        long pagedSlots = (long)m.UsedBlockCount * blockSize;
        double pagedWaste = 1 - (double)tokens / pagedSlots;
        double contiguousWaste = 1 - (double)tokens / ((long)sequenceCount * maxContext);
        double perRequestMaxWaste = 1 - (double)tokens / requestedMax;
        TestContext.Out.WriteLine(
            $"{sequenceCount} sequences, {tokens} tokens (mean {tokens / sequenceCount}): paged (block {blockSize}) waste {pagedWaste:P2}; " +
            $"contiguous {maxContext}-token reservation waste {contiguousWaste:P1}; contiguous prompt+max_new reservation waste {perRequestMaxWaste:P1}");
        Assert.That(pagedWaste, Is.LessThan(0.04));
        Assert.That(pagedWaste, Is.GreaterThan(0), "the last block of a sequence is partly filled in general");
        Assert.That(contiguousWaste, Is.GreaterThan(pagedWaste));
    }
}
