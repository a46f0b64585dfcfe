using System.Text.Json;
using Inference.Engine;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

public class InferenceEngineTests
{
    private static string ExpectedText(string file)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestData.Path("expected/" + file)));
        return doc.RootElement.GetProperty("expected_text").GetString()!;
    }

    [Test]
    public async Task Stories260K_GreedyFromBos_ReproducesLlama2c200()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 2 });
        var result = await engine.CompleteAsync("", SamplingOptions.Greedy with { MaxTokens = 200, EndOfSequence = EndOfSequenceHandling.Ignore });
        Assert.That(result.Text, Is.EqualTo(ExpectedText("stories260K-greedy-200.json")));
        Assert.That(result.TokenIds, Has.Count.EqualTo(200));
        Assert.That(result.FinishReason, Is.EqualTo(FinishReason.Length));
    }

    [Test]
    public async Task Stories260K_GreedyFromPrompt_ContinuesLlama2cText()
    {
        const string prompt = "Once upon a time";
        var expected = ExpectedText("stories260K-greedy-256.json");
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 2 });
        var result = await engine.CompleteAsync(prompt, SamplingOptions.Greedy with { MaxTokens = 200 });
        Assert.That(result.TokenIds, Has.Count.EqualTo(200));
        Assert.That(expected, Does.StartWith(prompt + result.Text));
        Assert.That(result.Metrics.TimeToFirstToken, Is.GreaterThan(TimeSpan.Zero));
        Assert.That(result.Metrics.Latency, Is.GreaterThanOrEqualTo(result.Metrics.TimeToFirstToken));
    }

    [Test]
    public async Task Streaming_ConcatenatesToCompletionText()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        var stream = engine.GenerateAsync("Lily and Ben", new SamplingOptions { Seed = 7, MaxTokens = 60 });
        var text = new System.Text.StringBuilder();
        int count = 0;
        await foreach (var t in stream)
        {
            text.Append(t.Text);
            count++;
        }
        var completion = await stream.Completion;
        Assert.That(text.ToString(), Is.EqualTo(completion.Text));
        Assert.That(completion.Seed, Is.EqualTo(7UL));

        var again = await engine.CompleteAsync("Lily and Ben", new SamplingOptions { Seed = 7, MaxTokens = 60 });
        Assert.That(again.Text, Is.EqualTo(completion.Text), "the same seed gives the same text");
    }

    [Test]
    public async Task StopString_EndsGenerationBeforeIt()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        var result = await engine.CompleteAsync("", SamplingOptions.Greedy with { MaxTokens = 200, StopStrings = ["Lily."] });
        Assert.That(result.FinishReason, Is.EqualTo(FinishReason.StopString));
        Assert.That(result.Text, Is.EqualTo("Once upon a time, there was a little girl named "));
    }

    [Test]
    public async Task ConcurrentGreedyRequests_EachMatchItsSoloText()
    {
        string[] prompts = ["Once upon a time", "Tom had a dog", "The sun", "Lily and Ben went to the park", "One day", "A big cat", "She said", "The little bird"];
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 2, MaxNumSeqs = 16, MaxNumBatchedTokens = 64 });
        var solo = new List<string>();
        foreach (var p in prompts) solo.Add((await engine.CompleteAsync(p, SamplingOptions.Greedy with { MaxTokens = 48 })).Text);

        var tasks = Enumerable.Range(0, 16).Select(i => engine.CompleteAsync(prompts[i % prompts.Length], SamplingOptions.Greedy with { MaxTokens = 48 })).ToArray();
        var results = await Task.WhenAll(tasks);
        for (int i = 0; i < results.Length; i++) Assert.That(results[i].Text, Is.EqualTo(solo[i % prompts.Length]), $"request {i}");
    }

    [Test]
    public async Task Cancellation_EndsRequest_AndEngineKeepsServing()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        using var cts = new CancellationTokenSource();
        int seen = 0;
        Assert.That(async () =>
        {
            await foreach (var _ in engine.GenerateAsync("Once", SamplingOptions.Greedy with { MaxTokens = 500, EndOfSequence = EndOfSequenceHandling.Ignore }, cts.Token))
                if (++seen == 5) cts.Cancel();
        }, Throws.InstanceOf<OperationCanceledException>());
        Assert.That(seen, Is.EqualTo(5));

        // Breaking out early ends the request too.
        await foreach (var _ in engine.GenerateAsync("Once", SamplingOptions.Greedy))
            break;

        var after = await engine.CompleteAsync("", SamplingOptions.Greedy with { MaxTokens = 8 });
        Assert.That(after.Text, Does.StartWith("Once upon a time"));
    }

    [Test]
    [CancelAfter(120_000)] // a guard against a hang only: the waits below are on the engine's state
    public async Task StalledConsumers_YieldTheirSlots_AndResumeWithTheSameText(CancellationToken guard)
    {
        string[] prompts = ["Once upon a time", "Tom had a dog", "Lily and Ben", "The sun"];
        var sampling = SamplingOptions.Greedy with { MaxTokens = 150, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, MaxNumSeqs = prompts.Length });
        var solo = new List<string>();
        foreach (var p in prompts) solo.Add((await engine.CompleteAsync(p, sampling, guard)).Text);

        // MaxNumSeqs streams read one token each and stop reading: they run until their output backs up, then pause.
        var streams = new List<IAsyncEnumerator<GeneratedToken>>();
        var texts = new List<System.Text.StringBuilder>();
        foreach (var p in prompts)
        {
            var e = engine.GenerateAsync(p, sampling, guard).GetAsyncEnumerator(guard);
            Assert.That(await e.MoveNextAsync(), Is.True);
            streams.Add(e);
            texts.Add(new System.Text.StringBuilder(e.Current.Text));
        }

        // New requests are served while those consumers sleep.
        for (int i = 0; i < 3; i++)
        {
            var r = await engine.CompleteAsync(prompts[i], SamplingOptions.Greedy with { MaxTokens = 20, EndOfSequence = EndOfSequenceHandling.Ignore }, guard);
            Assert.That(solo[i], Does.StartWith(r.Text));
        }
        Assert.That((await engine.GetStatsAsync()).PreemptionCount, Is.GreaterThan(0), "paused requests gave up their slots");

        // The paused streams resume when read, with the text they would have produced alone.
        for (int i = 0; i < streams.Count; i++)
        {
            await using var e = streams[i];
            while (await e.MoveNextAsync()) texts[i].Append(e.Current.Text);
            Assert.That(texts[i].ToString(), Is.EqualTo(solo[i]), prompts[i]);
        }
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }

    [Test]
    public async Task CancelBeforeAdmission_AndDuringPrefill_EndCleanly()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, MaxNumBatchedTokens = 4 });
        using (var cancelled = new CancellationTokenSource())
        {
            cancelled.Cancel();
            Assert.That(async () => await engine.CompleteAsync("Once upon a time", SamplingOptions.Greedy, cancelled.Token), Throws.InstanceOf<OperationCanceledException>());
        }

        // A long prompt prefilled 4 tokens per step: cancel while it is still being computed.
        var longPrompt = string.Join(" ", Enumerable.Repeat("Lily and Ben went to the park.", 30));
        using var cts = new CancellationTokenSource();
        int promptLength = engine.Tokenize(longPrompt).Length, computedAtCancel = -1;
        // The first step that computed part of the prompt cancels it (on the engine thread, before the next step).
        engine.Loop.StepCompleted = output =>
        {
            if (computedAtCancel >= 0 || output.Chunks.Length == 0) return;
            computedAtCancel = output.Chunks[0].Request.ComputedTokenCount;
            cts.Cancel();
        };
        var task = engine.CompleteAsync(longPrompt, SamplingOptions.Greedy with { MaxTokens = 5 }, cts.Token);
        Assert.That(async () => await task, Throws.InstanceOf<OperationCanceledException>());
        engine.Loop.StepCompleted = null;
        Assert.That(computedAtCancel, Is.InRange(1, promptLength - 1), "cancelled while the prompt was still being computed");

        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
        Assert.That((await engine.CompleteAsync("", SamplingOptions.Greedy with { MaxTokens = 4 })).Text, Does.StartWith("Once upon"));
    }

    /// <summary>The CPU executor, failing every forward pass that computes <see cref="PoisonToken"/>.</summary>
    private sealed class FaultyExecutorFactory : IForwardExecutorFactory
    {
        public const int PoisonToken = 500;
        public int FailedBatchCount;
        public int FailedMultiSequenceBatchCount;

        public string? UnavailableReason => null;

        public IForwardExecutor Create(ForwardExecutorContext context) => new Executor(new CpuForwardExecutor(context), this);

        private sealed class Executor(CpuForwardExecutor inner, FaultyExecutorFactory owner) : IForwardExecutor
        {
            public Device Device => inner.Device;
            public string DeviceName => inner.DeviceName;
            public Inference.KvCache.IKvBlockStorage Storage => inner.Storage;
            public void Dispose() => inner.Dispose();

            public void Forward(Inference.Models.ModelBatch batch, Span<float> logits)
            {
                if (batch.Tokens.Contains(PoisonToken))
                {
                    owner.FailedBatchCount++;
                    if (batch.Segments.Count > 1) owner.FailedMultiSequenceBatchCount++;
                    // Leave garbage behind, as a failure midway would.
                    logits.Fill(float.NaN);
                    throw new InvalidOperationException("injected fault");
                }
                inner.Forward(batch, logits);
            }
        }
    }

    [Test]
    public async Task FailingRequest_EndsWithItsError_OthersKeepTheirText()
    {
        var factory = new FaultyExecutorFactory();
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, ExecutorFactory = factory });
        string[] prompts = ["Once upon a time", "Tom had a dog", "Lily and Ben"];
        var sampling = SamplingOptions.Greedy with { MaxTokens = 40, EndOfSequence = EndOfSequenceHandling.Ignore };
        var solo = new List<string>();
        foreach (var p in prompts) solo.Add((await engine.CompleteAsync(p, sampling)).Text);
        int[] poisoned = [.. engine.Tokenize("One day"), FaultyExecutorFactory.PoisonToken, 42];

        // Hold the engine thread so that all four requests are admitted together and share their first forward pass.
        using var gate = new ManualResetEventSlim();
        var held = engine.Loop.InvokeAsync(_ => gate.Wait(TimeSpan.FromMinutes(1)));
        var good = prompts.Select(p => engine.CompleteAsync(p, sampling)).ToArray();
        var bad = engine.CompleteAsync(poisoned, sampling);
        gate.Set();
        Assert.That(await held, Is.True);

        Assert.That(async () => await bad, Throws.InvalidOperationException.With.Message.EqualTo("injected fault"));
        var results = await Task.WhenAll(good);
        for (int i = 0; i < prompts.Length; i++) Assert.That(results[i].Text, Is.EqualTo(solo[i]), prompts[i]);
        Assert.That(factory.FailedMultiSequenceBatchCount, Is.GreaterThan(0), "the fault hit a batch shared with healthy requests");

        // A request failing alone; the engine still serves afterwards, with no block left behind.
        Assert.That(async () => await engine.CompleteAsync(new[] { 1, FaultyExecutorFactory.PoisonToken }, sampling), Throws.InvalidOperationException);
        Assert.That((await engine.CompleteAsync(prompts[0], sampling)).Text, Is.EqualTo(solo[0]));
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
    }

    [Test]
    public async Task EmptyPrompt_And_InvalidTokens()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        Assert.That((await engine.CompleteAsync(Array.Empty<int>(), SamplingOptions.Greedy with { MaxTokens = 3 })).TokenIds, Has.Count.EqualTo(3));
        Assert.That(() => engine.GenerateAsync(new[] { 1, 9999 }), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => engine.GenerateAsync(new[] { -1 }), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public async Task PromptLongerThanContext_Throws_OrTruncates()
    {
        var longPrompt = string.Join(" ", Enumerable.Repeat("Once upon a time", 40));
        await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, ContextLength = 64 }))
        {
            Assert.That(() => engine.GenerateAsync(longPrompt), Throws.ArgumentException.With.Message.Contains("context"));
        }
        await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, ContextLength = 64, PromptOverflow = PromptOverflow.TruncateLeft }))
        {
            var r = await engine.CompleteAsync(longPrompt, SamplingOptions.Greedy with { MaxTokens = 100 });
            Assert.That(r.PromptTokenIds, Has.Count.EqualTo(63));
            Assert.That(r.PromptTokenIds[0], Is.EqualTo(1), "BOS is kept");
            Assert.That(r.FinishReason, Is.EqualTo(FinishReason.Length));
            Assert.That(r.TokenIds, Has.Count.EqualTo(1));
        }
    }

    [Test]
    public void Load_MissingFile_Throws()
    {
        Assert.That(async () => await InferenceEngine.LoadAsync("/no/such/model.gguf"), Throws.InstanceOf<FileNotFoundException>());
    }
}
