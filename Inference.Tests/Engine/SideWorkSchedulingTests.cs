using Inference.Engine;
using Inference.KvCache;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>Logits and prefix files are computed as scheduled requests: batched with decodes, waiting for blocks.</summary>
public class SideWorkSchedulingTests
{
    private const string Story = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";

    [Test]
    [CancelAfter(120_000)] // a guard against a hang only: the waits below are on the engine's state
    public async Task GetLogitsAndSavePrefix_WaitForBlocks_WhenThePoolIsFull(CancellationToken guard)
    {
        var dir = TestData.TempDir();
        try
        {
            var kv = new KvCacheOptions { BlockSize = 16, DataType = KvCacheDataType.Float32 };
            await using var reference = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, KvCache = kv });
            var prompt = reference.Tokenize(Story);
            var expected = await reference.GetLogitsAsync(prompt, guard);

            // A pool of 8 blocks; a running request takes 7 of them, so the 2 blocks the prompt needs are not free.
            long blockBytes = KvCacheStorage.GetBlockByteCount(reference.Config.LayerCount, 16, reference.Config.KvHeadCount, reference.Config.HeadDim, KvCacheDataType.Float32);
            await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, KvCache = kv with { PoolBytes = 8 * blockBytes } });
            Assert.That((await engine.GetStatsAsync()).KvCache.TotalBlockCount, Is.EqualTo(8));
            var longSampling = SamplingOptions.Greedy with { MaxTokens = 100, EndOfSequence = EndOfSequenceHandling.Ignore };
            var longPrompt = engine.Tokenize("Tom had a dog");
            var soloLong = await engine.CompleteAsync(longPrompt, longSampling, guard);

            Task<float[]>? logits = null;
            Task<int>? saved = null;
            string file = Path.Combine(dir, "story.kvprefix");
            int stepsWithBoth = 0;
            engine.Loop.StepCompleted = output =>
            {
                // Once the long request holds most of the pool, ask for logits and a prefix file.
                if (logits is null && engine.Loop.KvCache.GetStats().UsedBlockCount >= 7)
                {
                    logits = engine.GetLogitsAsync(prompt, guard);
                    saved = engine.SavePrefixAsync(Story, file, guard);
                }
                bool decode = false, prefill = false;
                foreach (ref readonly var chunk in output.Chunks)
                {
                    if (chunk.TokenIds.Length == 1) decode = true;
                    else prefill = true;
                }
                if (decode && prefill) stepsWithBoth++;
            };
            var running = engine.CompleteAsync(longPrompt, longSampling, guard);
            Assert.That((await running).TokenIds, Is.EqualTo(soloLong.TokenIds));
            Assert.That(logits, Is.Not.Null, "the pool filled up");
            Assert.That(await logits!, Is.EqualTo(expected), "the same logits as computed alone");
            Assert.That(await saved!, Is.EqualTo(prompt.Length / 16 * 16));
            engine.Loop.StepCompleted = null;

            await using var user = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, KvCache = kv });
            Assert.That(await user.LoadPrefixAsync(file, guard), Is.EqualTo(prompt.Length / 16 * 16));
            Assert.That(await user.GetLogitsAsync(prompt, guard), Is.EqualTo(expected));
            var stats = await engine.GetStatsAsync();
            Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    [CancelAfter(120_000)]
    public async Task GetLogits_IsBatchedWithRunningDecodes(CancellationToken guard)
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        var prompt = engine.Tokenize(Story);
        var expected = await engine.GetLogitsAsync(prompt, guard);
        var sampling = SamplingOptions.Greedy with { MaxTokens = 60, EndOfSequence = EndOfSequenceHandling.Ignore };
        var solo = await engine.CompleteAsync("Tom had a dog", sampling, guard);

        Task<float[]>? logits = null;
        bool batched = false;
        engine.Loop.StepCompleted = output =>
        {
            if (logits is null && output.Chunks.Length == 1 && output.Chunks[0].TokenIds.Length == 1)
                logits = engine.GetLogitsAsync([.. prompt[..^1], prompt[^1]], guard);
            if (output.Chunks.Length >= 2) batched = true;
        };
        var running = await engine.CompleteAsync("Tom had a dog", sampling, guard);
        engine.Loop.StepCompleted = null;
        Assert.That(running.TokenIds, Is.EqualTo(solo.TokenIds));
        Assert.That(await logits!, Is.EqualTo(expected));
        Assert.That(batched, Is.True, "the logits request shared a step with the running decode");
    }
}
