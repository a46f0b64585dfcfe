using Inference.KvCache;

namespace Inference.Tests.KvCache;

public class KvCacheManagerTests
{
    private static KvCacheManager Create(int blocks, int blockSize, PrefixCachingMode mode = PrefixCachingMode.Enabled, long salt = 1) =>
        new(blocks, new KvCacheOptions { BlockSize = blockSize, PoolBytes = 1, PrefixCaching = mode }, salt);

    private static int[] Tokens(int start, int count) => Enumerable.Range(start, count).ToArray();

    [Test]
    public void AllocateGivesSlotsForEveryToken()
    {
        var m = Create(8, 4);
        Assert.That(m.TryAllocate(1, Tokens(100, 10), out int hit), Is.True);
        Assert.That(hit, Is.EqualTo(0));
        Assert.That(m.GetBlockTable(1).Length, Is.EqualTo(3));
        Assert.That(m.GetTokenCount(1), Is.EqualTo(10));
        Assert.That(m.UsedBlockCount, Is.EqualTo(3));
        m.CheckInvariants();
    }

    [Test]
    public void PrefixHitAfterFree()
    {
        var m = Create(8, 4);
        var prompt = Tokens(100, 13);
        m.TryAllocate(1, prompt, out _);
        var first = m.GetBlockTable(1)[..3].ToArray();
        m.Free(1);
        Assert.That(m.UsedBlockCount, Is.EqualTo(0));
        Assert.That(m.CachedFreeBlockCount, Is.EqualTo(3));

        Assert.That(m.TryAllocate(2, prompt, out int hit), Is.True);
        Assert.That(hit, Is.EqualTo(12));
        Assert.That(m.GetBlockTable(2)[..3].ToArray(), Is.EqualTo(first));
        var stats = m.GetStats();
        Assert.That(stats.PrefixQueriedTokenCount, Is.EqualTo(26));
        Assert.That(stats.PrefixHitTokenCount, Is.EqualTo(12));
        Assert.That(stats.PrefixHitRate, Is.EqualTo(12.0 / 26));
        m.CheckInvariants();
    }

    [Test]
    public void HitIsCappedSoTheLastTokenIsComputed()
    {
        var m = Create(8, 4);
        var prompt = Tokens(0, 12); // exactly three full blocks
        m.TryAllocate(1, prompt, out _);
        Assert.That(m.GetCachedPrefixTokenCount(prompt), Is.EqualTo(8));
        Assert.That(m.TryAllocate(2, prompt, out int hit), Is.True);
        Assert.That(hit, Is.EqualTo(8));
        // Block 2 of sequence 2 is a private recomputation; blocks 0 and 1 are shared.
        Assert.That(m.GetBlockTable(2)[..2].ToArray(), Is.EqualTo(m.GetBlockTable(1)[..2].ToArray()));
        Assert.That(m.GetBlockTable(2)[2], Is.Not.EqualTo(m.GetBlockTable(1)[2]));
        m.CheckInvariants();
    }

    [Test]
    public void SharedPrefixWhileBothRun()
    {
        var m = Create(16, 4);
        var system = Tokens(500, 8);
        m.TryAllocate(1, [.. system, 1, 2, 3], out _);
        m.TryAllocate(2, [.. system, 7, 8], out int hit);
        Assert.That(hit, Is.EqualTo(8));
        Assert.That(m.UsedBlockCount, Is.EqualTo(4)); // 2 shared + 1 + 1
        m.CheckInvariants();
    }

    [Test]
    public void EqualBlocksAfterDifferentPrefixesAreNotShared()
    {
        // Block [5 6 7 8] first appears at position 0 of z, then at position 4 of x. A prompt continuing x must reuse
        // x's block, never z's: the keys and values of a block depend on everything before it.
        var m = Create(16, 4);
        m.TryAllocate(1, [5, 6, 7, 8, 0], out _);              // z
        m.TryAllocate(2, [1, 2, 3, 4, 5, 6, 7, 8, 0], out _);  // x
        Assert.That(m.TryAllocate(3, [1, 2, 3, 4, 5, 6, 7, 8, 9], out int hit), Is.True);
        Assert.That(hit, Is.EqualTo(8));
        Assert.That(m.GetBlockTable(3)[..2].ToArray(), Is.EqualTo(m.GetBlockTable(2)[..2].ToArray()));
        Assert.That(m.GetBlockTable(3)[1], Is.Not.EqualTo(m.GetBlockTable(1)[0]));
        m.CheckInvariants();
    }

