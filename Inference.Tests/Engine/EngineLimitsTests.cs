using Inference.Engine;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>Limits that keep one careless or hostile caller from costing unbounded memory or other callers' requests.</summary>
public class EngineLimitsTests
{
    [Test]
    public async Task HugeMaxTokens_AllocatesByTheContext_AndStopsAtIt()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, ContextLength = 64 });
        var prompt = engine.Tokenize("Once upon a time");
        var sampling = SamplingOptions.Greedy with { MaxTokens = 1_000_000, EndOfSequence = EndOfSequenceHandling.Ignore, Logprobs = 2 };
        engine.GenerateAsync(prompt, sampling); // warm up
        long before = GC.GetAllocatedBytesForCurrentThread();
        var stream = engine.GenerateAsync(prompt, sampling);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(allocated, Is.LessThan(128 * 1024), "creating a request with max_tokens 1,000,000 allocates by the context, not by max_tokens");
        var result = await stream.CompleteAsync();
        Assert.That(result.FinishReason, Is.EqualTo(FinishReason.Length));
        Assert.That(result.TokenIds, Has.Count.EqualTo(64 - prompt.Length));
    }

    [Test]
    public void Sampler_RentsItsVocabularySizedScratch()
    {
        const int vocab = 1 << 20;
        var options = new SamplingOptions { Temperature = 0.9f, TopK = 0, TopP = 0.9f, Seed = 5 };
        var logits = new float[vocab];
        var random = new Random(11);
        for (int i = 0; i < vocab; i++) logits[i] = (float)(random.NextDouble() * 10 - 5);
        var work = new float[vocab];
        logits.CopyTo(work);
        int expected = new Sampler(options, vocab).Sample(work, []); // warms the pool

        long before = GC.GetAllocatedBytesForCurrentThread();
        var samplers = new Sampler[16];
        for (int i = 0; i < samplers.Length; i++) samplers[i] = new Sampler(options, vocab);
        long perSampler = (GC.GetAllocatedBytesForCurrentThread() - before) / samplers.Length;
        Assert.That(perSampler, Is.LessThan(4096), "a sampler holds no vocabulary-sized buffer while it waits");

        before = GC.GetAllocatedBytesForCurrentThread();
        foreach (var s in samplers)
        {
            logits.CopyTo(work);
            Assert.That(s.Sample(work, []), Is.EqualTo(expected));
        }
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.LessThan(64 * 1024), "sampling reuses pooled scratch");
    }

    [Test]
    public async Task MaxWaitingRequests_RefusesBeyondTheQueue_ThenServesAgain()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, MaxWaitingRequests = 3 });
        var sampling = SamplingOptions.Greedy with { MaxTokens = 8 };
        var solo = await engine.CompleteAsync("Once upon a time", sampling);

        // Hold the engine thread: submitted requests wait to start.
        using var gate = new ManualResetEventSlim();
        var held = engine.Loop.InvokeAsync(_ => gate.Wait(TimeSpan.FromMinutes(1)));
        var first = engine.CompleteAsync("Once upon a time", sampling);
        var pair = engine.GenerateParallelAsync(engine.Tokenize("Once upon a time"), 2, sampling);
        pair[1].Start();
        Assert.That(engine.Loop.WaitingToStart, Is.EqualTo(3));

        var refused = Assert.Throws<RequestQueueFullException>(() => engine.GenerateAsync("Tom had a dog", sampling).Start());
        Assert.That(refused!.MaxWaitingRequests, Is.EqualTo(3));
        Assert.That(refused.Message, Does.Contain("MaxWaitingRequests"));
        Assert.That(async () => await engine.CompleteAsync("Tom had a dog", sampling), Throws.TypeOf<RequestQueueFullException>());
        Assert.That(() => engine.GenerateParallelAsync(engine.Tokenize("Tom"), 2, sampling)[0].Start(), Throws.TypeOf<RequestQueueFullException>());
        Assert.That(engine.Loop.WaitingToStart, Is.EqualTo(3), "a refused request leaves no count behind");

        gate.Set();
        Assert.That(await held, Is.True);
        Assert.That((await first).Text, Is.EqualTo(solo.Text));
        foreach (var s in pair) Assert.That((await s.CompleteAsync()).Text, Is.EqualTo(solo.Text));
        Assert.That(engine.Loop.WaitingToStart, Is.Zero);

        // Requests that end before they start (cancelled while queued) leave the queue too.
        using (var cts = new CancellationTokenSource())
        {
            var gate2 = new ManualResetEventSlim();
            var held2 = engine.Loop.InvokeAsync(_ => gate2.Wait(TimeSpan.FromMinutes(1)));
            var queued = Enumerable.Range(0, 3).Select(_ => engine.GenerateAsync("Lily", sampling, cts.Token)).ToArray();
            foreach (var q in queued) q.Start();
            cts.Cancel();
            gate2.Set();
            await held2;
            foreach (var q in queued) Assert.That(async () => await q.Completion, Throws.InstanceOf<OperationCanceledException>());
            gate2.Dispose();
        }
        Assert.That(engine.Loop.WaitingToStart, Is.Zero);
        Assert.That((await engine.CompleteAsync("Once upon a time", sampling)).Text, Is.EqualTo(solo.Text));
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }

    [Test]
    public async Task FailureWhileSampling_EndsOnlyThatRequest()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        string[] prompts = ["Once upon a time", "Tom had a dog", "Lily and Ben"];
        var sampling = SamplingOptions.Greedy with { MaxTokens = 30, EndOfSequence = EndOfSequenceHandling.Ignore };
        var solo = new List<string>();
        foreach (var p in prompts) solo.Add((await engine.CompleteAsync(p, sampling)).Text);
        var poisoned = engine.Tokenize("One day");
        int faults = 0;
        // The request with the poisoned prompt fails while sampling its fourth token, in a step shared with the others.
        engine.Loop.BeforeSample = r =>
        {
            if (r.PromptTokens.SequenceEqual(poisoned) && r.GeneratedCount == 3)
            {
                faults++;
                throw new InvalidOperationException("injected sampling fault");
            }
        };

        using var gate = new ManualResetEventSlim();
        var held = engine.Loop.InvokeAsync(_ => gate.Wait(TimeSpan.FromMinutes(1)));
        var good = prompts.Select(p => engine.CompleteAsync(p, sampling)).ToArray();
        var bad = engine.GenerateAsync(poisoned, sampling);
        var received = new List<GeneratedToken>();
        var badRun = Task.Run(async () =>
        {
            await foreach (var t in bad) received.Add(t);
        });
        gate.Set();
        Assert.That(await held, Is.True);

        Assert.That(async () => await badRun, Throws.InvalidOperationException.With.Message.EqualTo("injected sampling fault"));
        Assert.That(received, Has.Count.EqualTo(3), "the tokens before the fault were delivered");
        Assert.That(faults, Is.EqualTo(1));
        var results = await Task.WhenAll(good);
        for (int i = 0; i < prompts.Length; i++) Assert.That(results[i].Text, Is.EqualTo(solo[i]), prompts[i]);
        engine.Loop.BeforeSample = null;

        Assert.That((await engine.CompleteAsync(poisoned, sampling)).TokenIds, Has.Count.EqualTo(30));
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
    }
}
