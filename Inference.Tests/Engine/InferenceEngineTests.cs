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
        var task = engine.CompleteAsync(longPrompt, SamplingOptions.Greedy with { MaxTokens = 5 }, cts.Token);
        await Task.Delay(20);
        cts.Cancel();
        Assert.That(async () => await task, Throws.InstanceOf<OperationCanceledException>());

        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
        Assert.That((await engine.CompleteAsync("", SamplingOptions.Greedy with { MaxTokens = 4 })).Text, Does.StartWith("Once upon"));
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