    [Test]
    public void DifferentSaltOrDisabledCachingNeverHits()
    {
        var prompt = Tokens(0, 20);
        var a = Create(8, 4, salt: 1);
        a.TryAllocate(1, prompt, out _);
        Assert.That(a.GetCachedPrefixTokenCount(prompt), Is.EqualTo(16));

        var off = Create(8, 4, PrefixCachingMode.Disabled);
        off.TryAllocate(1, prompt, out _);
        off.Free(1);
        Assert.That(off.TryAllocate(2, prompt, out int hit), Is.True);
        Assert.That(hit, Is.EqualTo(0));
        Assert.That(off.CachedFreeBlockCount, Is.EqualTo(0));
        Assert.That(off.GetStats().PrefixQueriedTokenCount, Is.EqualTo(0));
        off.CheckInvariants();
    }

    [Test]
    public void SaltIsPartOfTheHash()
    {
        // Two managers only differ in salt; the hash of the same block differs, so a shared cache would keep them apart.
        var h1 = BlockHash.Compute(BlockHash.Root, Tokens(0, 4), 1);
        var h2 = BlockHash.Compute(BlockHash.Root, Tokens(0, 4), 2);
        Assert.That(h1, Is.Not.EqualTo(h2));
    }

    [Test]
    public void EvictionIsLeastRecentlyFreedAndTailFirst()
    {
        // 8 blocks of 4. Sequence A fills 3 blocks, is freed (tail first), then B needs 6 new blocks:
        // the 5 never-used blocks go first, then A's tail block; A's first two blocks survive.
        var m = Create(8, 4);
        var a = Tokens(0, 12);
        m.TryAllocate(1, a, out _);
        m.Free(1);
        Assert.That(m.GetCachedPrefixTokenCount([.. a, 99]), Is.EqualTo(12));
        m.TryAllocate(2, Tokens(1000, 24), out _);
        Assert.That(m.GetCachedPrefixTokenCount([.. a, 99]), Is.EqualTo(8));
        m.Free(2);
        m.CheckInvariants();

        // Earlier-freed sequences are evicted before later-freed ones.
        var n = Create(4, 4);
        n.TryAllocate(1, Tokens(0, 8), out _);
        n.TryAllocate(2, Tokens(100, 8), out _);
        n.Free(1);
        n.Free(2);
        n.TryAllocate(3, Tokens(200, 8), out _);
        Assert.That(n.GetCachedPrefixTokenCount(Tokens(0, 9)), Is.EqualTo(0));
        Assert.That(n.GetCachedPrefixTokenCount(Tokens(100, 9)), Is.EqualTo(8));
    }

    [Test]
    public void FailedAllocationChangesNothing()
    {
        var m = Create(4, 4);
        m.TryAllocate(1, Tokens(0, 9), out _); // 3 blocks
        Assert.That(m.TryAllocate(2, Tokens(50, 8), out int hit), Is.False);
        Assert.That(hit, Is.EqualTo(0));
        Assert.That(m.Contains(2), Is.False);
        Assert.That(m.TryAppendSlots(1, Tokens(9, 8)), Is.False); // needs 2 more, 1 free
        Assert.That(m.GetTokenCount(1), Is.EqualTo(9));
        Assert.That(m.TryAppendSlots(1, Tokens(9, 3)), Is.True);
        Assert.That(m.FreeBlockCount, Is.EqualTo(1));
        m.CheckInvariants();
    }

    [Test]
    public void ChunkedAllocationCoversHitPlusChunk()
    {
        var m = Create(16, 4);
        var prompt = Tokens(0, 30);
        m.TryAllocate(1, prompt, out _);
        Assert.That(m.TryAllocate(2, prompt, maxNewTokenCount: 5, out int hit), Is.True);
        Assert.That(hit, Is.EqualTo(28));
        Assert.That(m.GetTokenCount(2), Is.EqualTo(30)); // only 2 tokens were left after the hit
        Assert.That(m.TryAllocate(3, Tokens(100, 30), maxNewTokenCount: 5, out hit), Is.True);
        Assert.That(hit, Is.EqualTo(0));
        Assert.That(m.GetTokenCount(3), Is.EqualTo(5));
        Assert.That(m.GetBlockTable(3).Length, Is.EqualTo(2));
        m.CheckInvariants();
    }

