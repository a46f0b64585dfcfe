#pragma warning disable OPENAI001 // ChatCompletionOptions.Seed is marked experimental in the SDK
using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using Inference.Engine;
using Inference.Server;
using Inference.Tests.Support;
using OpenAI;
using OpenAI.Chat;
using static Inference.Tests.Constraints.ConstraintTestSupport;

namespace Inference.Tests.Server;

/// <summary>response_format, vLLM's guided_* fields and tools through the server, driven by the OpenAI SDK, with stories260K.</summary>
public class StructuredOutputServerTests
{
    // A Hermes-style template: tools listed, calls as <tool_call>{json}</tool_call>, results as <tool_response>.
    private const string Template =
        "{{ bos_token }}{% if tools %}Tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
        + "{% for m in messages %}{% if m.tool_calls %}{% for tc in m.tool_calls %}<tool_call>{{ tc.function | tojson }}</tool_call>{% endfor %}"
        + "{% elif m.role == 'tool' %}<tool_response>{{ m.content }}</tool_response>{% else %}{{ m.content }}{% endif %}{% endfor %}";

    private const string WeatherParameters = """{"type":"object","properties":{"city":{"type":"string","minLength":1,"maxLength":10},"unit":{"enum":["C","F"]}},"required":["city","unit"]}""";
    private const string TimeParameters = """{"type":"object","properties":{"zone":{"type":"integer"}},"required":["zone"]}""";

