using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Inference.Engine;
using Inference.Server;
using Inference.Tests.Support;
using OpenAI;
using OpenAI.Chat;

namespace Inference.Tests.Server;

/// <summary>The server's limits (queue, body, prompt arrays), its API key and its CORS policy.</summary>
public class ServerLimitsAndKeyTests
{
    private static Task<TestServer> StartAsync(InferenceEngine engine, ServerOptions options) =>
        TestServer.StartAsync(engine, options with { ModelId = "m", ChatTemplate = TestServer.PlainTemplate });

    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    private static async Task<JsonElement> ErrorOf(HttpResponseMessage response)
    {
        using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var error = body.RootElement.GetProperty("error").Clone();
        foreach (var field in new[] { "message", "type", "param", "code" }) Assert.That(error.TryGetProperty(field, out _), field);
        return error;
    }

    [Test]
    [CancelAfter(120_000)] // a guard against a hang only
    public async Task FullQueue_IsAnswered429WithRetryAfter_BeforeAnyStreamStarts(CancellationToken guard)
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, MaxWaitingRequests = 1 });
        await using (var server = await StartAsync(engine, new ServerOptions()))
        {
            var http = server.Http;
            using var gate = new ManualResetEventSlim();
            var held = engine.Loop.InvokeAsync(_ => gate.Wait(TimeSpan.FromMinutes(1)));
            var first = http.PostAsync("/v1/completions", Json("""{"prompt":"Once upon a time","max_tokens":5,"temperature":0}"""), guard);
            // The first request waits to start while the engine is held.
            while (engine.Loop.WaitingToStart < 1)
            {
                guard.ThrowIfCancellationRequested();
                await Task.Yield();
            }
            foreach (var body in new[]
            {
                """{"prompt":"Tom","max_tokens":5,"stream":true}""",
                """{"prompt":["Tom","Lily"],"max_tokens":5}""",
                """{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":5}""",
            })
            {
                var path = body.Contains("messages") ? "/v1/chat/completions" : "/v1/completions";
                var refused = await http.PostAsync(path, Json(body), guard);
                Assert.That(refused.StatusCode, Is.EqualTo(HttpStatusCode.TooManyRequests), body);
                Assert.That(refused.Headers.RetryAfter?.Delta, Is.EqualTo(TimeSpan.FromSeconds(1)));
                var error = await ErrorOf(refused);
                Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("rate_limit_exceeded"));
            }
            Assert.That(engine.Loop.WaitingToStart, Is.EqualTo(1), "refused requests leave nothing queued");
            gate.Set();
            Assert.That(await held, Is.True);
            var ok = await first;
            Assert.That(ok.StatusCode, Is.EqualTo(HttpStatusCode.OK));
            var again = await http.PostAsync("/v1/completions", Json("""{"prompt":"Tom","max_tokens":5}"""), guard);
            Assert.That(again.StatusCode, Is.EqualTo(HttpStatusCode.OK));
            var stats = await engine.GetStatsAsync();
            Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
            Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
        }
    }

    [Test]
    public async Task LargeBodies_AndTooManyPrompts_AreRefused()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        await using (var server = await StartAsync(engine, new ServerOptions { MaxRequestBodyBytes = 4096, MaxPrompts = 3, MaxChoices = 2 }))
        {
            var http = server.Http;
            string big = $$"""{"prompt":"{{new string('a', 10_000)}}","max_tokens":1}""";
            var sized = await http.PostAsync("/v1/completions", Json(big));
            Assert.That(sized.StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
            Assert.That((await ErrorOf(sized)).GetProperty("code").GetString(), Is.EqualTo("request_too_large"));

            // Without Content-Length (chunked) the body is cut off while it is read.
            var chunked = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(big)));
            chunked.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = chunked };
            request.Headers.TransferEncodingChunked = true;
            var cut = await http.SendAsync(request);
            Assert.That(cut.StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));

            var many = await http.PostAsync("/v1/completions", Json("""{"prompt":["a","b","c","d"],"max_tokens":1}"""));
            Assert.That(many.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That((await ErrorOf(many)).GetProperty("param").GetString(), Is.EqualTo("prompt"));
            var n = await http.PostAsync("/v1/completions", Json("""{"prompt":"a","n":3,"max_tokens":1}"""));
            Assert.That(n.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That((await ErrorOf(n)).GetProperty("param").GetString(), Is.EqualTo("n"));

            var fine = await http.PostAsync("/v1/completions", Json("""{"prompt":["a","b","c"],"n":2,"max_tokens":1000000,"temperature":0}"""));
            Assert.That(fine.StatusCode, Is.EqualTo(HttpStatusCode.OK), await fine.Content.ReadAsStringAsync());
            using var body = JsonDocument.Parse(await fine.Content.ReadAsStringAsync());
            Assert.That(body.RootElement.GetProperty("choices").GetArrayLength(), Is.EqualTo(6));
        }
    }

    [Test]
    public async Task ApiKey_IsRequiredOnV1_HealthAndMetricsStayOpen()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        await using (var server = await StartAsync(engine, new ServerOptions { ApiKey = "sk-test-key" }))
        {
            var http = server.Http;
            foreach (var (path, method) in new[] { ("/v1/models", HttpMethod.Get), ("/v1/completions", HttpMethod.Post), ("/v1/chat/completions", HttpMethod.Post), ("/v1/nothing", HttpMethod.Get) })
            {
                foreach (string? header in new[] { null, "Bearer wrong", "Bearer sk-test-ke", "Bearer sk-test-key2", "Basic sk-test-key", "sk-test-key" })
                {
                    var request = new HttpRequestMessage(method, path);
                    if (method == HttpMethod.Post) request.Content = Json("""{"prompt":"a","max_tokens":1,"messages":[{"role":"user","content":"a"}]}""");
                    if (header is not null) request.Headers.TryAddWithoutValidation("Authorization", header);
                    var response = await http.SendAsync(request);
                    Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized), $"{path} with '{header}'");
                    var error = await ErrorOf(response);
                    Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("invalid_api_key"));
                    Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
                }
            }
            Assert.That((await http.GetAsync("/health")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
            Assert.That((await http.GetAsync("/metrics")).StatusCode, Is.EqualTo(HttpStatusCode.OK));

            var withKey = new HttpRequestMessage(HttpMethod.Get, "/v1/models");
            withKey.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "sk-test-key");
            Assert.That((await http.SendAsync(withKey)).StatusCode, Is.EqualTo(HttpStatusCode.OK));

            // Through the OpenAI SDK: the right key is served, a wrong one gets 401.
            var good = server.Chat("m", apiKey: "sk-test-key");
            ChatCompletion reply = await good.CompleteChatAsync([new UserChatMessage("Once upon a time")], new ChatCompletionOptions { MaxOutputTokenCount = 3, Temperature = 0 });
            Assert.That(reply.Content.Single().Text, Is.Not.Empty);
            var bad = server.Chat("m", apiKey: "sk-other");
            var e = Assert.ThrowsAsync<ClientResultException>(() => bad.CompleteChatAsync([new UserChatMessage("x")]))!;
            Assert.That(e.Status, Is.EqualTo(401));
        }
    }

    [Test]
    public async Task Cors_IsOffUnlessOriginsAreNamed()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        static HttpRequestMessage Preflight(string origin)
        {
            var request = new HttpRequestMessage(HttpMethod.Options, "/v1/chat/completions");
            request.Headers.Add("Origin", origin);
            request.Headers.Add("Access-Control-Request-Method", "POST");
            request.Headers.Add("Access-Control-Request-Headers", "authorization,content-type");
            return request;
        }
        await using (var server = await StartAsync(engine, new ServerOptions()))
        {
            var http = server.Http;
            var preflight = await http.SendAsync(Preflight("https://evil.example"));
            Assert.That(preflight.Headers.Contains("Access-Control-Allow-Origin"), Is.False);
            var get = new HttpRequestMessage(HttpMethod.Get, "/v1/models");
            get.Headers.Add("Origin", "https://evil.example");
            var response = await http.SendAsync(get);
            Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK));
            Assert.That(response.Headers.Contains("Access-Control-Allow-Origin"), Is.False);
        }
        await using (var server = await StartAsync(engine, new ServerOptions { AllowedOrigins = ["https://app.example"], ApiKey = "k" }))
        {
            var http = server.Http;
            var allowed = await http.SendAsync(Preflight("https://app.example"));
            Assert.That(allowed.Headers.GetValues("Access-Control-Allow-Origin"), Is.EqualTo(new[] { "https://app.example" }));
            var other = await http.SendAsync(Preflight("https://evil.example"));
            Assert.That(other.Headers.Contains("Access-Control-Allow-Origin"), Is.False);
        }
    }

    [Test]
    public void CommandLine_LoopbackByDefault_KeyFromOptionOrEnvironment()
    {
        static string? NoEnvironment(string _) => null;
        var defaults = ServerOptions.Parse(["--model", "m.gguf"], NoEnvironment);
        Assert.That(defaults.Urls, Is.EqualTo("http://127.0.0.1:8000"));
        Assert.That(new ServerOptions().Urls, Is.EqualTo(ServerOptions.DefaultUrls));
        Assert.That(defaults.ApiKey, Is.Null);
        Assert.That(defaults.AllowedOrigins, Is.Empty);

        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--host", "0.0.0.0", "--port", "9000"], NoEnvironment).Urls, Is.EqualTo("http://0.0.0.0:9000"));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--host", "::1"], NoEnvironment).Urls, Is.EqualTo("http://[::1]:8000"));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--host", "0.0.0.0", "--urls", "http://127.0.0.1:1"], NoEnvironment).Urls, Is.EqualTo("http://127.0.0.1:1"));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--api-key", "abc"], NoEnvironment).ApiKey, Is.EqualTo("abc"));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf"], name => name == "INFERENCE_API_KEY" ? "from-env" : null).ApiKey, Is.EqualTo("from-env"));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--api-key", "abc"], _ => "from-env").ApiKey, Is.EqualTo("abc"));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--allowed-origins", "https://a.example,https://b.example"], NoEnvironment).AllowedOrigins,
            Is.EqualTo(new[] { "https://a.example", "https://b.example" }));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--max-waiting-requests", "7"], NoEnvironment).Engine.MaxWaitingRequests, Is.EqualTo(7));
        Assert.That(() => ServerOptions.Parse(["--model", "m.gguf", "--port", "70000"], NoEnvironment), Throws.ArgumentException.With.Message.Contains("--port"));
    }
}
