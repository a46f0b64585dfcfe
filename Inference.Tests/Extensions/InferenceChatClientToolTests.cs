using System.Text.Json;
using Inference.Chat;
using Inference.Engine;
using Inference.Extensions.AI;
using Inference.Tests.Support;
using Microsoft.Extensions.AI;
using static Inference.Tests.Constraints.ConstraintTestSupport;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AIChatRole = Microsoft.Extensions.AI.ChatRole;

namespace Inference.Tests.Extensions;

/// <summary>Response formats and a tool loop through Microsoft.Extensions.AI's FunctionInvokingChatClient, with stories260K.</summary>
public class InferenceChatClientToolTests
{
    private const string Template =
        "{{ bos_token }}{% if tools %}Tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
        + "{% for m in messages %}{% if m.tool_calls %}{% for tc in m.tool_calls %}<tool_call>{{ tc.function | tojson }}</tool_call>{% endfor %}"
        + "{% elif m.role == 'tool' %}<tool_response>{{ m.content }}</tool_response>{% else %}{{ m.content }}{% endif %}{% endfor %}";

    private InferenceEngine _engine = null!;
    private InferenceChatClient _inner = null!;

    [OneTimeSetUp]
    public async Task LoadAsync()
    {
        _engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        _inner = new InferenceChatClient(_engine, new InferenceChatClientOptions { Template = ChatTemplate.Parse(Template) });
    }

    [OneTimeTearDown]
    public async Task DisposeAsync()
    {
        _inner.Dispose();
        await _engine.DisposeAsync();
    }

    [Test]
    public async Task JsonSchemaResponseFormat_ValidatesAgainstTheSchema()
    {
        string schema = FiniteSchemas[0];
        var options = new ChatOptions { Temperature = 1, Seed = 5, MaxOutputTokens = 400, ResponseFormat = ChatResponseFormat.ForJsonSchema(JsonDocument.Parse(schema).RootElement, "person") };
        var response = await _inner.GetResponseAsync([new AIChatMessage(AIChatRole.User, "Once upon a time")], options);
        Assert.That(response.FinishReason, Is.EqualTo(ChatFinishReason.Stop));
        AssertValid(schema, response.Text);
    }

    [Test]
    public async Task FunctionInvokingChatClient_RunsAToolLoop()
    {
        var calls = new List<int>();
        var tool = AIFunctionFactory.Create((int days) => { calls.Add(days); return $"sunny for {days} days"; }, "forecast", "Weather forecast");
        var recorder = new Recorder(_inner);
        using var client = new ChatClientBuilder(recorder).UseFunctionInvocation().Build();
        var options = new ChatOptions { Temperature = 1, Seed = 2, MaxOutputTokens = 200, Tools = [tool], ToolMode = ChatToolMode.RequireSpecific("forecast") };
        var response = await client.GetResponseAsync([new AIChatMessage(AIChatRole.User, "Will it rain?")], options);

        Assert.That(calls, Has.Count.EqualTo(1), () => "the function runs once, with the model's arguments: " + string.Join(" | ", response.Messages.Select(m => m.Role + ": " + m.Text)));
        var call = response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().Single();
        Assert.That(call.Name, Is.EqualTo("forecast"));
        var result = response.Messages.SelectMany(m => m.Contents).OfType<FunctionResultContent>().Single();
        Assert.That(result.CallId, Is.EqualTo(call.CallId));
        Assert.That(result.Result?.ToString(), Is.EqualTo($"sunny for {calls[0]} days"));
        var answer = response.Messages[^1];
        Assert.That(answer.Role, Is.EqualTo(AIChatRole.Assistant), "the loop ends with the model's answer");
        Assert.That(answer.Contents.OfType<FunctionCallContent>(), Is.Empty);
        Assert.That(answer.Text, Is.Not.Empty);

        // The second request carries the call and its result, rendered by the template into the prompt.
        Assert.That(recorder.InputTokens, Has.Count.EqualTo(2));
        string expected = $"Tools: forecastWill it rain?<tool_call>{{\"name\": \"forecast\", \"arguments\": {{\"days\": {calls[0]}}}}}</tool_call><tool_response>sunny for {calls[0]} days</tool_response>";
        Assert.That(recorder.InputTokens[1], Is.EqualTo(_engine.Tokenize(expected).Length));
    }

