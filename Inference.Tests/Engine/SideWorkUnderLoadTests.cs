using Inference.Engine;
using Inference.KvCache;
using Inference.Sampling;
using Inference.Search;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>
/// Loading a prefix file, scoring a prompt and beam search are scheduled requests: they share steps with ordinary
/// generation, wait for blocks and sequence slots, are preempted, cancelled and refused like any request, give the same
/// results as alone and leave no block behind.
/// </summary>
public class SideWorkUnderLoadTests
{
    private const string Story = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big red ball under a tree. She ran to the ball and picked it up. It was shiny and new.";

    private static readonly KvCacheOptions Kv = new() { BlockSize = 16, DataType = KvCacheDataType.Float32 };
    private static readonly SamplingOptions Long = SamplingOptions.Greedy with { MaxTokens = 100, EndOfSequence = EndOfSequenceHandling.Ignore };
    private static readonly string[] Others = ["Tom had a dog", "Lily and Ben went", "The sun was hot", "One day a bird"];

    private static long BlockBytes(InferenceEngine e) =>
        KvCacheStorage.GetBlockByteCount(e.Config.LayerCount, Kv.BlockSize, e.Config.KvHeadCount, e.Config.HeadDim, Kv.DataType);

    private static EngineOptions Options(long poolBytes = 0, int maxNumSeqs = 256, int budget = 2048) => new()
    {
        Threads = 1,
        KvCache = poolBytes > 0 ? Kv with { PoolBytes = poolBytes } : Kv,
        MaxNumSeqs = maxNumSeqs,
        MaxNumBatchedTokens = budget,
    };

