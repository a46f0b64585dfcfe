using System.Diagnostics;
using System.ClientModel;
using Inference.Chat;
using System.Net;
using System.Text;
using System.Text.Json;
using Inference.Cluster.Contracts;
using Inference.Constraints;
using Inference.Extensions.AI;
using Inference.Server;
using Microsoft.Extensions.AI;
using OpenAI;
using ChatMessage = Inference.Chat.ChatMessage;
using Inference.Cluster.Routing;
using Inference.Engine;
using Inference.Sampling;
using Inference.Tests.Support;
using Orleans.TestingHost;

namespace Inference.Tests.Cluster;

/// <summary>
/// Routing on a 3-silo in-process cluster: prefix affinity against round-robin on 300 requests drawn from 10 shared
/// system prompts, greedy outputs against a single engine, several models, cancellation reaching the replica.
/// </summary>
[NonParallelizable]
public class ClusterRouterTests
{
    private TestCluster _cluster = null!;
    private InferenceEngine _single = null!;

    [OneTimeSetUp]
    public async Task StartAsync()
    {
        _cluster = await ReplicaCluster.StartAsync(3);
        _single = await InferenceEngine.LoadAsync(TestData.Stories260K, ReplicaCluster.EngineOptions(blocks: 200));
    }

    [OneTimeTearDown]
    public async Task StopAsync()
    {
        await _single.DisposeAsync();
        await _cluster.StopAllSilosAsync();
        await _cluster.DisposeAsync();
    }

    private static readonly string[] Names = ["Lily", "Tom", "Ben", "Sue", "Max", "Anna", "Sam", "Mia", "Tim", "Zoe", "Jack", "Amy", "Leo", "Kate", "Dan", "Eve", "Bob", "Ivy", "Ned", "Pam"];
    private static readonly string[] Things = ["ball", "dog", "cat", "tree", "car", "cake", "bird", "boat", "hat", "fish"];

    /// <summary>Ten ~100-token system prompts that differ from their first words (a set per <paramref name="set"/>), and a request drawer.</summary>
    private static string[] SystemPrompts(int set) =>
        [.. Enumerable.Range(0, 10).Select(i =>
            $"{Names[(i + 10 * set) % Names.Length]} had a {Things[i]} and a friend named {Names[(i + 3 + set) % Names.Length]}. Every day they went to the park to play. They were very happy together and they loved the sun. At night they read books about stars, trees and the big blue sea, and then they went to bed with a smile.")];

    private static List<string> DrawRequests(string[] systems, int count, int seed)
    {
        var random = new Random(seed);
        var list = new List<string>(count);
        for (int i = 0; i < count; i++) list.Add(systems[random.Next(systems.Length)] + $" Question {i}: what did {Things[random.Next(Things.Length)]} do?");
        return list;
    }

    private static readonly SamplingOptions Short = SamplingOptions.Greedy with { MaxTokens = 4, EndOfSequence = EndOfSequenceHandling.Ignore };

    private async Task<(RouterStats Stats, TimeSpan Elapsed, Completion[] Results)> RunAsync(RoutingPolicy policy, List<string> prompts)
    {
        await using var router = new ClusterRouter(_cluster.Client, new ClusterRouterOptions { Policy = policy, RefreshInterval = null });
        await router.RefreshAsync();
        Assert.That(router.Replicas.Count(r => r.ModelId == ReplicaCluster.Model), Is.EqualTo(3));
        var tokens = prompts.Select(_single.Tokenize).ToList();
        var results = new Completion[prompts.Count];
        using var gate = new SemaphoreSlim(3);
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(tokens.Select(async (t, i) =>
        {
            await gate.WaitAsync();
            try
            {
                results[i] = await router.GenerateAsync(ReplicaCluster.Model, t, Short).CompleteAsync();
            }
            finally
            {
                gate.Release();
            }
        }));
        return (router.GetStats(), clock.Elapsed, results);
    }