    [Test]
    public void ForkSharesBlocksAndCopiesOnFirstWrite()
    {
        var m = Create(8, 4);
        m.TryAllocate(1, Tokens(0, 6), out _); // block 0 full, block 1 holds 2 tokens
        m.Fork(1, 2);
        Assert.That(m.GetBlockTable(2).ToArray(), Is.EqualTo(m.GetBlockTable(1).ToArray()));
        Assert.That(m.UsedBlockCount, Is.EqualTo(2));
        int shared = m.GetBlockTable(1)[1];

        Assert.That(m.GetAppendBlockCount(2, 1), Is.EqualTo(1)); // the copy
        Assert.That(m.TryAppendSlots(2, [42]), Is.True);
        Assert.That(m.PendingCopies.ToArray(), Is.EqualTo(new[] { new BlockCopy(shared, m.GetBlockTable(2)[1]) }));
        Assert.That(m.GetBlockTable(1)[1], Is.EqualTo(shared));
        Assert.That(m.GetBlockTable(2)[0], Is.EqualTo(m.GetBlockTable(1)[0]));
        m.ClearPendingCopies();

        // The parent now owns its block alone and writes in place.
        Assert.That(m.TryAppendSlots(1, [7]), Is.True);
        Assert.That(m.PendingCopies.Length, Is.EqualTo(0));
        Assert.That(m.Pool.TokenIds(m.GetBlockTable(1)[1]).ToArray(), Is.EqualTo(new[] { 4, 5, 7 }));
        Assert.That(m.Pool.TokenIds(m.GetBlockTable(2)[1]).ToArray(), Is.EqualTo(new[] { 4, 5, 42 }));
        m.CheckInvariants();
        m.Free(1);
        m.Free(2);
        Assert.That(m.UsedBlockCount, Is.EqualTo(0));
        m.CheckInvariants();
    }

    [Test]
    public void CopyOnWriteIsolatesStorage()
    {
        var options = new KvCacheOptions { BlockSize = 4, PoolBytes = 1, DataType = KvCacheDataType.Float32 };
        using var storage = new KvCacheStorage(2, 8, 4, 1, 2, KvCacheDataType.Float32);
        var m = new KvCacheManager(storage.BlockCount, options);
        m.TryAllocate(1, Tokens(0, 3), out _);
        for (int p = 0; p < 3; p++) WriteToken(storage, m.GetBlockTable(1), p, value: p + 1);
        m.Fork(1, 2);
        m.TryAppendSlots(2, [3]);
        storage.CopyBlocks(m.PendingCopies);
        m.ClearPendingCopies();
        WriteToken(storage, m.GetBlockTable(2), 3, value: 100);
        m.TryAppendSlots(1, [3]);
        WriteToken(storage, m.GetBlockTable(1), 3, value: 50);

        for (int layer = 0; layer < 2; layer++)
        {
            Assert.That(ReadToken(storage, layer, m.GetBlockTable(1), 3), Is.EqualTo(50f));
            Assert.That(ReadToken(storage, layer, m.GetBlockTable(2), 3), Is.EqualTo(100f));
            for (int p = 0; p < 3; p++)
                Assert.That(ReadToken(storage, layer, m.GetBlockTable(2), p), Is.EqualTo(p + 1f));
        }
    }

    [Test]
    public void BlocksFilledByUncomputedSlotsAreNotOfferedAfterFree()
    {
        var m = Create(8, 4);
        var prompt = Tokens(0, 13);
        m.TryAllocate(1, prompt, out _);
        m.Free(1, computedTokenCount: 5); // only the first block holds written keys and values
        Assert.That(m.GetCachedPrefixTokenCount(prompt), Is.EqualTo(4));
        Assert.That(m.CachedFreeBlockCount, Is.EqualTo(1));
        m.CheckInvariants();
    }

    [Test]
    public void FreeTwiceOrUnknownThrows()
    {
        var m = Create(4, 4);
        m.TryAllocate(1, Tokens(0, 5), out _);
        m.Free(1);
        Assert.Throws<InvalidOperationException>(() => m.Free(1));
        Assert.Throws<InvalidOperationException>(() => m.TryAppendSlots(1, [1]));
        Assert.Throws<InvalidOperationException>(() => m.Fork(1, 2));
        m.TryAllocate(1, Tokens(0, 5), out _);
        Assert.Throws<InvalidOperationException>(() => m.TryAllocate(1, Tokens(0, 5), out _));
        m.CheckInvariants();
    }