    private static void AssertSameScores(IReadOnlyList<TokenLogprobs>? actualOrNull, IReadOnlyList<TokenLogprobs>? expectedOrNull, string what)
    {
        Assert.That(actualOrNull, Is.Not.Null, what);
        Assert.That(expectedOrNull, Is.Not.Null, what);
        var actual = actualOrNull!;
        var expected = expectedOrNull!;
        Assert.That(actual, Has.Count.EqualTo(expected.Count), what);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.That(actual[i].TokenId, Is.EqualTo(expected[i].TokenId), $"{what}: position {i + 1}");
            Assert.That(actual[i].Logprob, Is.EqualTo(expected[i].Logprob), $"{what}: position {i + 1}");
            Assert.That(actual[i].Top, Is.EqualTo(expected[i].Top), $"{what}: position {i + 1}");
        }
    }

    /// <summary>
    /// Called on the engine thread: holds it until the load (whose file is read on a pool thread first) has been queued,
    /// so the engine sees it while the pool is still full.
    /// </summary>
    private static Task<int> Submitted(InferenceEngine engine, Task<int> load)
    {
        Assert.That(SpinWait.SpinUntil(() => engine.Loop.WaitingToStart > 0 || load.IsCompleted, TimeSpan.FromMinutes(1)), Is.True);
        return load;
    }

    [Test]
    [CancelAfter(180_000)] // a guard against a hang only: the waits below are on the engine's state
    public async Task LoadPrefix_WaitsForBlocks_SharesSteps_PinsItsBlocks_AndACancelledLoadLeavesNone(CancellationToken guard)
    {
        var dir = TestData.TempDir();
        try
        {
            string file = Path.Combine(dir, "story.kvprefix");
            await using var reference = await InferenceEngine.LoadAsync(TestData.Stories260K, Options());
            var prompt = reference.Tokenize(Story);
            int saved = await reference.SavePrefixAsync(Story, file, guard);
            int fileBlocks = saved / Kv.BlockSize;
            Assert.That(fileBlocks, Is.GreaterThanOrEqualTo(3));
            var expected = await reference.GetLogitsAsync(prompt, guard);
            var soloLong = await reference.CompleteAsync("Tom had a dog", Long, guard);

            // (1) A pool of 8 blocks: the running request takes 7 of them in the end; once it holds 6 the file's blocks do not fit.
            await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(8 * BlockBytes(reference))))
            {
                Task<int>? load = null;
                bool waited = false;
                engine.Loop.StepCompleted = _ =>
                {
                    var stats = engine.Loop.CurrentStats();
                    if (load is null && stats.KvCache.UsedBlockCount >= 6) load = Submitted(engine, engine.LoadPrefixAsync(file, guard));
                    else if (load is not null && !load.IsCompleted && stats.WaitingCount > 0) waited = true;
                };
                var running = await engine.CompleteAsync("Tom had a dog", Long, guard);
                Assert.That(running.TokenIds, Is.EqualTo(soloLong.TokenIds));
                Assert.That(load, Is.Not.Null, "the pool filled up");
                Assert.That(await load!, Is.EqualTo(saved));
                Assert.That(waited, Is.True, "the load waited for blocks instead of failing");
                engine.Loop.StepCompleted = null;
                Assert.That((await engine.GetStatsAsync()).KvCache.UsedBlockCount, Is.EqualTo(fileBlocks), "the file's blocks stay pinned, nothing else");
                var hit = await engine.CompleteAsync(prompt, SamplingOptions.Greedy with { MaxTokens = 1 }, guard);
                Assert.That(hit.Metrics.PrefixHitTokens, Is.EqualTo(saved));
                Assert.That(await engine.GetLogitsAsync(prompt, guard), Is.EqualTo(expected));
            }

            // (2) Room for both: the load's copies share steps with a running decode.
            await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(budget: 16)))
            {
                Task<int>? load = null;
                int shared = 0;
                engine.Loop.StepCompleted = output =>
                {
                    if (load is null && output.Chunks.Length == 1 && output.Chunks[0].TokenCount == 1) load = engine.LoadPrefixAsync(file, guard);
                    bool decode = false, copy = false;
                    foreach (ref readonly var chunk in output.Chunks)
                    {
                        if (chunk.TokenCount == 1) decode = true;
                        else copy = true;
                    }
                    if (decode && copy) shared++;
                };
                var running = await engine.CompleteAsync("Tom had a dog", Long, guard);
                engine.Loop.StepCompleted = null;
                Assert.That(running.TokenIds, Is.EqualTo(soloLong.TokenIds));
                Assert.That(await load!, Is.EqualTo(saved));
                Assert.That(shared, Is.GreaterThanOrEqualTo(fileBlocks - 1), "the file was copied in budget-sized chunks beside the decode");
                Assert.That(await engine.GetLogitsAsync(prompt, guard), Is.EqualTo(expected));
                Assert.That((await engine.GetStatsAsync()).KvCache.UsedBlockCount, Is.EqualTo(fileBlocks));
            }

            // (3) A load cancelled while it waits for blocks takes none.
            await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(8 * BlockBytes(reference))))
            {
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(guard);
                Task<int>? load = null;
                engine.Loop.StepCompleted = _ =>
                {
                    var stats = engine.Loop.CurrentStats();
                    if (load is null && stats.KvCache.UsedBlockCount >= 6) load = Submitted(engine, engine.LoadPrefixAsync(file, cts.Token));
                    else if (load is not null && stats.WaitingCount > 0) cts.Cancel();
                };
                var running = await engine.CompleteAsync("Tom had a dog", Long, guard);
                engine.Loop.StepCompleted = null;
                Assert.That(running.TokenIds, Is.EqualTo(soloLong.TokenIds));
                Assert.That(async () => await load!, Throws.InstanceOf<OperationCanceledException>());
                var stats = await engine.GetStatsAsync();
                Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
                Assert.That(stats.WaitingCount + stats.RunningCount, Is.Zero);
                engine.Loop.KvCache.CheckInvariants();
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    [CancelAfter(180_000)]
    public async Task PromptLogprobs_BesideDecodesAndUnderPreemption_EqualTheirSoloScores(CancellationToken guard)
    {
        // 12 blocks of 16 tokens, a step budget of 24 tokens: prompts are scored in chunks and requests preempt each other.
        await using var probe = await InferenceEngine.LoadAsync(TestData.Stories260K, Options());
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(12 * BlockBytes(probe), budget: 24));
        var scoredPrompts = new[] { engine.Tokenize(Story), engine.Tokenize("Tom and Sue played with a ball in the garden. The ball went over the wall and they were sad.") };
        var scoring = SamplingOptions.Greedy with { MaxTokens = 20, PromptLogprobs = 3, Logprobs = 2, EndOfSequence = EndOfSequenceHandling.Ignore };
        var soloScored = new List<Completion>();
        foreach (var p in scoredPrompts) soloScored.Add(await engine.CompleteAsync(p, scoring, guard));
        var soloOthers = new List<Completion>();
        foreach (var p in Others) soloOthers.Add(await engine.CompleteAsync(p, Long, guard));
        long preemptionsBefore = (await engine.GetStatsAsync()).PreemptionCount;

        using var gate = new ManualResetEventSlim();
        var held = engine.Loop.InvokeAsync(_ => gate.Wait(TimeSpan.FromMinutes(1)));
        var others = Others.Select(p => engine.CompleteAsync(p, Long, guard)).ToArray();
        var scored = scoredPrompts.Select(p => engine.CompleteAsync(p, scoring, guard)).ToArray();
        gate.Set();
        Assert.That(await held, Is.True);

        for (int i = 0; i < scored.Length; i++)
        {
            var result = await scored[i];
            AssertSameScores(result.PromptLogprobs, soloScored[i].PromptLogprobs, $"scored prompt {i}");
            Assert.That(result.TokenIds, Is.EqualTo(soloScored[i].TokenIds));
            AssertSameScores(result.Logprobs, soloScored[i].Logprobs, $"output of scored prompt {i}");
        }
        for (int i = 0; i < Others.Length; i++) Assert.That((await others[i]).TokenIds, Is.EqualTo(soloOthers[i].TokenIds), Others[i]);
        var stats = await engine.GetStatsAsync();
        TestContext.Out.WriteLine($"preemptions {stats.PreemptionCount - preemptionsBefore}");
        Assert.That(stats.PreemptionCount, Is.GreaterThan(preemptionsBefore), "the pool was too small for all at once");
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        engine.Loop.KvCache.CheckInvariants();
    }

    [TestCase(256, 14)]  // room for every sequence: beams fork their parents' KV, blocks run short
    [TestCase(5, 40)]    // five sequences for two searches of 3 and 4 beams and four requests: beams wait for slots
    [CancelAfter(300_000)]
    public async Task BeamSearch_BesideDecodes_UnderPreemptionAndFewSlots_EqualsItsSoloResult(int maxNumSeqs, int blocks, CancellationToken guard)
    {
        await using var probe = await InferenceEngine.LoadAsync(TestData.Stories260K, Options());
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(blocks * BlockBytes(probe), maxNumSeqs, budget: 32));
        var searches = new[]
        {
            (Prompt: engine.Tokenize("Once upon a time, there was a little"), Options: new BeamSearchOptions { BeamWidth = 3, MaxTokens = 12 }),
            (Prompt: engine.Tokenize("Tom had a big red"), Options: new BeamSearchOptions { BeamWidth = 4, MaxTokens = 10, LengthPenalty = 0.5f, StopAtEndOfSequence = false }),
        };
        var solo = new List<BeamSearchResult>();
        foreach (var (p, o) in searches) solo.Add(await engine.BeamSearchAsync(p, o, guard));
        var soloOthers = new List<Completion>();
        foreach (var p in Others) soloOthers.Add(await engine.CompleteAsync(p, Long, guard));
        var before = await engine.GetStatsAsync();
        Assert.That(before.KvCache.UsedBlockCount, Is.Zero);

        int shared = 0;
        engine.Loop.StepCompleted = output =>
        {
            bool beam = false, other = false;
            foreach (ref readonly var chunk in output.Chunks)
            {
                if (chunk.RequestId < 0) beam = true;  // beams after the first generation run as the engine's own sequences
                else other = true;
            }
            if (beam && other) shared++;
        };
        using var gate = new ManualResetEventSlim();
        var held = engine.Loop.InvokeAsync(_ => gate.Wait(TimeSpan.FromMinutes(1)));
        var others = Others.Select(p => engine.CompleteAsync(p, Long, guard)).ToArray();
        var results = searches.Select(s => engine.BeamSearchAsync(s.Prompt, s.Options, guard)).ToArray();
        gate.Set();
        Assert.That(await held, Is.True);

        for (int i = 0; i < results.Length; i++)
        {
            var result = await results[i];
            Assert.That(result.Beams.Select(b => b.TokenIds), Is.EqualTo(solo[i].Beams.Select(b => b.TokenIds)), $"search {i}");
            Assert.That(result.Beams.Select(b => b.CumulativeLogprob), Is.EqualTo(solo[i].Beams.Select(b => b.CumulativeLogprob)), $"search {i}");
            Assert.That(result.Beams.Select(b => b.Text), Is.EqualTo(solo[i].Beams.Select(b => b.Text)), $"search {i}");
        }
        for (int i = 0; i < Others.Length; i++) Assert.That((await others[i]).TokenIds, Is.EqualTo(soloOthers[i].TokenIds), Others[i]);
        engine.Loop.StepCompleted = null;
        var stats = await engine.GetStatsAsync();
        TestContext.Out.WriteLine($"steps shared {shared}, preemptions {stats.PreemptionCount - before.PreemptionCount}");
        Assert.That(shared, Is.GreaterThan(0), "beams and other requests shared steps");
        Assert.That(stats.PreemptionCount, Is.GreaterThan(before.PreemptionCount), "the pool or the sequence slots ran short");
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(stats.WaitingCount + stats.RunningCount, Is.Zero);
        engine.Loop.KvCache.CheckInvariants();
    }

    [Test]
    [CancelAfter(120_000)]
    public async Task BeamSearch_CancelledMidway_FreesEveryBlock_AndOthersGoOn(CancellationToken guard)
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options());
        var soloOther = await engine.CompleteAsync("Tom had a dog", Long, guard);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(guard);
        int beamSteps = 0;
        engine.Loop.StepCompleted = output =>
        {
            foreach (ref readonly var chunk in output.Chunks)
                if (chunk.RequestId < 0 && ++beamSteps == 3) cts.Cancel();
        };
        var other = engine.CompleteAsync("Tom had a dog", Long, guard);
        var search = engine.BeamSearchAsync(engine.Tokenize("Once upon a time"), new BeamSearchOptions { BeamWidth = 4, MaxTokens = 200, StopAtEndOfSequence = false }, cts.Token);
        Assert.That(async () => await search, Throws.InstanceOf<OperationCanceledException>());
        Assert.That((await other).TokenIds, Is.EqualTo(soloOther.TokenIds));
        engine.Loop.StepCompleted = null;
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(stats.WaitingCount + stats.RunningCount, Is.Zero);
        engine.Loop.KvCache.CheckInvariants();
    }

    [Test]
    [CancelAfter(120_000)]
    public async Task SideWork_IsRefusedWhenItCanNeverRun_OrTheQueueIsFull(CancellationToken guard)
    {
        var dir = TestData.TempDir();
        try
        {
            await using var probe = await InferenceEngine.LoadAsync(TestData.Stories260K, Options());
            string file = Path.Combine(dir, "story.kvprefix");
            await probe.SavePrefixAsync(Story, file, guard);
            await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(6 * BlockBytes(probe), maxNumSeqs: 3) with { MaxWaitingRequests = 2 });
            var prompt = engine.Tokenize("Once upon a time");
            Assert.That(async () => await engine.BeamSearchAsync(prompt, new BeamSearchOptions { BeamWidth = 4 }, guard),
                Throws.ArgumentException.With.Message.Contains("MaxNumSeqs"));
            Assert.That(async () => await engine.BeamSearchAsync(prompt, new BeamSearchOptions { BeamWidth = 3, MaxTokens = 60 }, guard),
                Throws.ArgumentException.With.Message.Contains("KV blocks"));

            using var gate = new ManualResetEventSlim();
            var held = engine.Loop.InvokeAsync(_ => gate.Wait(TimeSpan.FromMinutes(1)));
            var shortRun = SamplingOptions.Greedy with { MaxTokens = 8 };
            var queued = new[] { engine.GenerateAsync(prompt, shortRun, guard), engine.GenerateAsync(prompt, shortRun, guard) };
            foreach (var q in queued) q.Start();
            Assert.That(async () => await engine.BeamSearchAsync(prompt, new BeamSearchOptions { BeamWidth = 2, MaxTokens = 4 }, guard), Throws.TypeOf<RequestQueueFullException>());
            Assert.That(async () => await engine.LoadPrefixAsync(file, guard), Throws.TypeOf<RequestQueueFullException>());
            Assert.That(async () => await engine.CompleteAsync(prompt, SamplingOptions.Greedy with { PromptLogprobs = 1 }, guard), Throws.TypeOf<RequestQueueFullException>());
            gate.Set();
            Assert.That(await held, Is.True);
            foreach (var q in queued) await q.CompleteAsync();
            var stats = await engine.GetStatsAsync();
            Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
            Assert.That(engine.Loop.WaitingToStart, Is.Zero);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
