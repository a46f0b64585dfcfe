using Inference.Chat;
using Inference.Engine;
using Inference.Extensions.AI;
using Inference.Sampling;
using Inference.Tests.Support;
using Microsoft.Extensions.AI;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AIChatRole = Microsoft.Extensions.AI.ChatRole;

namespace Inference.Tests.Extensions;

public class InferenceChatClientTests
{
    // Every message's content after BOS: with one user message the prompt equals the plain prompt, so the greedy
    // reply is stories260K's known continuation.
    private static readonly ChatTemplate Plain = ChatTemplate.Parse("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}");

    private InferenceEngine _engine = null!;
    private IChatClient _client = null!;

    [OneTimeSetUp]
    public async Task LoadAsync()
    {
        _engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        _client = new InferenceChatClient(_engine, new InferenceChatClientOptions { Template = Plain });
    }

    [OneTimeTearDown]
    public async Task DisposeAsync()
    {
        _client.Dispose();
        await _engine.DisposeAsync();
    }

    [Test]
    public async Task ResponseMatchesTheEngineAndReportsUsage()
    {
        var expected = await _engine.CompleteAsync("Once upon a time", SamplingOptions.Greedy with { MaxTokens = 20 });
        var response = await _client.GetResponseAsync([new AIChatMessage(AIChatRole.User, "Once upon a time")],
            new ChatOptions { Temperature = 0, MaxOutputTokens = 20 });
        Assert.That(response.Text, Is.EqualTo(expected.Text));
        Assert.That(response.Messages.Single().Role, Is.EqualTo(AIChatRole.Assistant));
        Assert.That(response.FinishReason, Is.EqualTo(ChatFinishReason.Length));
        Assert.That(response.Usage!.InputTokenCount, Is.EqualTo(expected.PromptTokenIds.Count));
        Assert.That(response.Usage.OutputTokenCount, Is.EqualTo(20));
        Assert.That(response.Usage.TotalTokenCount, Is.EqualTo(expected.PromptTokenIds.Count + 20));
        Assert.That(response.ModelId, Is.EqualTo(_engine.ModelName));
    }

    [Test]
    public async Task StreamingConcatenatesToTheSameTextAndEndsWithUsage()
    {
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 30 };
        ChatResponse whole = await _client.GetResponseAsync("Once upon a time", options);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in _client.GetStreamingResponseAsync("Once upon a time", options)) updates.Add(update);
        Assert.That(updates.Count, Is.GreaterThan(5));
        Assert.That(string.Concat(updates.Select(u => u.Text)), Is.EqualTo(whole.Text));
        Assert.That(updates.Select(u => u.ResponseId).Distinct().Count(), Is.EqualTo(1));
        var last = updates[^1];
        Assert.That(last.FinishReason, Is.EqualTo(ChatFinishReason.Length));
        var usage = last.Contents.OfType<UsageContent>().Single().Details;
        Assert.That(usage.OutputTokenCount, Is.EqualTo(30));
        // The standard aggregation helper rebuilds the same response.
        var rebuilt = updates.ToChatResponse();
        Assert.That(rebuilt.Text, Is.EqualTo(whole.Text));
        Assert.That(rebuilt.Usage!.OutputTokenCount, Is.EqualTo(30));
    }

    [Test]
    public async Task StopSequencesSeedAndSamplingOptionsApply()
    {
        var stopped = await _client.GetResponseAsync("Once upon a time", new ChatOptions { Temperature = 0, MaxOutputTokens = 60, StopSequences = ["Lily"] });
        Assert.That(stopped.FinishReason, Is.EqualTo(ChatFinishReason.Stop));
        Assert.That(stopped.Text, Is.EqualTo(", there was a little girl named "));

        var sampled = new ChatOptions { Temperature = 1.0f, TopP = 0.9f, TopK = 20, Seed = 1234, MaxOutputTokens = 40 };
        var a = await _client.GetResponseAsync("Once upon a time", sampled);
        var b = await _client.GetResponseAsync("Once upon a time", sampled);
        var c = await _client.GetResponseAsync("Once upon a time", new ChatOptions { Temperature = 1.0f, TopP = 0.9f, TopK = 20, Seed = 99, MaxOutputTokens = 40 });
        Assert.That(b.Text, Is.EqualTo(a.Text));
        Assert.That(c.Text, Is.Not.EqualTo(a.Text));
    }

    [Test]
    public void MappingAndValidation()
    {
        var defaults = new SamplingOptions();
        var mapped = InferenceChatClient.ToSamplingOptions(new ChatOptions
        {
            Temperature = 0.3f, TopP = 0.5f, TopK = 7, MaxOutputTokens = 11, StopSequences = ["x"], Seed = 42, FrequencyPenalty = 0.1f, PresencePenalty = 0.2f,
        }, defaults);
        Assert.That((mapped.Temperature, mapped.TopP, mapped.TopK, mapped.MaxTokens, mapped.Seed, mapped.FrequencyPenalty, mapped.PresencePenalty),
            Is.EqualTo((0.3f, 0.5f, 7, 11, (ulong?)42UL, 0.1f, 0.2f)));
        Assert.That((mapped.MinP, mapped.RepetitionPenalty, mapped.PenaltyLastN), Is.EqualTo((defaults.MinP, defaults.RepetitionPenalty, defaults.PenaltyLastN)));
        Assert.That(mapped.StopStrings, Is.EqualTo(new[] { "x" }));
        Assert.That(InferenceChatClient.ToSamplingOptions(null, defaults), Is.SameAs(defaults));

        var e = Assert.Throws<ArgumentOutOfRangeException>(() => _client.GetStreamingResponseAsync("hi", new ChatOptions { TopP = 2f }))!;
        Assert.That(e.ParamName, Is.EqualTo("TopP"));
        Assert.Throws<ArgumentException>(() => _client.GetStreamingResponseAsync([new AIChatMessage(new AIChatRole("narrator"), "x")]));
        Assert.That(_client.GetService<ChatClientMetadata>()!.DefaultModelId, Is.EqualTo(_engine.ModelName));
        Assert.That(_client.GetService<InferenceEngine>(), Is.SameAs(_engine));
    }

    [Test]
    public async Task InstructionsBecomeASystemMessageAndRolesReachTheTemplate()
    {
        var template = ChatTemplate.Parse("{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:");
        using var client = new InferenceChatClient(_engine, new InferenceChatClientOptions { Template = template });
        // The rendered prompt is checked through the usage count: it must equal the tokens of the expected text.
        var response = await client.GetResponseAsync([new AIChatMessage(AIChatRole.User, "Hi")], new ChatOptions { Instructions = "Be kind.", MaxOutputTokens = 2, Temperature = 0 });
        int expected = _engine.Tokenize("system: Be kind.\nuser: Hi\nassistant:").Length;
        Assert.That(response.Usage!.InputTokenCount, Is.EqualTo(expected));
    }

    [Test]
    public void CancellationStopsTheStream()
    {
        using var cts = new CancellationTokenSource();
        Assert.CatchAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in _client.GetStreamingResponseAsync("Once upon a time", new ChatOptions { MaxOutputTokens = 200 }, cts.Token))
                cts.Cancel();
        });
    }
}
