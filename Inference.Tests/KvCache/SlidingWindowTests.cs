using Inference.Backends.Cpu;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;
using Inference.Tests.Support;

namespace Inference.Tests.KvCache;

/// <summary>
/// Sliding-window attention end to end on the CPU path: a model whose layers have windows runs over the paged cache,
/// which releases the blocks outside every window while the sequence runs, and must match the same model over the
/// plain contiguous cache (which keeps everything) token for token, with the block count bounded.
/// </summary>
public class SlidingWindowTests
{
    [TestCase(new[] { 24, 24, 24, 24, 24 }, 8)]    // every layer local (Mistral): blocks released
    [TestCase(new[] { 13, 40, 13, 40, 13 }, 4)]    // two window sizes: the larger one bounds the cache
    [TestCase(new[] { 16, 0, 16, 0, 16 }, 16)]     // interleaved local and global layers (gemma2): nothing released
    public void PagedWithReleasedBlocks_MatchesContiguous_AndStaysBounded(int[] windows, int blockSize)
    {
        using var gguf = GgufFile.Open(TestData.Stories260K);
        var config = ModelConfig.FromGguf(gguf) with { SlidingWindows = windows };
        var model = new LlamaModel(gguf, config);
        using var pool = new WorkerPool(2);
        const int prompt = 37, total = 4 * 64;   // well past every window

        // A pool just big enough: released blocks are handed out again (and overwritten) while the sequence runs.
        int blockCount = config.KvRetention is int w ? w / blockSize + 3 : total / blockSize;
        var manager = new KvCacheManager(blockCount, new KvCacheOptions { BlockSize = blockSize, DataType = KvCacheDataType.Float32 }, slidingWindow: config.KvRetention ?? 0);
        using var storage = new KvCacheStorage(config.LayerCount, blockCount, blockSize, config.KvHeadCount, config.HeadDim, KvCacheDataType.Float32);
        var paged = new PagedKvAttention(storage, manager, config);
        var contiguous = new ContiguousKvCache(config, total + 1);

        var rng = new Random(blockSize);
        var tokens = new List<int> { 1 };
        for (int i = 1; i < prompt; i++) tokens.Add(rng.Next(3, config.VocabSize));
        var expected = new float[config.VocabSize];
        var actual = new float[config.VocabSize];
        var batch = new ModelBatch();

        // The prompt in chunks of 10 (the paged side) and at once (the contiguous side).
        Assert.That(manager.TryAllocate(0, tokens.ToArray(), 10, out int hit), Is.True);
        Assert.That(hit, Is.EqualTo(0));
        for (int start = 0; start < prompt; start += 10)
        {
            int n = Math.Min(10, prompt - start);
            if (start > 0) Assert.That(manager.TryAppendSlots(0, tokens.ToArray().AsSpan(start, n)), Is.True);
            batch.Clear();
            batch.Add(0, tokens.ToArray().AsSpan(start, n), start, wantLogits: start + n == prompt);
            model.Forward(batch, paged, actual, pool);
        }
        batch.Clear();
        batch.Add(0, tokens.ToArray(), 0, wantLogits: true);
        model.Forward(batch, contiguous, expected, pool);

        int mostBlocks = 0;
        while (true)
        {
            for (int i = 0; i < expected.Length; i++)
                if (!(Math.Abs(actual[i] - expected[i]) <= 1e-4f * (1 + Math.Abs(expected[i]))))
                    Assert.Fail($"position {tokens.Count - 1}: logit {i} paged {actual[i]} vs contiguous {expected[i]}");
            int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(expected);
            Assert.That(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(actual), Is.EqualTo(next));
            if (tokens.Count == total) break;
            tokens.Add(next);
            int pos = tokens.Count - 1;

            Assert.That(manager.TryAppendSlots(0, [next]), Is.True);
            manager.CheckInvariants();
            mostBlocks = Math.Max(mostBlocks, manager.UsedBlockCount);
            batch.Clear();
            batch.Add(0, [next], pos, wantLogits: true);
            model.Forward(batch, paged, actual, pool);
            model.Forward(batch, contiguous, expected, pool);
        }

        if (config.KvRetention is int window)
        {
            // The window's positions plus the partly filled blocks at both of its ends.
            Assert.That(mostBlocks, Is.LessThanOrEqualTo((window + blockSize - 1) / blockSize + 1));
            Assert.That(manager.GetBlockTable(0)[0], Is.EqualTo(KvCacheManager.ReleasedBlock));
        }
        else Assert.That(mostBlocks, Is.EqualTo((total + blockSize - 1) / blockSize), "a global layer keeps every block");
        manager.Free(0);
        manager.CheckInvariants();
        Assert.That(manager.UsedBlockCount, Is.EqualTo(0), "no leaked block");
    }

    [Test]
    public void ForkAfterRelease_SharesOnlyTheLiveBlocks_AndBothFreeCleanly()
    {
        var manager = new KvCacheManager(32, new KvCacheOptions { BlockSize = 4 }, slidingWindow: 6);
        int[] prompt = [.. Enumerable.Range(10, 9)];
        Assert.That(manager.TryAllocate(1, prompt, out _), Is.True);
        for (int t = 0; t < 12; t++) Assert.That(manager.TryAppendSlots(1, [100 + t]), Is.True);
        // 21 tokens; the next query (position 21) sees 16..21: blocks 0..3 (positions 0..15) are released.
        var table = manager.GetBlockTable(1).ToArray();
        Assert.That(table[..3], Is.All.EqualTo(KvCacheManager.ReleasedBlock));
        Assert.That(manager.UsedBlockCount, Is.EqualTo(3));
        manager.Fork(1, 2);
        manager.CheckInvariants();
        Assert.That(manager.TryAppendSlots(2, [7]), Is.True);
        Assert.That(manager.TryAppendSlots(1, [8]), Is.True);
        manager.CheckInvariants();
        manager.Free(1);
        manager.Free(2);
        manager.CheckInvariants();
        Assert.That(manager.UsedBlockCount, Is.EqualTo(0));
    }

    [Test]
    public void KvRetention_IsTheLargestWindow_OnlyWhenEveryLayerHasOne()
    {
        using var gguf = GgufFile.Open(TestData.Stories260K);
        var config = ModelConfig.FromGguf(gguf);
        Assert.That(config.KvRetention, Is.Null);
        Assert.That((config with { SlidingWindows = [4, 9, 4, 9, 4] }).KvRetention, Is.EqualTo(9));
        Assert.That((config with { SlidingWindows = [4, 0, 4, 0, 4] }).KvRetention, Is.Null);
        Assert.That((config with { SlidingWindows = [4, 0, 4, 0, 4] }).LayerSlidingWindow(1), Is.EqualTo(0));
        Assert.That((config with { SlidingWindows = [4, 0, 4, 0, 4] }).LayerSlidingWindow(2), Is.EqualTo(4));
    }
}
