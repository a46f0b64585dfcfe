using Inference.Engine;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>
/// The weights hash prefix files carry is cached between runs: used when its file, key, tensor list and a sample of
/// tensors check out; rebuilt (never trusted) when the model changed or the cache file is stale, corrupt or edited.
/// </summary>
public class WeightHashCacheTests
{
    private const string Prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";

    private static EngineOptions Options(string cacheDir) => new() { Threads = 1, WeightHashCacheDirectory = cacheDir };

    /// <summary>Loads <paramref name="model"/>, computes (or reads) its weights hash and reports what the cache did.</summary>
    private static async Task<(UInt128 Hash, WeightHashCacheOutcome Outcome, int Hashed)> Hash(string model, string cacheDir)
    {
        await using var engine = await InferenceEngine.LoadAsync(model, Options(cacheDir));
        var hash = engine.WeightsHash;
        return (hash, engine.WeightsCache.Outcome, engine.WeightsCache.TensorsHashed);
    }

    [Test]
    public async Task Cache_IsUsed_ThenRebuiltWhenStaleCorruptOrEdited_AndNeverChangesTheHash()
    {
        var dir = TestData.TempDir();
        try
        {
            // A copy of the model, so its time and bytes can be changed.
            string model = Path.Combine(dir, "model.gguf");
            File.Copy(TestData.Stories260K, model);
            string cacheDir = Path.Combine(dir, "cache");
            UInt128 truth;
            int tensors;
            await using (var plain = await InferenceEngine.LoadAsync(model, Options("")))
            {
                truth = plain.WeightsHash;
                Assert.That(plain.WeightsCache.Outcome, Is.EqualTo(WeightHashCacheOutcome.NotCached));
                tensors = plain.WeightsCache.TensorsHashed;
            }
            Assert.That(Directory.Exists(cacheDir), Is.False);

            var first = await Hash(model, cacheDir);
            Assert.That(first, Is.EqualTo((truth, WeightHashCacheOutcome.Created, tensors)));
            string[] files = Directory.GetFiles(cacheDir);
            Assert.That(files, Has.Length.EqualTo(1));
            string cache = files[0];

            var second = await Hash(model, cacheDir);
            Assert.That(second.Hash, Is.EqualTo(truth));
            Assert.That(second.Outcome, Is.EqualTo(WeightHashCacheOutcome.FromCache));
            Assert.That(second.Hashed, Is.LessThan(tensors), "only a sample is hashed again");
            Assert.That(second.Hashed, Is.GreaterThanOrEqualTo(2));

            // Stale: the model's time changed.
            File.SetLastWriteTimeUtc(model, File.GetLastWriteTimeUtc(model).AddMinutes(1));
            Assert.That(await Hash(model, cacheDir), Is.EqualTo((truth, WeightHashCacheOutcome.RebuiltStale, tensors)));
            Assert.That((await Hash(model, cacheDir)).Outcome, Is.EqualTo(WeightHashCacheOutcome.FromCache));

            // Corrupt: a flipped bit anywhere, a truncated file, garbage, an empty file.
            var good = File.ReadAllBytes(cache);
            var rng = new Random(7);
            for (int trial = 0; trial < 6; trial++)
            {
                var bad = (byte[])good.Clone();
                bad[rng.Next(bad.Length)] ^= (byte)(1 << rng.Next(8));
                File.WriteAllBytes(cache, bad);
                Assert.That(await Hash(model, cacheDir), Is.EqualTo((truth, WeightHashCacheOutcome.RebuiltCorrupt, tensors)), $"bit flip {trial}");
                Assert.That(File.ReadAllBytes(cache), Is.EqualTo(good), "rewritten");
            }
            foreach (var bad in new[] { good[..(good.Length / 2)], new byte[good.Length], Array.Empty<byte>() })
            {
                File.WriteAllBytes(cache, bad);
                Assert.That(await Hash(model, cacheDir), Is.EqualTo((truth, WeightHashCacheOutcome.RebuiltCorrupt, tensors)));
            }

            // Edited but consistent (checksum and key right, every tensor's hash wrong): the sample catches it.
            await using (var engine = await InferenceEngine.LoadAsync(model, Options(cacheDir)))
            {
                var descriptors = engine.WeightsCache.DescribeForTests();
                var key = engine.WeightsCache.KeyForTests();
                WeightHashCache.TryWrite(cache, key, descriptors, new UInt128[descriptors.Length]);
            }
            Assert.That(await Hash(model, cacheDir), Is.EqualTo((truth, WeightHashCacheOutcome.RebuiltSampleMismatch, tensors)));
            Assert.That((await Hash(model, cacheDir)).Outcome, Is.EqualTo(WeightHashCacheOutcome.FromCache));

            // A cache that cannot be written (its directory is a file) costs nothing but the hashing.
            string blocked = Path.Combine(dir, "blocked");
            File.WriteAllText(blocked, "not a directory");
            Assert.That(await Hash(model, blocked), Is.EqualTo((truth, WeightHashCacheOutcome.Created, tensors)));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public async Task PrefixFiles_LoadWhetherTheHashCameFromTheCacheOrNot()
    {
        var dir = TestData.TempDir();
        try
        {
            string model = Path.Combine(dir, "model.gguf");
            File.Copy(TestData.Stories260K, model);
            string cacheDir = Path.Combine(dir, "cache"), file = Path.Combine(dir, "story.kvprefix");
            await using (var maker = await InferenceEngine.LoadAsync(model, Options("")))
                await maker.SavePrefixAsync(Prompt, file);
            await using (var cold = await InferenceEngine.LoadAsync(model, Options(cacheDir)))
            {
                Assert.That(await cold.LoadPrefixAsync(file), Is.GreaterThan(0));
                Assert.That(cold.WeightsCache.Outcome, Is.EqualTo(WeightHashCacheOutcome.Created));
            }
            await using (var warm = await InferenceEngine.LoadAsync(model, Options(cacheDir)))
            {
                Assert.That(await warm.LoadPrefixAsync(file), Is.GreaterThan(0));
                Assert.That(warm.WeightsCache.Outcome, Is.EqualTo(WeightHashCacheOutcome.FromCache));
            }

            // The file made with the hash computed loads with the hash read from the cache, and vice versa.
            await using (var maker = await InferenceEngine.LoadAsync(model, Options(cacheDir)))
                await maker.SavePrefixAsync(Prompt, file);
            await using (var plain = await InferenceEngine.LoadAsync(model, Options("")))
                Assert.That(await plain.LoadPrefixAsync(file), Is.GreaterThan(0));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
