using Inference.KvCache;

namespace Inference.Tests.Speculative;

/// <summary><see cref="KvCacheManager.TruncateSlots"/>: the slots of rejected proposals go back; blocks are reused, never leaked.</summary>
public class KvRollbackTests
{
    private static KvCacheManager Manager(int blocks = 16) => new(blocks, new KvCacheOptions { BlockSize = 4 });

    [Test]
    public void TruncatingFreesWholeBlocksAndRewritesThePartialOne()
    {
        var m = Manager();
        Assert.That(m.TryAllocate(1, [1, 2, 3, 4, 5, 6], out _));
        // Proposals 7..12 fill block 1 and spill into blocks 2 and 3.
        Assert.That(m.TryAppendSlots(1, [7, 8, 9, 10, 11, 12, 13, 14]));
        Assert.That(m.UsedBlockCount, Is.EqualTo(4));
        m.TruncateSlots(1, 7);
        m.CheckInvariants();
        Assert.That(m.GetTokenCount(1), Is.EqualTo(7));
        Assert.That(m.UsedBlockCount, Is.EqualTo(2));
        // The full block 1 was cached with the rejected tokens; it no longer is, so an equal prompt cannot hit it.
        Assert.That(m.GetCachedPrefixTokenCount([1, 2, 3, 4, 5, 6, 7, 8, 9]), Is.EqualTo(4));
        Assert.That(m.TryAppendSlots(1, [20, 21, 22]));
        m.CheckInvariants();
        Assert.That(m.GetCachedPrefixTokenCount([1, 2, 3, 4, 5, 6, 7, 20, 0]), Is.EqualTo(8));
        m.TruncateSlots(1, 10);
        m.TruncateSlots(1, 10);
        m.Free(1);
        m.CheckInvariants();
        Assert.That(m.UsedBlockCount, Is.Zero);
        Assert.Throws<ArgumentOutOfRangeException>(() => { Assert.That(m.TryAllocate(2, [1], out _)); m.TruncateSlots(2, 2); });
    }

    [Test]
    public void APartialBlockSharedByAPrefixHit_IsCopiedNotRewritten()
    {
        var m = Manager();
        Assert.That(m.TryAllocate(1, [1, 2, 3], out _));
        Assert.That(m.TryAppendSlots(1, [4, 5, 6, 7, 8]));   // blocks [1 2 3 4] [5 6 7 8], both cached
        // Another sequence hits both blocks in the same step.
        Assert.That(m.TryAllocate(2, [1, 2, 3, 4, 5, 6, 7, 8, 9], out int hit));
        Assert.That(hit, Is.EqualTo(8));
        int shared = m.GetBlockTable(1)[1];
        m.TruncateSlots(1, 6);
        m.CheckInvariants();
        Assert.That(m.GetBlockTable(1)[1], Is.Not.EqualTo(shared), "a private copy of the kept slots");
        Assert.That(m.PendingCopies.ToArray(), Is.EqualTo(new[] { new BlockCopy(shared, m.GetBlockTable(1)[1]) }));
        Assert.That(m.GetBlockTable(2)[1], Is.EqualTo(shared), "the other sequence keeps its block");
        Assert.That(m.TryAppendSlots(1, [30, 31]));
        m.CheckInvariants();
        m.Free(1);
        m.Free(2);
        m.CheckInvariants();
        Assert.That(m.UsedBlockCount, Is.Zero);
    }
}