    [Test]
    public async Task FunctionInvokingChatClient_Streaming_RunsAToolLoop()
    {
        var calls = new List<int>();
        var tool = AIFunctionFactory.Create((int days) => { calls.Add(days); return $"dry for {days} days"; }, "forecast", "Weather forecast");
        using var client = new ChatClientBuilder(_inner).UseFunctionInvocation().Build();
        var options = new ChatOptions { Temperature = 1, Seed = 4, MaxOutputTokens = 200, Tools = [tool], ToolMode = ChatToolMode.RequireAny };
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync([new AIChatMessage(AIChatRole.User, "Will it rain?")], options)) updates.Add(u);

        Assert.That(calls, Has.Count.EqualTo(1));
        var contents = updates.SelectMany(u => u.Contents).ToList();
        var call = contents.OfType<FunctionCallContent>().Single();
        var result = contents.OfType<FunctionResultContent>().Single();
        Assert.That(result.CallId, Is.EqualTo(call.CallId));
        int after = contents.IndexOf(result);
        Assert.That(contents.Skip(after + 1).OfType<TextContent>().Any(t => t.Text.Length > 0), Is.True, "the model's answer streams after the result");
    }

    [Test]
    public async Task ToolModeNone_GivesText()
    {
        var tool = AIFunctionFactory.Create((int days) => "", "forecast");
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 10, Tools = [tool], ToolMode = ChatToolMode.None };
        var response = await _inner.GetResponseAsync([new AIChatMessage(AIChatRole.User, "Rain?")], options);
        Assert.That(response.Messages.Single().Contents.OfType<FunctionCallContent>(), Is.Empty);
        Assert.That(response.Text, Is.Not.Empty);
        Assert.That(response.Usage?.InputTokenCount, Is.EqualTo(_engine.Tokenize("Rain?").Length), "with tool mode none the tools are not rendered");
    }

    /// <summary>Passes requests through and keeps each one's prompt size.</summary>
    private sealed class Recorder(IChatClient inner) : DelegatingChatClient(inner)
    {
        // NOTE: the numbers, not the responses: FunctionInvokingChatClient sets the last response's usage to the loop's total.
        public List<long?> InputTokens { get; } = [];

        public override async Task<ChatResponse> GetResponseAsync(IEnumerable<AIChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
        {
            var response = await base.GetResponseAsync(messages, options, cancellationToken);
            InputTokens.Add(response.Usage?.InputTokenCount);
            return response;
        }
    }

    [Test]
    public async Task Streaming_WithARequiredTool_YieldsAFunctionCall()
    {
        var tool = AIFunctionFactory.Create((int days) => "", "forecast");
        var options = new ChatOptions { Temperature = 1, Seed = 9, MaxOutputTokens = 200, Tools = [tool], ToolMode = ChatToolMode.RequireAny };
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in _inner.GetStreamingResponseAsync([new AIChatMessage(AIChatRole.User, "Rain?")], options)) updates.Add(u);
        Assert.That(updates.SelectMany(u => u.Contents).OfType<FunctionCallContent>().Count(), Is.EqualTo(1), () => string.Concat(updates.Select(u => u.Text)));
        var call = updates.SelectMany(u => u.Contents).OfType<FunctionCallContent>().Single();
        Assert.That(call.Name, Is.EqualTo("forecast"));
        Assert.That(call.Arguments, Does.ContainKey("days"));
        Assert.That(updates[^1].FinishReason, Is.EqualTo(ChatFinishReason.ToolCalls));
    }
}
