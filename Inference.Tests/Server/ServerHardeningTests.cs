using System.Net;
using System.Text;
using System.Text.Json;
using Inference.Chat;
using Inference.Engine;
using Inference.Server;
using Inference.Tests.Support;
using Microsoft.AspNetCore.Builder;

namespace Inference.Tests.Server;

/// <summary>The server under careless or hostile callers and models: every bad case ends in a clear HTTP answer.</summary>
public class ServerHardeningTests
{
    private static async Task<(WebApplication App, HttpClient Http)> StartAsync(InferenceEngine engine, ServerOptions options)
    {
        var app = ServerApp.Build(engine, options with { Urls = "http://127.0.0.1:0" }, ["--Logging:LogLevel:Default=Warning"]);
        await app.StartAsync();
        return (app, new HttpClient { BaseAddress = new Uri(app.Urls.Single()) });
    }

    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    [TestCase("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")]
    [TestCase("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}")]
    public async Task HostileChatTemplate_IsAnsweredWith400(string template)
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        var (app, http) = await StartAsync(engine, new ServerOptions { ModelId = "m", ChatTemplate = ChatTemplate.Parse(template) });
        try
        {
            var response = await http.PostAsync("/v1/chat/completions", Json("""{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"""));
            Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
            Assert.That(body.RootElement.GetProperty("error").GetProperty("message").GetString(), Does.Contain("chat template"));
        }
        finally
        {
            http.Dispose();
            await app.DisposeAsync();
        }
    }
}