    [Test]
    [CancelAfter(240_000)]
    public async Task PrefixAffinity_HitsAtLeastTwiceRoundRobin_On300RequestsFrom10SystemPrompts()
    {
        // Distinct prompt sets, so the second run cannot reuse what the first left in the caches.
        var roundRobin = await RunAsync(RoutingPolicy.RoundRobin, DrawRequests(SystemPrompts(0), 300, seed: 1));
        var affinity = await RunAsync(RoutingPolicy.PrefixAffinity, DrawRequests(SystemPrompts(1), 300, seed: 2));

        TestContext.Out.WriteLine($"prompt tokens: {roundRobin.Stats.PromptTokenCount / 300.0:F1} on average");
        TestContext.Out.WriteLine($"round-robin: hit rate {roundRobin.Stats.PrefixHitRate:P1}, {300 / roundRobin.Elapsed.TotalSeconds:F0} requests/s");
        TestContext.Out.WriteLine($"affinity:    hit rate {affinity.Stats.PrefixHitRate:P1}, {300 / affinity.Elapsed.TotalSeconds:F0} requests/s " +
            $"(affinity {affinity.Stats.AffinityCount}, balanced {affinity.Stats.BalancedCount}, miss {affinity.Stats.MissCount})");
        Assert.That(roundRobin.Stats.RequestCount, Is.EqualTo(300));
        Assert.That(affinity.Stats.RequestCount, Is.EqualTo(300));
        Assert.That(roundRobin.Stats.Replicas.Values.Where(r => r.ModelId == ReplicaCluster.Model).Select(r => r.RequestCount), Is.All.EqualTo(100), "round-robin spreads evenly");
        Assert.That(affinity.Stats.PrefixHitRate, Is.GreaterThanOrEqualTo(2 * roundRobin.Stats.PrefixHitRate));
        Assert.That(affinity.Stats.PrefixHitRate, Is.GreaterThan(0.5));
        Assert.That(affinity.Stats.Replicas.Values.Where(r => r.ModelId == ReplicaCluster.Model).Select(r => r.RequestCount), Is.All.GreaterThan(30), "affinity still uses every replica");
    }

