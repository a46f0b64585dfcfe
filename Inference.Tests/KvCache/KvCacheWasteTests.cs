using Inference.KvCache;

namespace Inference.Tests.KvCache;

public class KvCacheWasteTests
{
    [TestCase(16)]
    [TestCase(32)]
    public void PagedWasteIsSmallComparedWithContiguousReservation(int blockSize)
    {
        var r = KvWasteMeasurement.Run(blockSize: blockSize);
        TestContext.Out.WriteLine(
            $"{r.Sequences} sequences, {r.Tokens} tokens (mean {r.Tokens / r.Sequences}): paged (block {r.BlockSize}) waste {r.PagedWaste:P2}; " +
            $"contiguous 4096-token reservation waste {r.ContiguousContextWaste:P1}; contiguous prompt+max_new reservation waste {r.ContiguousMaxNewWaste:P1}");
        Assert.That(r.PagedWaste, Is.LessThan(0.04));
        Assert.That(r.PagedWaste, Is.GreaterThan(0), "the last block of a sequence is partly filled in general");
        Assert.That(r.ContiguousContextWaste, Is.GreaterThan(r.PagedWaste));
        Assert.That(r.ContiguousMaxNewWaste, Is.GreaterThan(r.PagedWaste));
    }
}