    [TestCase(1, 4, PrefixCachingMode.Enabled)]
    [TestCase(2, 4, PrefixCachingMode.Disabled)]
    [TestCase(3, 16, PrefixCachingMode.Enabled)]
    [TestCase(4, 1, PrefixCachingMode.Enabled)]
    public void RandomOperationsKeepInvariantsAndContents(int seed, int blockSize, PrefixCachingMode mode)
    {
        // A shadow model keeps every sequence's tokens; after every operation the manager's invariants must hold and
        // each block table must spell exactly the sequence's tokens (which catches a shared block written in place).
        var rng = new Random(seed);
        var m = Create(48, blockSize, mode, salt: seed);
        var sequences = new Dictionary<long, List<int>>();
        // Few prompt families over a tiny vocabulary, so prefixes repeat and hits are common.
        var families = Enumerable.Range(0, 4).Select(_ => Enumerable.Range(0, 3 * blockSize + 3).Select(_ => rng.Next(3)).ToArray()).ToArray();
        long nextId = 1;
        int hits = 0, copies = 0, failures = 0;
        for (int step = 0; step < 4000; step++)
        {
            int op = rng.Next(10);
            if (op < 3 || sequences.Count == 0)
            {
                var family = families[rng.Next(families.Length)];
                var prompt = family.Take(1 + rng.Next(family.Length)).Concat(Enumerable.Range(0, rng.Next(3)).Select(_ => rng.Next(3))).ToArray();
                int max = rng.Next(2) == 0 ? int.MaxValue : 1 + rng.Next(prompt.Length);
                long id = nextId++;
                if (m.TryAllocate(id, prompt, max, out int hit))
                {
                    Assert.That(hit % blockSize, Is.Zero);
                    Assert.That(hit, Is.LessThan(prompt.Length));
                    hits += hit > 0 ? 1 : 0;
                    int slots = m.GetTokenCount(id);
                    Assert.That(slots, Is.EqualTo(Math.Min(prompt.Length, hit == 0 && max == int.MaxValue ? prompt.Length : (long)hit + max)));
                    sequences[id] = prompt.Take(slots).ToList();
                }
                else failures++;
            }
            else if (op < 7)
            {
                long id = sequences.Keys.ElementAt(rng.Next(sequences.Count));
                var more = Enumerable.Range(0, 1 + rng.Next(blockSize + 2)).Select(_ => rng.Next(3)).ToArray();
                if (m.TryAppendSlots(id, more)) sequences[id].AddRange(more);
                else failures++;
                copies += m.PendingCopies.Length;
                m.ClearPendingCopies();
            }
            else if (op < 8)
            {
                long parent = sequences.Keys.ElementAt(rng.Next(sequences.Count));
                long child = nextId++;
                m.Fork(parent, child);
                sequences[child] = [.. sequences[parent]];
            }
            else
            {
                long id = sequences.Keys.ElementAt(rng.Next(sequences.Count));
                m.Free(id);
                sequences.Remove(id);
            }

            m.CheckInvariants();
            foreach (var (id, tokens) in sequences)
            {
                var table = m.GetBlockTable(id);
                Assert.That(m.GetTokenCount(id), Is.EqualTo(tokens.Count));
                for (int b = 0; b < table.Length; b++)
                {
                    var stored = m.Pool.TokenIds(table[b]);
                    int n = Math.Min(blockSize, tokens.Count - b * blockSize);
                    for (int t = 0; t < n; t++)
                        if (stored[t] != tokens[b * blockSize + t]) Assert.Fail($"step {step}: sequence {id} block {b} slot {t} holds {stored[t]}, expected {tokens[b * blockSize + t]}");
                }
            }
        }
        foreach (long id in sequences.Keys.ToArray()) m.Free(id);
        m.CheckInvariants();
        Assert.That(m.UsedBlockCount, Is.EqualTo(0));
        Assert.That(m.FreeBlockCount, Is.EqualTo(48));
        Assert.That(failures, Is.GreaterThan(0), "the pool should run full sometimes");
        if (mode == PrefixCachingMode.Enabled && blockSize <= 4) Assert.That(hits, Is.GreaterThan(0));
        if (blockSize > 1) Assert.That(copies, Is.GreaterThan(0), "forks should lead to copy-on-write");
        else Assert.That(copies, Is.Zero, "blocks of one token are never partly filled");
    }

    private static void WriteToken(KvCacheStorage s, ReadOnlySpan<int> table, int position, float value)
    {
        float[] kv = [value, value + 0.5f];
        for (int layer = 0; layer < s.LayerCount; layer++)
            s.Write(layer, table[position / s.BlockSize], position % s.BlockSize, kv, kv);
    }

    private static float ReadToken(KvCacheStorage s, int layer, ReadOnlySpan<int> table, int position) =>
        s.GetKeys<float>(layer)[(table[position / s.BlockSize] * s.BlockSize + position % s.BlockSize) * s.KvHeadCount * s.HeadDim];
}
