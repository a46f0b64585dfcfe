using System.Diagnostics;
using Inference.Engine;
using Inference.KvCache;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>Many concurrent requests with cancellations, timeouts and a small KV pool: no leak, no hang, same text.</summary>
public class SoakTests
{
    private static readonly string[] Prompts = ["Once upon a time", "Tom had a dog", "The sun was hot", "Lily and Ben", "One day", "A big cat sat", "She said", ""];

    [Test]
    public async Task ThousandRequests_RandomCancellationsAndTimeouts_NoLeak_SameGreedyText()
    {
        // A pool of 48 blocks of 16 tokens holds only a few of the requests at once: the rest queue or get preempted.
        var options = new EngineOptions
        {
            Threads = 2,
            MaxNumSeqs = 32,
            MaxNumBatchedTokens = 96,
            ContextLength = 256,
            KvCache = new KvCacheOptions { PoolBytes = 48 * KvCacheStorage.GetBlockByteCount(5, 16, 4, 8, KvCacheDataType.Float16) },
        };
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, options);
        var solo = new Dictionary<string, IReadOnlyList<int>>();
        foreach (var p in Prompts)
            solo[p] = (await engine.CompleteAsync(p, SamplingOptions.Greedy with { MaxTokens = 40, EndOfSequence = EndOfSequenceHandling.Ignore })).TokenIds;

        var rng = new Random(20261126);
        var sw = Stopwatch.StartNew();
        int completed = 0, cancelled = 0;
        var tasks = new List<Task>();
        for (int i = 0; i < 1000; i++)
        {
            string prompt = Prompts[rng.Next(Prompts.Length)];
            int maxTokens = rng.Next(1, 41);
            int mode = rng.Next(4); // 0: cancel after a few tokens, 1: timeout, 2-3: run to the end
            int cancelAfter = rng.Next(0, 10);
            int timeoutMs = rng.Next(1, 200);
            tasks.Add(Task.Run(async () =>
            {
                using var cts = mode == 1 ? new CancellationTokenSource(timeoutMs) : new CancellationTokenSource();
                try
                {
                    var stream = engine.GenerateAsync(prompt, SamplingOptions.Greedy with { MaxTokens = maxTokens, EndOfSequence = EndOfSequenceHandling.Ignore }, cts.Token);
                    int seen = 0;
                    await foreach (var _ in stream)
                        if (mode == 0 && ++seen > cancelAfter) cts.Cancel();
                    var result = await stream.Completion;
                    Assert.That(result.TokenIds, Is.EqualTo(solo[prompt].Take(maxTokens)), $"'{prompt}' with {maxTokens} tokens");
                    Interlocked.Increment(ref completed);
                }
                catch (OperationCanceledException)
                {
                    Interlocked.Increment(ref cancelled);
                }
            }));
        }
        var all = Task.WhenAll(tasks);
        var finished = await Task.WhenAny(all, Task.Delay(TimeSpan.FromMinutes(5)));
        Assert.That(finished, Is.SameAs(all), "the soak did not finish within 5 minutes (deadlock?)");
        await all;

        var stats = await engine.GetStatsAsync();
        TestContext.Out.WriteLine($"completed {completed}, cancelled {cancelled}, preemptions {stats.PreemptionCount}, {sw.Elapsed.TotalSeconds:F1} s");
        Assert.That(completed + cancelled, Is.EqualTo(1000));
        Assert.That(completed, Is.GreaterThan(100));
        Assert.That(cancelled, Is.GreaterThan(100));
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "every KV block is free again");

        // Still serving, with the same text.
        var after = await engine.CompleteAsync(Prompts[0], SamplingOptions.Greedy with { MaxTokens = 40, EndOfSequence = EndOfSequenceHandling.Ignore });
        Assert.That(after.TokenIds, Is.EqualTo(solo[Prompts[0]]));
    }

    [Test]
    public async Task SmallPool_ForcesPreemption_OutputsUnchanged()
    {
        var options = new EngineOptions
        {
            Threads = 2,
            MaxNumSeqs = 16,
            MaxNumBatchedTokens = 64,
            ContextLength = 256,
            KvCache = new KvCacheOptions { BlockSize = 8, PoolBytes = 40 * KvCacheStorage.GetBlockByteCount(5, 8, 4, 8, KvCacheDataType.Float16) },
        };
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, options);
        var sampling = SamplingOptions.Greedy with { MaxTokens = 60, EndOfSequence = EndOfSequenceHandling.Ignore };
        var solo = new List<IReadOnlyList<int>>();
        foreach (var p in Prompts) solo.Add((await engine.CompleteAsync(p, sampling)).TokenIds);

        var results = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => engine.CompleteAsync(Prompts[i % Prompts.Length], sampling)));
        for (int i = 0; i < results.Length; i++) Assert.That(results[i].TokenIds, Is.EqualTo(solo[i % Prompts.Length]), $"request {i}");
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.PreemptionCount, Is.GreaterThan(0), "the pool was small enough to force preemption");
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }
}
