using System.Net;
using System.Text;
using System.Text.Json;
using Inference.Chat;
using Inference.Engine;
using Inference.Server;
using Inference.Tests.Support;

namespace Inference.Tests.Server;

/// <summary>The server under careless or hostile callers and models: every bad case ends in a clear HTTP answer.</summary>
public class ServerHardeningTests
{
    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    [TestCase("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")]
    [TestCase("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}")]
    public async Task HostileChatTemplate_IsAnsweredWith400(string template)
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        await using var server = await TestServer.StartAsync(engine, new ServerOptions { ModelId = "m", ChatTemplate = ChatTemplate.Parse(template) });
        var response = await server.Http.PostAsync("/v1/chat/completions", Json("""{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"""));
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        Assert.That(body.RootElement.GetProperty("error").GetProperty("message").GetString(), Does.Contain("chat template"));
    }

    [Test]
    public async Task DeeplyNestedRegexOrGrammar_IsAnsweredWith400_AndTheServerKeepsServing()
    {
        // 100,000 nested groups in a 200 KB body: the parsers used to recurse until the stack overflowed, ending the process.
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        await using var server = await TestServer.StartAsync(engine, new ServerOptions { ModelId = "m", ChatTemplate = TestServer.PlainTemplate });
        string groups = new string('(', 100_000) + "a" + new string(')', 100_000);
        foreach (var body in new[]
        {
            JsonSerializer.Serialize(new { prompt = "Once", max_tokens = 4, guided_regex = groups }),
            JsonSerializer.Serialize(new { prompt = "Once", max_tokens = 4, guided_grammar = "root ::= " + groups.Replace("a", "\"a\"") }),
        })
        {
            var response = await server.Http.PostAsync("/v1/completions", Json(body));
            Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That(await response.Content.ReadAsStringAsync(), Does.Contain("nests too deeply"));
        }
        var fine = await server.Http.PostAsync("/v1/completions", Json("""{"prompt":"Once","max_tokens":4,"guided_regex":"( [a-z]+)+"}"""));
        Assert.That(fine.StatusCode, Is.EqualTo(HttpStatusCode.OK), await fine.Content.ReadAsStringAsync());
    }
}
