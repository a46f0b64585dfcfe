using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>Prefix reuse through the public API: same logits and text with and without it; prefix files.</summary>
public class PrefixCachingTests
{
    // ~70 tokens of shared "system prompt", then different questions.
    private const string Shared = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it.";
    private static readonly string[] Suffixes = [" Tom said", " The dog ran", " Lily was happy and"];

    private static EngineOptions Options(PrefixCachingMode mode, KvCacheDataType type = KvCacheDataType.Float16) =>
        new() { Threads = 2, ContextLength = 512, KvCache = new KvCacheOptions { PrefixCaching = mode, DataType = type } };

    [Test]
    public async Task PrefixHit_SameLogits_AndSameGreedyText_AsWithoutCaching()
    {
        await using var cached = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled));
        await using var plain = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Disabled));
        var sampling = SamplingOptions.Greedy with { MaxTokens = 40, EndOfSequence = EndOfSequenceHandling.Ignore };

        var first = await cached.CompleteAsync(Shared + Suffixes[0], sampling);
        Assert.That(first.Metrics.PrefixHitTokens, Is.Zero);
        foreach (var suffix in Suffixes.Skip(1))
        {
            var withCache = await cached.CompleteAsync(Shared + suffix, sampling);
            var without = await plain.CompleteAsync(Shared + suffix, sampling);
            Assert.That(withCache.Metrics.PrefixHitTokens, Is.GreaterThanOrEqualTo(48), "the shared blocks were reused");
            Assert.That(without.Metrics.PrefixHitTokens, Is.Zero);
            Assert.That(withCache.TokenIds, Is.EqualTo(without.TokenIds));

            var tokens = cached.Tokenize(Shared + suffix);
            var a = await cached.GetLogitsAsync(tokens);
            var b = await plain.GetLogitsAsync(tokens);
            Assert.That(a, Is.EqualTo(b).Within(1e-5f));
        }
        var stats = await cached.GetStatsAsync();
        Assert.That(stats.KvCache.PrefixHitTokenCount, Is.GreaterThan(0));
        Assert.That(stats.KvCache.PrefixHitRate, Is.GreaterThan(0).And.LessThan(1));
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(stats.KvCache.CachedFreeBlockCount, Is.GreaterThan(0), "freed blocks keep their hashes");
    }

    [Test]
    public async Task ConcurrentRequestsSharingAPrefix_MatchSolo()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled));
        await using var plain = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Disabled));
        var sampling = SamplingOptions.Greedy with { MaxTokens = 30, EndOfSequence = EndOfSequenceHandling.Ignore };
        var solo = new List<IReadOnlyList<int>>();
        foreach (var s in Suffixes) solo.Add((await plain.CompleteAsync(Shared + s, sampling)).TokenIds);
        var results = await Task.WhenAll(Enumerable.Range(0, 12).Select(i => engine.CompleteAsync(Shared + Suffixes[i % 3], sampling)));
        for (int i = 0; i < results.Length; i++) Assert.That(results[i].TokenIds, Is.EqualTo(solo[i % 3]), $"request {i}");
    }

    [Test]
    public async Task PrefixFile_SavedByOneEngine_IsHitByAnother_WithSameText()
    {
        var dir = TestData.TempDir();
        try
        {
            string file = Path.Combine(dir, "system.kvprefix");
            var sampling = SamplingOptions.Greedy with { MaxTokens = 30, EndOfSequence = EndOfSequenceHandling.Ignore };
            int saved;
            IReadOnlyList<int> expected;
            await using (var maker = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled)))
            {
                saved = await maker.SavePrefixAsync(Shared, file);
                Assert.That(saved % 16, Is.Zero);
                Assert.That(saved, Is.GreaterThanOrEqualTo(48));
            }
            await using (var plain = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Disabled)))
                expected = (await plain.CompleteAsync(Shared + Suffixes[1], sampling)).TokenIds;

            await using var user = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled));
            Assert.That(await user.LoadPrefixAsync(file), Is.EqualTo(saved));
            var result = await user.CompleteAsync(Shared + Suffixes[1], sampling);
            Assert.That(result.Metrics.PrefixHitTokens, Is.EqualTo(saved));
            Assert.That(result.TokenIds, Is.EqualTo(expected));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public async Task PrefixFile_FromAnotherModelOrKvType_IsRefused()
    {
        var dir = TestData.TempDir();
        try
        {
            string file = Path.Combine(dir, "system.kvprefix");
            await using (var maker = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled)))
                await maker.SavePrefixAsync(Shared, file);

            // Same shape and vocabulary, other weights.
            string other = Path.Combine(dir, "other.gguf");
            SyntheticModel.Write(other, new SyntheticModelOptions { Dimension = 64, LayerCount = 5, HeadCount = 8, KvHeadCount = 4, FeedForwardLength = 172, TokenizerDonorPath = TestData.Stories260K });
            await using (var otherEngine = await InferenceEngine.LoadAsync(other, Options(PrefixCachingMode.Enabled)))
                Assert.That(async () => await otherEngine.LoadPrefixAsync(file), Throws.TypeOf<ModelFormatException>().With.Message.Contains("another model"));

            await using (var f32 = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled, KvCacheDataType.Float32)))
                Assert.That(async () => await f32.LoadPrefixAsync(file), Throws.TypeOf<ModelFormatException>().With.Message.Contains("KV cache type"));

            var bytes = File.ReadAllBytes(file);
            File.WriteAllBytes(file, bytes[..(bytes.Length - 10)]);
            await using (var same = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled)))
                Assert.That(async () => await same.LoadPrefixAsync(file), Throws.TypeOf<ModelFormatException>().With.Message.Contains(file));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public async Task PrefixFile_FromAFineTuneOfTheSameShapes_IsRefused()
    {
        var dir = TestData.TempDir();
        try
        {
            string file = Path.Combine(dir, "system.kvprefix");
            await using (var maker = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled)))
                await maker.SavePrefixAsync(Shared, file);

            // The same file with a few weights of one middle layer changed, as a fine-tune (or a LoRA merged into it) does.
            string tuned = Path.Combine(dir, "tuned.gguf");
            File.Copy(TestData.Stories260K, tuned);
            long offset;
            using (var gguf = GgufFile.Open(TestData.Stories260K))
            {
                var tensor = gguf.Tensors.Single(t => t.Name == "blk.1.attn_v.weight");
                offset = tensor.DataOffset + tensor.ByteCount / 2;
            }
            using (var stream = new FileStream(tuned, FileMode.Open, FileAccess.ReadWrite))
            {
                stream.Position = offset;
                var bytes = new byte[16];
                stream.ReadExactly(bytes);
                for (int i = 0; i < bytes.Length; i++) bytes[i] ^= 0x10;
                stream.Position = offset;
                stream.Write(bytes);
            }
            await using (var tunedEngine = await InferenceEngine.LoadAsync(tuned, Options(PrefixCachingMode.Enabled)))
                Assert.That(async () => await tunedEngine.LoadPrefixAsync(file), Throws.TypeOf<ModelFormatException>().With.Message.Contains("other weights"));

            // The unchanged model still takes it.
            await using var same = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled));
            Assert.That(await same.LoadPrefixAsync(file), Is.GreaterThan(0));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public async Task PrefixFile_WithAnyByteChanged_IsRefusedByItsChecksum()
    {
        var dir = TestData.TempDir();
        try
        {
            string file = Path.Combine(dir, "system.kvprefix");
            await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(PrefixCachingMode.Enabled));
            await engine.SavePrefixAsync(Shared, file);
            var original = File.ReadAllBytes(file);
            var random = new Random(20261207);
            // A byte of the header (the block count), of the weights hash, of the tokens and of the KV data, then random ones.
            var offsets = new List<int> { 64, 70, 100, 104, original.Length / 2, original.Length - 1 };
            for (int i = 0; i < 6; i++) offsets.Add(random.Next(12, original.Length));
            foreach (int at in offsets)
            {
                if (at is >= 84 and < 100) continue; // the checksum itself
                var corrupt = (byte[])original.Clone();
                corrupt[at] ^= (byte)(1 << random.Next(8));
                File.WriteAllBytes(file, corrupt);
                Assert.That(async () => await engine.LoadPrefixAsync(file), Throws.TypeOf<ModelFormatException>().With.Message.Contains("checksum"), $"byte {at}");
            }
            var stats = await engine.GetStatsAsync();
            Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "a refused file pins nothing");
            File.WriteAllBytes(file, original);
            Assert.That(await engine.LoadPrefixAsync(file), Is.GreaterThan(0));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
