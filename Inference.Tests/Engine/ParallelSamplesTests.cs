using Inference.Engine;
using Inference.KvCache;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary><c>n</c> samples of one prompt: one prefill, then copy-on-write forks of its KV.</summary>
public class ParallelSamplesTests
{
    private static async Task<Completion[]> RunAll(IReadOnlyList<GenerationStream> streams) =>
        await Task.WhenAll(streams.Select(s => s.CompleteAsync()));

    [Test]
    public async Task ForkedSamples_EqualIndependentRequests_GreedyAndSeeded()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions
        {
            Threads = 1,
            KvCache = new KvCacheOptions { BlockSize = 16, PrefixCaching = PrefixCachingMode.Disabled },
        });
        // 37 prompt tokens: the forks share a partly filled last block, copied on their first write.
        var prompt = engine.Tokenize("Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.");
        Assert.That(prompt.Length % 16, Is.Not.Zero);

        var greedy = SamplingOptions.Greedy with { MaxTokens = 30, EndOfSequence = EndOfSequenceHandling.Ignore };
        var expected = await engine.CompleteAsync(prompt, greedy);
        var four = await RunAll(engine.GenerateParallelAsync(prompt, 4, greedy));
        Assert.That(four.Select(c => c.TokenIds), Has.All.EqualTo(expected.TokenIds));

        var seeded = new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0, Seed = 100, MaxTokens = 30, EndOfSequence = EndOfSequenceHandling.Ignore, Logprobs = 1 };
        var samples = await RunAll(engine.GenerateParallelAsync(prompt, 3, seeded));
        for (int i = 0; i < 3; i++)
        {
            var alone = await engine.CompleteAsync(prompt, seeded with { Seed = 100 + (ulong)i });
            Assert.That(samples[i].TokenIds, Is.EqualTo(alone.TokenIds), $"sample {i}");
            Assert.That(samples[i].Seed, Is.EqualTo(100 + (ulong)i));
            Assert.That(samples[i].Logprobs!.Select(l => l.Logprob), Is.EqualTo(alone.Logprobs!.Select(l => l.Logprob)).Within(1e-5f));
        }
        Assert.That(samples.Select(s => string.Join(",", s.TokenIds)).Distinct().Count(), Is.GreaterThan(1));
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }

    [Test]
    public async Task FourSamplesOfA448TokenPrompt_HoldThePromptBlocksOnce()
    {
        const int blockSize = 16, promptLength = 448, maxTokens = 40;
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions
        {
            Threads = 1,
            // Without prefix caching any sharing comes from the forks.
            KvCache = new KvCacheOptions { BlockSize = blockSize, PrefixCaching = PrefixCachingMode.Disabled },
        });
        var rng = new Random(5);
        var prompt = Enumerable.Range(0, promptLength).Select(i => i == 0 ? 1 : 3 + rng.Next(engine.Config.VocabSize - 3)).ToArray();
        var sampling = new SamplingOptions { Temperature = 1, Seed = 9, MaxTokens = maxTokens, EndOfSequence = EndOfSequenceHandling.Ignore };
        var streams = engine.GenerateParallelAsync(prompt, 4, sampling);

        // Read the first token of sample 0; the others run on. The stats query is handled between two steps, while
        // all four still have tokens to go (each step adds at most one token per sample).
        var others = streams.Skip(1).Select(s => s.CompleteAsync()).ToArray();
        await using var first = streams[0].GetAsyncEnumerator();
        Assert.That(await first.MoveNextAsync());
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.RunningCount, Is.EqualTo(4));
        int promptBlocks = promptLength / blockSize;
        int newBlocks = (maxTokens + blockSize - 1) / blockSize;
        TestContext.Out.WriteLine($"blocks in use {stats.KvCache.UsedBlockCount}; prompt {promptBlocks}, bound {promptBlocks + 4 * (newBlocks + 1)}");
        Assert.That(stats.KvCache.UsedBlockCount, Is.LessThanOrEqualTo(promptBlocks + 4 * (newBlocks + 1)));
        while (await first.MoveNextAsync())
        {
        }
        var completions = await Task.WhenAll(others);
        Assert.That(completions.Select(c => c.TokenIds.Count), Has.All.EqualTo(maxTokens));
        Assert.That((await engine.GetStatsAsync()).KvCache.UsedBlockCount, Is.Zero);
    }

    [Test]
    public async Task CancellingTheFirstSampleBeforeItStarts_LeavesTheOthersRunning()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        var prompt = engine.Tokenize("Once upon a time");
        var greedy = SamplingOptions.Greedy with { MaxTokens = 8, EndOfSequence = EndOfSequenceHandling.Ignore };
        var expected = await engine.CompleteAsync(prompt, greedy);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var streams = engine.GenerateParallelAsync(prompt, 3, greedy);
        // The first stream's enumeration submits the group and is cancelled at once.
        Assert.That(async () => { await foreach (var _ in streams[0].WithCancellation(cts.Token)) { } }, Throws.InstanceOf<OperationCanceledException>());
        var rest = await Task.WhenAll(streams.Skip(1).Select(s => s.CompleteAsync()));
        Assert.That(rest.Select(c => c.TokenIds), Has.All.EqualTo(expected.TokenIds));
        Assert.That((await engine.GetStatsAsync()).KvCache.UsedBlockCount, Is.Zero);
    }
}
