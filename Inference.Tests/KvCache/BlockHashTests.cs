using Inference.KvCache;

namespace Inference.Tests.KvCache;

public class BlockHashTests
{
    [Test]
    public void DependsOnParentTokensAndSalt()
    {
        int[] tokens = [1, 2, 3, 4];
        var h = BlockHash.Compute(BlockHash.Root, tokens, 7);
        Assert.That(BlockHash.Compute(BlockHash.Root, tokens, 7), Is.EqualTo(h));
        Assert.That(BlockHash.Compute(BlockHash.Root, [1, 2, 3, 5], 7), Is.Not.EqualTo(h));
        Assert.That(BlockHash.Compute(BlockHash.Root, tokens, 8), Is.Not.EqualTo(h));
        Assert.That(BlockHash.Compute(h, tokens, 7), Is.Not.EqualTo(h));
        Assert.That(BlockHash.Compute(BlockHash.Root, [1, 2, 3], 7), Is.Not.EqualTo(h));
    }

    [Test]
    public void SaltSeparatesModelsTokenizersRopeAndDataType()
    {
        long s = BlockHash.CreateSalt("model-a", "tok", "rope:10000", KvCacheDataType.Float16);
        Assert.That(BlockHash.CreateSalt("model-a", "tok", "rope:10000", KvCacheDataType.Float16), Is.EqualTo(s));
        Assert.That(BlockHash.CreateSalt("model-b", "tok", "rope:10000", KvCacheDataType.Float16), Is.Not.EqualTo(s));
        Assert.That(BlockHash.CreateSalt("model-a", "tok2", "rope:10000", KvCacheDataType.Float16), Is.Not.EqualTo(s));
        Assert.That(BlockHash.CreateSalt("model-a", "tok", "rope:500000", KvCacheDataType.Float16), Is.Not.EqualTo(s));
        Assert.That(BlockHash.CreateSalt("model-a", "tok", "rope:10000", KvCacheDataType.Float32), Is.Not.EqualTo(s));
    }

    [Test]
    public void ManyRandomBlocksHaveDistinctHashes()
    {
        var rng = new Random(5);
        var seen = new HashSet<BlockHash>();
        var tokens = new int[16];
        for (int i = 0; i < 10_000; i++)
        {
            for (int t = 0; t < tokens.Length; t++) tokens[t] = rng.Next(32000);
            Assert.That(seen.Add(BlockHash.Compute(BlockHash.Root, tokens, 0)), Is.True);
        }
    }

    [Test]
    public void RejectsOversizedBlock() =>
        Assert.Throws<ArgumentException>(() => BlockHash.Compute(BlockHash.Root, new int[KvCacheOptions.MaxBlockSize + 1], 0));
}