    private InferenceEngine _engine = null!;
    private TestServer _server = null!;
    private ChatClient _chat = null!;
    private HttpClient _http = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        _server = await TestServer.StartAsync(_engine, new ServerOptions { ModelId = "stories260K", ChatTemplate = Inference.Chat.ChatTemplate.Parse(Template) });
        _chat = _server.Chat("stories260K");
        _http = _server.Http;
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        await _server.DisposeAsync();
        await _engine.DisposeAsync();
    }

    private static ChatTool[] Tools =>
    [
        ChatTool.CreateFunctionTool("get_weather", "The weather in a city", BinaryData.FromString(WeatherParameters)),
        ChatTool.CreateFunctionTool("get_time", "The time in a zone", BinaryData.FromString(TimeParameters)),
    ];

    [Test]
    public async Task JsonSchemaResponseFormat_ReturnsJsonThatValidates()
    {
        foreach (var schema in FiniteSchemas[..4])
            for (long seed = 1; seed <= 2; seed++)
            {
                var options = new ChatCompletionOptions
                {
                    Temperature = 1, Seed = seed, MaxOutputTokenCount = 400,
                    ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("answer", BinaryData.FromString(schema), jsonSchemaIsStrict: true),
                };
                ChatCompletion completion = await _chat.CompleteChatAsync([new UserChatMessage("Once upon a time")], options);
                Assert.That(completion.FinishReason, Is.EqualTo(ChatFinishReason.Stop));
                AssertValid(schema, completion.Content.Single().Text);
            }
    }

    [Test]
    public async Task JsonSchemaResponseFormat_Streamed_ReturnsJsonThatValidates()
    {
        foreach (string schema in new[] { FiniteSchemas[0], FiniteSchemas[5] })
        {
            var options = new ChatCompletionOptions
            {
                Temperature = 1, Seed = 11, MaxOutputTokenCount = 400,
                ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("answer", BinaryData.FromString(schema), jsonSchemaIsStrict: true),
            };
            var text = new StringBuilder();
            int chunks = 0;
            ChatFinishReason? finish = null;
            await foreach (var update in _chat.CompleteChatStreamingAsync([new UserChatMessage("Once upon a time")], options))
            {
                foreach (var part in update.ContentUpdate) { text.Append(part.Text); chunks++; }
                Assert.That(update.ToolCallUpdates, Is.Empty);
                finish ??= update.FinishReason;
            }
            Assert.That(finish, Is.EqualTo(ChatFinishReason.Stop));
            Assert.That(chunks, Is.GreaterThan(1), "the reply arrives token by token");
            AssertValid(schema, text.ToString());
        }
    }

    [Test]
    public async Task JsonObjectResponseFormat_StartsAnObject()
    {
        var options = new ChatCompletionOptions { Temperature = 1, Seed = 4, MaxOutputTokenCount = 60, ResponseFormat = ChatResponseFormat.CreateJsonObjectFormat() };
        ChatCompletion completion = await _chat.CompleteChatAsync([new UserChatMessage("Once upon a time")], options);
        string text = completion.Content.Single().Text;
        Assert.That(text, Does.StartWith("{"));
        if (completion.FinishReason == ChatFinishReason.Stop) Assert.That(JsonDocument.Parse(text).RootElement.ValueKind, Is.EqualTo(JsonValueKind.Object));
    }

    [Test]
    public async Task JsonObjectResponseFormat_Streamed_IsAnObject()
    {
        var options = new ChatCompletionOptions { Temperature = 1, Seed = 6, MaxOutputTokenCount = 400, ResponseFormat = ChatResponseFormat.CreateJsonObjectFormat() };
        var text = new StringBuilder();
        ChatFinishReason? finish = null;
        await foreach (var update in _chat.CompleteChatStreamingAsync([new UserChatMessage("Once upon a time")], options))
        {
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            finish ??= update.FinishReason;
        }
        Assert.That(text.ToString(), Does.StartWith("{"));
        if (finish == ChatFinishReason.Stop) AssertValid("""{"type":"object"}""", text.ToString());
        else Assert.That(finish, Is.EqualTo(ChatFinishReason.Length));
    }

    [Test]
    public async Task RequiredToolChoice_ReturnsAWellFormedToolCall()
    {
        for (long seed = 1; seed <= 3; seed++)
        {
            var options = new ChatCompletionOptions { Temperature = 1, Seed = seed, MaxOutputTokenCount = 200, ToolChoice = ChatToolChoice.CreateRequiredChoice() };
            foreach (var tool in Tools) options.Tools.Add(tool);
            ChatCompletion completion = await _chat.CompleteChatAsync([new UserChatMessage("What is the weather in Paris?")], options);
            Assert.That(completion.FinishReason, Is.EqualTo(ChatFinishReason.ToolCalls));
            var call = completion.ToolCalls.Single();
            Assert.That(call.Id, Does.StartWith("call_"));
            Assert.That(call.FunctionName, Is.AnyOf("get_weather", "get_time"));
            AssertValid(call.FunctionName == "get_weather" ? WeatherParameters : TimeParameters, call.FunctionArguments.ToString());
        }
    }

    [Test]
    public async Task NamedToolChoice_Streamed_ArrivesAsToolCallDeltas()
    {
        var options = new ChatCompletionOptions { Temperature = 1, Seed = 7, MaxOutputTokenCount = 200, ToolChoice = ChatToolChoice.CreateFunctionChoice("get_time") };
        foreach (var tool in Tools) options.Tools.Add(tool);
        string? id = null, name = null;
        var arguments = new StringBuilder();
        ChatFinishReason? finish = null;
        await foreach (var update in _chat.CompleteChatStreamingAsync([new UserChatMessage("What time is it?")], options))
        {
            foreach (var part in update.ToolCallUpdates)
            {
                Assert.That(part.Index, Is.EqualTo(0));
                id ??= part.ToolCallId;
                name ??= part.FunctionName;
                if (part.FunctionArgumentsUpdate is { } a) arguments.Append(a.ToString());
            }
            finish ??= update.FinishReason;
        }
        Assert.That(finish, Is.EqualTo(ChatFinishReason.ToolCalls));
        Assert.That(id, Does.StartWith("call_"));
        Assert.That(name, Is.EqualTo("get_time"));
        AssertValid(TimeParameters, arguments.ToString());
    }

    [Test]
    public async Task RequiredToolChoice_Streamed_ArrivesAsToolCallDeltas_AndNamedChoice_NotStreamed()
    {
        var options = new ChatCompletionOptions { Temperature = 1, Seed = 3, MaxOutputTokenCount = 200, ToolChoice = ChatToolChoice.CreateRequiredChoice() };
        foreach (var tool in Tools) options.Tools.Add(tool);
        string? id = null, name = null;
        var arguments = new StringBuilder();
        ChatFinishReason? finish = null;
        await foreach (var update in _chat.CompleteChatStreamingAsync([new UserChatMessage("What is the weather in Paris?")], options))
        {
            foreach (var part in update.ContentUpdate) Assert.That(part.Text, Is.Empty, "a forced call has no content");
            foreach (var part in update.ToolCallUpdates)
            {
                Assert.That(part.Index, Is.EqualTo(0));
                if (id is null) Assert.That(part.FunctionName, Is.Not.Null, "the first delta of a call carries its name");
                id ??= part.ToolCallId;
                name ??= part.FunctionName;
                if (part.FunctionArgumentsUpdate is { } a) arguments.Append(a.ToString());
            }
            finish ??= update.FinishReason;
        }
        Assert.That(finish, Is.EqualTo(ChatFinishReason.ToolCalls));
        Assert.That(id, Does.Match("^call_[0-9a-f]{24}$"));
        Assert.That(name, Is.AnyOf("get_weather", "get_time"));
        AssertValid(name == "get_weather" ? WeatherParameters : TimeParameters, arguments.ToString());

        var named = new ChatCompletionOptions { Temperature = 1, Seed = 5, MaxOutputTokenCount = 200, ToolChoice = ChatToolChoice.CreateFunctionChoice("get_weather") };
        foreach (var tool in Tools) named.Tools.Add(tool);
        ChatCompletion completion = await _chat.CompleteChatAsync([new UserChatMessage("What time is it?")], named);
        Assert.That(completion.FinishReason, Is.EqualTo(ChatFinishReason.ToolCalls));
        var call = completion.ToolCalls.Single();
        Assert.That(call.FunctionName, Is.EqualTo("get_weather"));
        AssertValid(WeatherParameters, call.FunctionArguments.ToString());
    }

    [Test]
    public async Task ToolResults_InTheConversation_AreRendered_AndToolChoiceNoneGivesText()
    {
        var call = ChatToolCall.CreateFunctionToolCall("call_1", "get_weather", BinaryData.FromString("""{"city":"Paris","unit":"C"}"""));
        ChatMessage[] messages = [new UserChatMessage("Weather in Paris?"), new AssistantChatMessage([call]), new ToolChatMessage("call_1", "18C and sunny")];
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 10, ToolChoice = ChatToolChoice.CreateNoneChoice() };
        foreach (var tool in Tools) options.Tools.Add(tool);
        ChatCompletion completion = await _chat.CompleteChatAsync(messages, options);
        Assert.That(completion.ToolCalls, Is.Empty);
        Assert.That(completion.Content.Single().Text, Is.Not.Empty);
        Assert.That(completion.Usage.InputTokenCount, Is.EqualTo(_engine.Tokenize("Weather in Paris?<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"C\"}}</tool_call><tool_response>18C and sunny</tool_response>").Length));
    }

    [Test]
    public async Task GuidedChoiceAndRegex_AndBadConstraints_Are400()
    {
        var choice = await PostAsync("""{"messages":[{"role":"user","content":"Once upon a time"}],"guided_choice":["cat","dog"],"temperature":1,"seed":3}""");
        Assert.That(choice.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(Content(await choice.Content.ReadAsStringAsync()), Is.AnyOf("cat", "dog"));
        var regex = await PostAsync("""{"messages":[{"role":"user","content":"Once upon a time"}],"guided_regex":"[a-z]{3} [0-9]{2}","seed":3}""");
        Assert.That(Content(await regex.Content.ReadAsStringAsync()), Does.Match("^[a-z]{3} [0-9]{2}$"));
        var bad = await PostAsync("""{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"strin"}}}}""");
        Assert.That(bad.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        var error = JsonDocument.Parse(await bad.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.That(error.GetProperty("message").GetString(), Does.Contain("unknown type 'strin'"));
        Assert.That(error.GetProperty("param").GetString(), Is.EqualTo("response_format"));
        var both = await PostAsync("""{"messages":[{"role":"user","content":"x"}],"guided_regex":"a","guided_choice":["b"]}""");
        Assert.That(both.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        var unknownTool = await PostAsync("""{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}}""");
        Assert.That(unknownTool.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
    }

    private Task<HttpResponseMessage> PostAsync(string body) =>
        _http.PostAsync("/v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));

    private static string Content(string body) =>
        JsonDocument.Parse(body).RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
}