    [Test]
    [CancelAfter(120_000)]
    public async Task GreedyOutputs_EqualASingleEngines()
    {
        var prompts = DrawRequests(SystemPrompts(2), 30, seed: 3);
        var sampling = SamplingOptions.Greedy with { MaxTokens = 24, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using var router = new ClusterRouter(_cluster.Client, new ClusterRouterOptions { RefreshInterval = null });
        var cluster = await Task.WhenAll(prompts.Select(async p =>
        {
            var tokens = await router.TokenizeAsync(ReplicaCluster.Model, p);
            var stream = router.GenerateAsync(ReplicaCluster.Model, tokens, sampling);
            var streamed = new List<int>();
            var text = "";
            await foreach (var t in stream)
            {
                streamed.Add(t.TokenId);
                text += t.Text;
            }
            var completion = await stream.Completion;
            Assert.That(streamed, Is.EqualTo(completion.TokenIds), "streamed tokens are the completion's");
            Assert.That(text, Is.EqualTo(completion.Text));
            return completion;
        }));
        for (int i = 0; i < prompts.Count; i++)
        {
            var expected = await _single.CompleteAsync(prompts[i], sampling);
            Assert.That(cluster[i].TokenIds, Is.EqualTo(expected.TokenIds), prompts[i]);
            Assert.That(cluster[i].Text, Is.EqualTo(expected.Text));
            Assert.That(cluster[i].PromptTokenIds, Is.EqualTo(expected.PromptTokenIds));
        }
        Assert.That(router.GetStats().Replicas.Values.Count(r => r.RequestCount > 0), Is.GreaterThan(1), "the requests were spread");
        Assert.That(router.GetStats().RequestCount, Is.EqualTo(prompts.Count), "tokenizing on a replica is not a routed request");
    }

    [Test]
    [CancelAfter(60_000)]
    public async Task RequestsRouteByModelId_AndAnUnknownModelThrows()
    {
        await using var router = new ClusterRouter(_cluster.Client, new ClusterRouterOptions { RefreshInterval = null });
        var tokens = _single.Tokenize(SystemPrompts(3)[0]);
        for (int i = 0; i < 6; i++) await router.GenerateAsync(ReplicaCluster.OtherModel, tokens, Short).CompleteAsync();
        var stats = router.GetStats();
        Assert.That(stats.Replicas.Values.Where(r => r.ModelId == ReplicaCluster.OtherModel).Sum(r => r.RequestCount), Is.EqualTo(6));
        Assert.That(stats.Replicas.Values.Where(r => r.ModelId == ReplicaCluster.Model).Sum(r => r.RequestCount), Is.Zero);
        Assert.That(stats.Replicas.Values.Count(r => r.ModelId == ReplicaCluster.OtherModel), Is.EqualTo(3));
        Assert.That(stats.AffinityCount, Is.EqualTo(5), "one prompt stays on its replica");
        var e = Assert.ThrowsAsync<ReplicaUnavailableException>(() => router.GenerateAsync("no-such-model", tokens, Short).CompleteAsync());
        Assert.That(e!.Message, Does.Contain("no-such-model"));
    }

    [Test]
    [CancelAfter(60_000)]
    public async Task ARequestsOwnFault_ComesBackTyped_AndIsNotResent()
    {
        await using var router = new ClusterRouter(_cluster.Client, new ClusterRouterOptions { RefreshInterval = null });
        var tooLong = Enumerable.Repeat(_single.Tokenize("Lily")[^1], 600).ToArray(); // the replicas' context is 512
        var e = Assert.ThrowsAsync(Is.InstanceOf<ArgumentException>(), () => router.GenerateAsync(ReplicaCluster.OtherModel, tooLong, Short).CompleteAsync());
        TestContext.Out.WriteLine(e!.GetType().Name + ": " + e.Message);
        var stats = router.GetStats();
        Assert.That(stats.ResendCount, Is.Zero, "a request's own fault is not a replica failure");
        Assert.That(stats.Replicas.Values.Any(r => r.Failed), Is.False);
    }

    [Test]
    [CancelAfter(60_000)]
    public async Task Cancellation_ReachesTheReplica_AndFreesItsBlocks()
    {
        await using var router = new ClusterRouter(_cluster.Client, new ClusterRouterOptions { RefreshInterval = null });
        var tokens = _single.Tokenize(SystemPrompts(4)[1]);
        using var cts = new CancellationTokenSource();
        var stream = router.GenerateAsync(ReplicaCluster.OtherModel, tokens, SamplingOptions.Greedy with { MaxTokens = 150, EndOfSequence = EndOfSequenceHandling.Ignore }, cts.Token);
        string? replicaId = null;
        int seen = 0;
        Assert.ThrowsAsync(Is.InstanceOf<OperationCanceledException>(), async () =>
        {
            await foreach (var _ in stream)
            {
                if (++seen == 1)
                {
                    replicaId = router.GetStats().Replicas.Single(r => r.Value.InFlight == 1).Key;
                    var load = await _cluster.Client.GetGrain<IEngineReplicaGrain>(replicaId).GetLoadAsync();
                    Assert.That(load.RunningCount + load.WaitingCount, Is.EqualTo(1));
                    await cts.CancelAsync();
                }
            }
        });
        Assert.That(stream.Completion.IsCanceled, Is.True);
        Assert.That(router.GetStats().Replicas[replicaId!].InFlight, Is.Zero);
        // The replica's engine ends the request in its next step: wait for that state, then its blocks are all free.
        var replica = _cluster.Client.GetGrain<IEngineReplicaGrain>(replicaId!);
        ReplicaLoad after;
        while ((after = await replica.GetLoadAsync()).RunningCount + after.WaitingCount > 0) await Task.Yield();
        Assert.That(after.FreeBlockCount, Is.EqualTo(after.TotalBlockCount), "no KV block leaked");
    }

    [Test]
    [CancelAfter(120_000)]
    public async Task StructuredOutputAndTools_CrossTheWire_AndLogprobsAreRefused()
    {
        await using var router = new ClusterRouter(_cluster.Client, new ClusterRouterOptions { RefreshInterval = null });
        var tokens = _single.Tokenize(SystemPrompts(5)[2]);
        Constraint[] constraints =
        [
            new RegexConstraint("[a-z]+( [a-z]+){2}\\."),
            new ChoiceConstraint(["yes", "no", "the ball"]),
            new JsonSchemaConstraint("""{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}"""),
            new GrammarConstraint("root ::= \"a\" [b-d]+ \"!\"\n"),
            JsonObjectConstraint.Instance,
        ];
        foreach (var constraint in constraints)
        {
            // The replica compiles the constraint again from its text: the same greedy tokens as one engine with the original.
            var sampling = SamplingOptions.Greedy with { MaxTokens = 24, Constraint = constraint };
            var remote = await router.GenerateAsync(ReplicaCluster.Model, tokens, sampling).CompleteAsync();
            var local = await _single.GenerateAsync(tokens, sampling).CompleteAsync();
            Assert.That(remote.TokenIds, Is.EqualTo(local.TokenIds), constraint.GetType().Name);
            Assert.That(remote.Text, Is.EqualTo(local.Text));
        }
        var regex = await router.GenerateAsync(ReplicaCluster.Model, tokens, SamplingOptions.Greedy with { MaxTokens = 24, Constraint = constraints[0] }).CompleteAsync();
        Assert.That(regex.Text, Does.Match("^[a-z]+( [a-z]+){2}\\.$"));

        Assert.Throws<NotSupportedException>(() => router.GenerateAsync(ReplicaCluster.Model, tokens, Short with { Logprobs = 2 }));
        Assert.Throws<NotSupportedException>(() => router.GenerateAsync(ReplicaCluster.Model, tokens, Short with { PromptLogprobs = 0 }));

        // Tools, tool calls and tool results render on the replica as on one engine.
        var template = ChatTemplate.Parse("{{ bos_token }}{% for t in tools %}[{{ t.function.name }}:{{ t.function.description }}]{% endfor %}" +
            "{% for m in messages %}{{ m.role }}: {{ m.content }}{% for c in m.tool_calls %}<{{ c.id }} {{ c.function.name }} {{ c.function.arguments.city }}>{% endfor %}{{ m.tool_call_id }}\n{% endfor %}");
        var prompt = new ChatPromptOptions { Template = template, Tools = [new ChatTool("weather", "the weather in a city", """{"type":"object","properties":{"city":{"type":"string"}}}""")] };
        List<ChatMessage> conversation =
        [
            ChatMessage.User("What is the weather in Paris?"),
            ChatMessage.AssistantToolCalls([new ChatToolCall("call1", "weather", """{"city":"Paris"}""")]),
            ChatMessage.ToolResult("call1", "sunny"),
        ];
        var rendered = await router.TokenizeChatAsync(ReplicaCluster.Model, conversation, prompt);
        Assert.That(rendered, Is.EqualTo(_single.TokenizeChat(conversation, prompt)));
        Assert.That(_single.Tokenizer.Decode(rendered), Does.Contain("[weather:the weather in a city]").And.Contain("<call1 weather Paris>").And.Contain("sunny"));
        Assert.That(await router.GetChatTemplateAsync(ReplicaCluster.Model), Is.Null, "stories260K has no chat template");
    }

    [Test]
    [CancelAfter(120_000)]
    public async Task TheOpenAiServerAndIChatClient_FrontTheCluster()
    {
        const string Prompt = "Once upon a time, there was a little girl named Lily.";
        var template = TestServer.PlainTemplate;
        var expected = await _single.CompleteAsync(Prompt, SamplingOptions.Greedy with { MaxTokens = 20 });
        await using var router = new ClusterRouter(_cluster.Client, new ClusterRouterOptions { RefreshInterval = null });
        var generator = router.ForModel(ReplicaCluster.Model);

        await using (var server = await TestServer.StartAsync(generator, new ServerOptions { ChatTemplate = template }))
        {
            var openAi = server.OpenAiClient();
            var models = (await openAi.GetOpenAIModelClient().GetModelsAsync()).Value;
            Assert.That(models.Select(m => m.Id), Is.EqualTo(new[] { ReplicaCluster.Model }));
            var chat = await openAi.GetChatClient(ReplicaCluster.Model).CompleteChatAsync([new OpenAI.Chat.UserChatMessage(Prompt)],
                new OpenAI.Chat.ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 20 });
            Assert.That(chat.Value.Content.Single().Text, Is.EqualTo(expected.Text));
            Assert.That(chat.Value.Usage.InputTokenCount, Is.EqualTo(expected.PromptTokenIds.Count));

            var http = server.Http;
            var structured = await http.PostAsync("/v1/chat/completions", new StringContent(JsonSerializer.Serialize(new
            {
                model = ReplicaCluster.Model,
                messages = new[] { new { role = "user", content = Prompt } },
                max_tokens = 8,
                temperature = 0,
                guided_choice = new[] { "Lily", "Tom" },
                n = 2,
            }), Encoding.UTF8, "application/json"));
            Assert.That(structured.StatusCode, Is.EqualTo(HttpStatusCode.OK), await structured.Content.ReadAsStringAsync());
            using (var json = JsonDocument.Parse(await structured.Content.ReadAsStringAsync()))
            {
                var choices = json.RootElement.GetProperty("choices");
                Assert.That(choices.GetArrayLength(), Is.EqualTo(2), "n choices, one request each");
                foreach (var choice in choices.EnumerateArray())
                    Assert.That(choice.GetProperty("message").GetProperty("content").GetString(), Is.AnyOf("Lily", "Tom"));
            }
            var logprobs = await http.PostAsync("/v1/chat/completions", new StringContent(JsonSerializer.Serialize(new
            {
                model = ReplicaCluster.Model,
                messages = new[] { new { role = "user", content = Prompt } },
                max_tokens = 4,
                logprobs = true,
            }), Encoding.UTF8, "application/json"));
            Assert.That(logprobs.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That(await logprobs.Content.ReadAsStringAsync(), Does.Contain("log-probabilities"));
            var echo = await http.PostAsync("/v1/completions", new StringContent(JsonSerializer.Serialize(new
            {
                model = ReplicaCluster.Model,
                prompt = new[] { 1, 400, 300 },
                max_tokens = 4,
                echo = true,
            }), Encoding.UTF8, "application/json"));
            Assert.That(echo.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
            Assert.That(await echo.Content.ReadAsStringAsync(), Does.Contain("echo"));
            var tooLong = await http.PostAsync("/v1/completions", new StringContent(JsonSerializer.Serialize(new
            {
                model = ReplicaCluster.Model,
                prompt = Enumerable.Repeat(400, 600).ToArray(),
                max_tokens = 4,
            }), Encoding.UTF8, "application/json"));
            Assert.That(tooLong.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest), "the replica's refusal is the client's error, not the server's");
            Assert.That(await tooLong.Content.ReadAsStringAsync(), Does.Contain("context"));
        }

        using IChatClient client = new InferenceChatClient(generator, new InferenceChatClientOptions { Template = template });
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 20 };
        var response = await client.GetResponseAsync(Prompt, options);
        Assert.That(response.Text, Is.EqualTo(expected.Text));
        Assert.That(response.ModelId, Is.EqualTo(ReplicaCluster.Model));
        var streamed = "";
        await foreach (var update in client.GetStreamingResponseAsync(Prompt, options)) streamed += update.Text;
        Assert.That(streamed, Is.EqualTo(expected.Text));
    }
}
