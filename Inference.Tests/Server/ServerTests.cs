using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net;
using System.Text;
using System.Text.Json;
using Inference.Chat;
using Inference.Engine;
using Inference.Sampling;
using Inference.Server;
using Inference.Tests.Support;
using OpenAI;
using OpenAI.Chat;

namespace Inference.Tests.Server;

/// <summary>The OpenAI-compatible server, started in-process on a loopback port and called through the official OpenAI SDK.</summary>
public class ServerTests
{
    private const string Prompt = "Once upon a time";

    private InferenceEngine _engine = null!;
    private TestServer _server = null!;
    private string _baseUrl = null!;
    private OpenAIClient _client = null!;
    private ChatClient _chat = null!;
    private HttpClient _http = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        _server = await TestServer.StartAsync(_engine, new ServerOptions { ModelId = "stories260K", ChatTemplate = TestServer.PlainTemplate });
        _baseUrl = _server.BaseUrl;
        Assert.That(_baseUrl, Does.StartWith("http://127.0.0.1:"));
        _client = _server.OpenAiClient();
        _chat = _client.GetChatClient("stories260K");
        _http = _server.Http;
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        await _server.DisposeAsync();
        await _engine.DisposeAsync();
    }

    private Task<Completion> Expected(int maxTokens, params string[] stops) =>
        _engine.CompleteAsync(Prompt, SamplingOptions.Greedy with { MaxTokens = maxTokens, StopStrings = stops });

    [Test]
    public async Task ModelsAndHealth()
    {
        var models = (await _client.GetOpenAIModelClient().GetModelsAsync()).Value;
        Assert.That(models.Select(m => m.Id), Is.EqualTo(new[] { "stories260K" }));
        var health = await _http.GetAsync("/health");
        Assert.That(health.StatusCode, Is.EqualTo(HttpStatusCode.OK));
    }

    [Test]
    public async Task ChatCompletion()
    {
        var expected = await Expected(20);
        ChatCompletion completion = await _chat.CompleteChatAsync([new UserChatMessage(Prompt)],
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 20 });
        Assert.That(completion.Content.Single().Text, Is.EqualTo(expected.Text));
        Assert.That(completion.Role, Is.EqualTo(ChatMessageRole.Assistant));
        Assert.That(completion.FinishReason, Is.EqualTo(ChatFinishReason.Length));
        Assert.That(completion.Usage.InputTokenCount, Is.EqualTo(expected.PromptTokenIds.Count));
        Assert.That(completion.Usage.OutputTokenCount, Is.EqualTo(20));
        Assert.That(completion.Usage.TotalTokenCount, Is.EqualTo(expected.PromptTokenIds.Count + 20));
        Assert.That(completion.Model, Is.EqualTo("stories260K"));
    }

    [Test]
    public async Task ChatCompletionStreaming()
    {
        var expected = await Expected(30);
        var text = new StringBuilder();
        int updates = 0;
        ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        await foreach (var update in _chat.CompleteChatStreamingAsync([new UserChatMessage(Prompt)],
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 30 }))
        {
            updates++;
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            finish ??= update.FinishReason;
            usage ??= update.Usage;
        }
        Assert.That(text.ToString(), Is.EqualTo(expected.Text));
        Assert.That(updates, Is.GreaterThan(10));
        Assert.That(finish, Is.EqualTo(ChatFinishReason.Length));
        Assert.That(usage, Is.Not.Null, "the SDK asks for include_usage; the server must send the usage chunk");
        Assert.That(usage!.OutputTokenCount, Is.EqualTo(30));
    }

    [Test]
    public async Task StopStringsAndSeed()
    {
        var expected = await Expected(60, "Lily");
        Assert.That(expected.FinishReason, Is.EqualTo(FinishReason.StopString));
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 60 };
        options.StopSequences.Add("Lily");
        ChatCompletion stopped = await _chat.CompleteChatAsync([new UserChatMessage(Prompt)], options);
        Assert.That(stopped.Content.Single().Text, Is.EqualTo(expected.Text));
        Assert.That(stopped.FinishReason, Is.EqualTo(ChatFinishReason.Stop));

