using Inference.KvCache;

namespace Inference.Tests.KvCache;

public class BlockPoolTests
{
    [Test]
    public void AllocateTakesLeastRecentlyFreedAndEvictsItsHash()
    {
        var pool = new BlockPool(3, 2);
        int a = pool.Allocate(), b = pool.Allocate();
        Fill(pool, a, 1, 2);
        Fill(pool, b, 3, 4);
        var ha = BlockHash.Compute(BlockHash.Root, [1, 2], 0);
        var hb = BlockHash.Compute(BlockHash.Root, [3, 4], 0);
        Assert.That(pool.Register(a, ha), Is.True);
        Assert.That(pool.Register(b, hb), Is.True);
        pool.Release(a); // cached: goes to the back, after the never-used block 2
        pool.Release(b);
        Assert.That(pool.CachedFreeCount, Is.EqualTo(2));
        pool.CheckInvariants();

        Assert.That(pool.Allocate(), Is.EqualTo(2));
        Assert.That(pool.Lookup(ha, [1, 2]), Is.EqualTo(a));
        Assert.That(pool.Allocate(), Is.EqualTo(a)); // evicted now
        Assert.That(pool.Lookup(ha, [1, 2]), Is.EqualTo(-1));
        Assert.That(pool.Lookup(hb, [3, 4]), Is.EqualTo(b));
        Assert.That(pool.CachedFreeCount, Is.EqualTo(1));
        pool.CheckInvariants();
    }

    [Test]
    public void UnhashedBlocksAreReusedBeforeCachedOnes()
    {
        var pool = new BlockPool(2, 2);
        int a = pool.Allocate(), b = pool.Allocate();
        Fill(pool, a, 1, 2);
        pool.Register(a, BlockHash.Compute(BlockHash.Root, [1, 2], 0));
        pool.Release(a);
        pool.Release(b); // no hash: front of the queue
        Assert.That(pool.Allocate(), Is.EqualTo(b));
    }

    [Test]
    public void LookupConfirmsTokenIds()
    {
        var pool = new BlockPool(2, 2);
        int a = pool.Allocate();
        Fill(pool, a, 5, 6);
        var h = BlockHash.Compute(BlockHash.Root, [5, 6], 0);
        pool.Register(a, h);
        // Same hash, other tokens (what a collision would look like): no hit.
        Assert.That(pool.Lookup(h, [5, 7]), Is.EqualTo(-1));
        Assert.That(pool.Lookup(h, [5, 6]), Is.EqualTo(a));
    }

    [Test]
    public void AcquireRevivesCachedFreeBlockAndReleaseDetectsDoubleFree()
    {
        var pool = new BlockPool(2, 1);
        int a = pool.Allocate();
        pool.SetToken(a, 0, 9);
        pool.Register(a, BlockHash.Compute(BlockHash.Root, [9], 0));
        pool.Release(a);
        Assert.That(pool.IsFree(a), Is.True);
        pool.Acquire(a);
        Assert.That(pool.IsFree(a), Is.False);
        Assert.That(pool.RefCount(a), Is.EqualTo(1));
        pool.Release(a);
        Assert.Throws<InvalidOperationException>(() => pool.Release(a));
        int empty = a == 0 ? 1 : 0;
        Assert.Throws<InvalidOperationException>(() => pool.Acquire(empty));
        pool.CheckInvariants();
    }

    [Test]
    public void DuplicateContentKeepsFirstBlockShared()
    {
        var pool = new BlockPool(2, 1);
        int a = pool.Allocate(), b = pool.Allocate();
        pool.SetToken(a, 0, 1);
        pool.SetToken(b, 0, 1);
        var h = BlockHash.Compute(BlockHash.Root, [1], 0);
        Assert.That(pool.Register(a, h), Is.True);
        Assert.That(pool.Register(b, h), Is.False);
        Assert.That(pool.IsCached(b), Is.False);
        Assert.That(pool.Lookup(h, [1]), Is.EqualTo(a));
        pool.CheckInvariants();
    }

    [Test]
    public void FullCachedBlockCannotBeWritten()
    {
        var pool = new BlockPool(1, 1);
        int a = pool.Allocate();
        pool.SetToken(a, 0, 1);
        Assert.Throws<InvalidOperationException>(() => pool.SetToken(a, 1, 2));
        Assert.Throws<InvalidOperationException>(() => pool.SetToken(a, 0, 2));
    }

    private static void Fill(BlockPool pool, int block, params int[] tokens)
    {
        for (int i = 0; i < tokens.Length; i++) pool.SetToken(block, i, tokens[i]);
    }
}
