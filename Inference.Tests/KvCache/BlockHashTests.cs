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
    public void ComputeChain_ChainsFullBlocksFromTheRoot_AndStopsAtTheDestinationOrAPartialBlock()
    {
        var rng = new Random(3);
        int[] tokens = [.. Enumerable.Range(0, 53).Select(_ => rng.Next(32000))];
        var chain = new BlockHash[8];
        int n = BlockHash.ComputeChain(tokens, 16, 11, chain);
        Assert.That(n, Is.EqualTo(3), "53 tokens hold three full blocks of 16");
        var parent = BlockHash.Root;
        for (int i = 0; i < n; i++)
        {
            parent = BlockHash.Compute(parent, tokens.AsSpan(16 * i, 16), 11);
            Assert.That(chain[i], Is.EqualTo(parent), $"block {i}");
        }
        Assert.That(BlockHash.ComputeChain(tokens, 16, 11, chain.AsSpan(0, 2)), Is.EqualTo(2));
        Assert.That(BlockHash.ComputeChain(tokens.AsSpan(0, 15), 16, 11, chain), Is.Zero);
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockHash.ComputeChain(tokens, 0, 11, chain));
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockHash.ComputeChain(tokens, KvCacheOptions.MaxBlockSize + 1, 11, chain));
    }

    [Test]
    public async Task EnginesOfOneModelAndKvType_HashPromptsAlike_AndOtherKvTypesDoNot()
    {
        var f16 = new Inference.Engine.EngineOptions { Threads = 1, KvCache = new KvCacheOptions { PoolBytes = 1 << 20 } };
        await using var a = await Inference.Engine.InferenceEngine.LoadAsync(Inference.Tests.Support.TestData.Stories260K, f16);
        await using var b = await Inference.Engine.InferenceEngine.LoadAsync(Inference.Tests.Support.TestData.Stories260K, f16);
        await using var c = await Inference.Engine.InferenceEngine.LoadAsync(Inference.Tests.Support.TestData.Stories260K,
            f16 with { KvCache = f16.KvCache with { DataType = KvCacheDataType.Float32 } });
        var prompt = a.Tokenize("Once upon a time, there was a little girl named Lily. She loved to play outside.");
        var ha = new BlockHash[4];
        var hb = new BlockHash[4];
        var hc = new BlockHash[4];
        int n = a.ComputePrefixBlockHashes(prompt, ha);
        Assert.That(n, Is.EqualTo(Math.Min(4, prompt.Length / 16)).And.GreaterThan(0));
        Assert.That(b.ComputePrefixBlockHashes(prompt, hb), Is.EqualTo(n));
        Assert.That(c.ComputePrefixBlockHashes(prompt, hc), Is.EqualTo(n));
        Assert.That(a.PrefixSalt, Is.EqualTo(b.PrefixSalt));
        Assert.That(hb, Is.EqualTo(ha));
        Assert.That(c.PrefixSalt, Is.Not.EqualTo(a.PrefixSalt));
        Assert.That(hc[0], Is.Not.EqualTo(ha[0]));
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