#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK
        ChatCompletionOptions Seeded(long seed) => new() { Temperature = 1, TopP = 0.9f, MaxOutputTokenCount = 40, Seed = seed };
#pragma warning restore OPENAI001
        string a = (await _chat.CompleteChatAsync([new UserChatMessage(Prompt)], Seeded(7))).Value.Content[0].Text;
        string b = (await _chat.CompleteChatAsync([new UserChatMessage(Prompt)], Seeded(7))).Value.Content[0].Text;
        string c = (await _chat.CompleteChatAsync([new UserChatMessage(Prompt)], Seeded(8))).Value.Content[0].Text;
        Assert.That(b, Is.EqualTo(a));
        Assert.That(c, Is.Not.EqualTo(a));
    }

    [Test]
    public async Task LegacyCompletions()
    {
        var expected = await Expected(16);
        // NOTE: OpenAI 2.15.0 keeps its legacy completions client internal, so /v1/completions goes through the SDK's
        // own request pipeline (authentication, retries, error handling) that its public clients use.
        using var json = JsonDocument.Parse(await SendCompletionAsync(new { model = "stories260K", prompt = Prompt, max_tokens = 16, temperature = 0 }));
        var root = json.RootElement;
        Assert.That(root.GetProperty("object").GetString(), Is.EqualTo("text_completion"));
        Assert.That(root.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(expected.Text));
        Assert.That(root.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        Assert.That(root.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(16));

        // Streaming through the SDK's pipeline: SSE chunks, then [DONE].
        string sse = await SendCompletionAsync(new { prompt = Prompt, max_tokens = 16, temperature = 0, stream = true, stop = "girl" });
        var events = sse.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.That(events, Has.All.StartWith("data: "));
        Assert.That(events[^1], Is.EqualTo("data: [DONE]"));
        var text = new StringBuilder();
        string? finish = null;
        foreach (var e in events[..^1])
        {
            using var chunk = JsonDocument.Parse(e["data: ".Length..]);
            var choice = chunk.RootElement.GetProperty("choices")[0];
            text.Append(choice.GetProperty("text").GetString());
            if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = choice.GetProperty("finish_reason").GetString();
        }
        var expectedStopped = await _engine.CompleteAsync(Prompt, SamplingOptions.Greedy with { MaxTokens = 16, StopStrings = ["girl"] });
        Assert.That(text.ToString(), Is.EqualTo(expectedStopped.Text));
        Assert.That(finish, Is.EqualTo(expectedStopped.FinishReason == FinishReason.StopString ? "stop" : "length"));
    }

    [Test]
    public async Task LogprobsThroughTheSdk_ChatStreamedAndNot()
    {
        var expected = await _engine.CompleteAsync(Prompt, SamplingOptions.Greedy with { MaxTokens = 10, Logprobs = 3 });
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 10, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 };
        ChatCompletion completion = await _chat.CompleteChatAsync([new UserChatMessage(Prompt)], options);
        var logprobs = completion.ContentTokenLogProbabilities;
        Assert.That(logprobs, Has.Count.EqualTo(expected.TokenIds.Count));
        for (int i = 0; i < logprobs.Count; i++)
        {
            var e = expected.Logprobs![i];
            Assert.That(logprobs[i].LogProbability, Is.EqualTo(e.Logprob).Within(1e-6));
            Assert.That(logprobs[i].Utf8Bytes!.Value.ToArray(), Is.EqualTo(_engine.Tokenizer.GetTokenBytes(e.TokenId).ToArray()));
            Assert.That(logprobs[i].TopLogProbabilities, Has.Count.EqualTo(3));
            Assert.That(logprobs[i].TopLogProbabilities[0].LogProbability, Is.EqualTo(e.Logprob).Within(1e-6), "greedy picks the top alternative");
            Assert.That(logprobs[i].TopLogProbabilities.Select(t => t.LogProbability), Is.Ordered.Descending);
        }
        Assert.That(string.Concat(logprobs.Select(l => l.Token)), Is.EqualTo(expected.Text));

        var streamed = new List<ChatTokenLogProbabilityDetails>();
        await foreach (var update in _chat.CompleteChatStreamingAsync([new UserChatMessage(Prompt)], options))
            streamed.AddRange(update.ContentTokenLogProbabilities);
        Assert.That(streamed.Select(l => l.LogProbability), Is.EqualTo(logprobs.Select(l => l.LogProbability)));
        Assert.That(streamed.Select(l => l.Token), Is.EqualTo(logprobs.Select(l => l.Token)));

        ChatCompletion plain = await _chat.CompleteChatAsync([new UserChatMessage(Prompt)], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 10 });
        Assert.That(plain.ContentTokenLogProbabilities, Is.Empty);
    }

    [Test]
    public async Task CompletionsLogprobsAndEcho()
    {
        var prompt = _engine.Tokenize(Prompt);
        var expected = await _engine.CompleteAsync(prompt, SamplingOptions.Greedy with { MaxTokens = 6, Logprobs = 2, PromptLogprobs = 2 });
        using var json = JsonDocument.Parse(await SendCompletionAsync(new { prompt = Prompt, max_tokens = 6, temperature = 0, logprobs = 2, echo = true }));
        var choice = json.RootElement.GetProperty("choices")[0];
        Assert.That(choice.GetProperty("text").GetString(), Is.EqualTo(Prompt + expected.Text));
        var lp = choice.GetProperty("logprobs");
        var values = lp.GetProperty("token_logprobs").EnumerateArray().ToArray();
        Assert.That(values, Has.Length.EqualTo(prompt.Length + expected.TokenIds.Count));
        Assert.That(values[0].ValueKind, Is.EqualTo(JsonValueKind.Null), "the first prompt token has nothing before it");
        for (int i = 1; i < prompt.Length; i++) Assert.That(values[i].GetSingle(), Is.EqualTo(expected.PromptLogprobs![i - 1].Logprob).Within(1e-6));
        for (int i = 0; i < expected.TokenIds.Count; i++) Assert.That(values[prompt.Length + i].GetSingle(), Is.EqualTo(expected.Logprobs![i].Logprob).Within(1e-6));
        var top = lp.GetProperty("top_logprobs").EnumerateArray().ToArray();
        Assert.That(top[^1].EnumerateObject().Count(), Is.InRange(1, 2));
        var offsets = lp.GetProperty("text_offset").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.That(offsets, Is.Ordered);

        // Streamed: each chunk's logprobs belong to its token.
        string sse = await SendCompletionAsync(new { prompt = Prompt, max_tokens = 6, temperature = 0, logprobs = 0, stream = true });
        var streamed = new List<float>();
        foreach (var e in sse.Split("\n\n", StringSplitOptions.RemoveEmptyEntries)[..^1])
        {
            using var chunk = JsonDocument.Parse(e["data: ".Length..]);
            var l = chunk.RootElement.GetProperty("choices")[0].GetProperty("logprobs");
            if (l.ValueKind == JsonValueKind.Object) foreach (var v in l.GetProperty("token_logprobs").EnumerateArray()) streamed.Add(v.GetSingle());
        }
        Assert.That(streamed, Is.EqualTo(expected.Logprobs!.Select(x => x.Logprob)).Within(1e-6f));
    }

    private async Task<string> SendCompletionAsync(object body)
    {
        var pipeline = _chat.Pipeline;
        using PipelineMessage message = pipeline.CreateMessage();
        message.Request.Method = "POST";
        message.Request.Uri = new Uri(_baseUrl + "/v1/completions");
        message.Request.Headers.Set("Content-Type", "application/json");
        message.Request.Content = BinaryContent.Create(BinaryData.FromObjectAsJson(body));
        await pipeline.SendAsync(message);
        Assert.That(message.Response!.Status, Is.EqualTo(200), message.Response.Content.ToString());
        return message.Response.Content.ToString();
    }

    [Test]
    public async Task NChoices()
    {
        // n through the SDK's protocol layer: three seeded choices, each repeatable, usage counting the prompt once.
        string Body(int n) => JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = Prompt } }, n, seed = 11, temperature = 1.0, max_tokens = 12 });
        async Task<JsonDocument> Post(int n)
        {
            ClientResult r = await _chat.CompleteChatAsync(BinaryContent.Create(BinaryData.FromString(Body(n))));
            return JsonDocument.Parse(r.GetRawResponse().Content.ToString());
        }
        using var three = await Post(3);
        var choices = three.RootElement.GetProperty("choices");
        Assert.That(choices.GetArrayLength(), Is.EqualTo(3));
        var texts = Enumerable.Range(0, 3).Select(i => choices[i].GetProperty("message").GetProperty("content").GetString()).ToArray();
        Assert.That(Enumerable.Range(0, 3).Select(i => choices[i].GetProperty("index").GetInt32()), Is.EqualTo(new[] { 0, 1, 2 }));
        Assert.That(texts.Distinct().Count(), Is.GreaterThan(1));
        using var one = await Post(1);
        Assert.That(one.RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), Is.EqualTo(texts[0]));
        var usage = three.RootElement.GetProperty("usage");
        Assert.That(usage.GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(_engine.Tokenize(Prompt).Length));
        Assert.That(usage.GetProperty("completion_tokens").GetInt32(), Is.EqualTo(36));
    }

    [Test]
    public async Task ThirtyTwoConcurrentClients()
    {
        var expected = await Expected(16);
        var tasks = Enumerable.Range(0, 32).Select(async i =>
        {
            // Each its own SDK client, as independent callers would be.
            var client = _server.Chat("stories260K", apiKey: "k" + i);
            if (i % 2 == 0)
            {
                ChatCompletion c = await client.CompleteChatAsync([new UserChatMessage(Prompt)], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 16 });
                return c.Content[0].Text;
            }
            var sb = new StringBuilder();
            await foreach (var u in client.CompleteChatStreamingAsync([new UserChatMessage(Prompt)], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 16 }))
                foreach (var part in u.ContentUpdate) sb.Append(part.Text);
            return sb.ToString();
        }).ToArray();
        var texts = await Task.WhenAll(tasks);
        Assert.That(texts, Has.All.EqualTo(expected.Text));
    }

    [Test]
    public async Task StreamingSeveralChoicesInterleavesThemByIndex()
    {
        string body = JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = Prompt } }, n = 2, seed = 5, temperature = 1.0, max_tokens = 10, stream = true });
        var response = await _http.PostAsync("/v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        Assert.That(response.Content.Headers.ContentType!.MediaType, Is.EqualTo("text/event-stream"));
        var events = (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.That(events[^1], Is.EqualTo("data: [DONE]"));
        var texts = new[] { new StringBuilder(), new StringBuilder() };
        var finishes = new string?[2];
        foreach (var e in events[..^1])
        {
            using var chunk = JsonDocument.Parse(e["data: ".Length..]);
            var choice = chunk.RootElement.GetProperty("choices")[0];
            int index = choice.GetProperty("index").GetInt32();
            if (choice.GetProperty("delta").TryGetProperty("content", out var content)) texts[index].Append(content.GetString());
            if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finishes[index] = choice.GetProperty("finish_reason").GetString();
        }
        // The same request without streaming gives the same two texts.
        string whole = JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = Prompt } }, n = 2, seed = 5, temperature = 1.0, max_tokens = 10 });
        using var json = JsonDocument.Parse(await (await _http.PostAsync("/v1/chat/completions", new StringContent(whole, Encoding.UTF8, "application/json"))).Content.ReadAsStringAsync());
        for (int i = 0; i < 2; i++)
        {
            Assert.That(texts[i].ToString(), Is.EqualTo(json.RootElement.GetProperty("choices")[i].GetProperty("message").GetProperty("content").GetString()));
            Assert.That(finishes[i], Is.Not.Null);
        }
    }

    [Test]
    public async Task AClientThatHangsUpMidStreamDoesNotHurtTheServer()
    {
        string body = JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = Prompt } }, max_tokens = 1000, stream = true });
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") })
        using (var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            for (int i = 0; i < 3; i++) Assert.That(await reader.ReadLineAsync(), Is.Not.Null);
        } // hang up
        var expected = await Expected(8);
        ChatCompletion after = await _chat.CompleteChatAsync([new UserChatMessage(Prompt)], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 8 });
        Assert.That(after.Content[0].Text, Is.EqualTo(expected.Text));
    }

    [TestCase("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":7}", "temperature")]
    [TestCase("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"top_p\":0}", "top_p")]
    [TestCase("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":0}", "max_tokens")]
    [TestCase("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":0}", "n")]
    [TestCase("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[\"\"]}", "stop")]
    [TestCase("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"seed\":\"x\"}", "seed")]
    [TestCase("{\"messages\":[{\"role\":\"wizard\",\"content\":\"hi\"}]}", "messages[0].role")]
    [TestCase("{\"messages\":[]}", "messages")]
    [TestCase("{\"model\":\"x\"}", "messages")]
    [TestCase("{not json", null)]
    [TestCase("[1,2]", null)]
    public async Task BadChatRequestsGet400WithTheErrorShape(string body, string? param)
    {
        var response = await _http.PostAsync("/v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var error = json.RootElement.GetProperty("error");
        Assert.That(error.GetProperty("message").GetString(), Is.Not.Empty);
        Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
        Assert.That(error.TryGetProperty("code", out _), Is.True);
        Assert.That(error.GetProperty("param").ValueKind == JsonValueKind.Null ? null : error.GetProperty("param").GetString(), Is.EqualTo(param));
    }

    [Test]
    public async Task BadRequestsThroughTheSdkAndOtherErrors()
    {
        var e = Assert.ThrowsAsync<ClientResultException>(() => _chat.CompleteChatAsync([new UserChatMessage(Prompt)], new ChatCompletionOptions { Temperature = 9 }))!;
        Assert.That(e.Status, Is.EqualTo(400));
        Assert.That(e.Message, Does.Contain("temperature"));

        // A prompt longer than the context.
        string longPrompt = string.Concat(Enumerable.Repeat("Once upon a time there was a cat. ", 600));
        var tooLong = await _http.PostAsync("/v1/completions", new StringContent(JsonSerializer.Serialize(new { prompt = longPrompt, max_tokens = 4 }), Encoding.UTF8, "application/json"));
        Assert.That(tooLong.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(await tooLong.Content.ReadAsStringAsync(), Does.Contain("context_length_exceeded"));

        var badToken = await _http.PostAsync("/v1/completions", new StringContent("{\"prompt\":[1,99999]}", Encoding.UTF8, "application/json"));
        Assert.That(badToken.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));

        var missing = await _http.GetAsync("/v1/nothing");
        Assert.That(missing.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        using var json = JsonDocument.Parse(await missing.Content.ReadAsStringAsync());
        Assert.That(json.RootElement.GetProperty("error").GetProperty("message").GetString(), Is.Not.Empty);
    }

    [Test]
    public async Task MetricsAreExported()
    {
        await _chat.CompleteChatAsync([new UserChatMessage(Prompt)], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 2 });
        var metrics = await _http.GetStringAsync("/metrics");
        Assert.That(metrics, Does.Contain("inference_server_requests"));
        Assert.That(metrics, Does.Contain("inference_server_completion_tokens"));
    }
}
