using System.ClientModel;
using System.Diagnostics;
using System.Text;
using Inference.Chat;
using Inference.Engine;
using Inference.KvCache;
using Inference.Sampling;
using Inference.Server;
using Inference.Tests.Support;
using OpenAI;
using OpenAI.Chat;

namespace Inference.Tests.Server;

/// <summary>
/// Many OpenAI SDK clients at once through the server, with clients that hang up or cancel mid-stream: no leaked KV
/// block, no hang, and every completed answer equal to the same request run alone.
/// </summary>
public class HttpSoakTests
{
    private static readonly string[] Prompts = ["Once upon a time", "Tom had a dog", "The sun was hot", "Lily and Ben", "One day", "A big cat sat", "She said", "The little bird"];
    private static readonly int[] MaxTokens = [1, 5, 12, 24, 40];

    /// <summary>Requests in one run: 1,000 (about 7 s on 2 cores); INFERENCE_HTTP_SOAK_REQUESTS overrides it.</summary>
    private static int RequestCount =>
        int.TryParse(Environment.GetEnvironmentVariable("INFERENCE_HTTP_SOAK_REQUESTS"), out int n) && n > 0 ? n : 1000;

    [Test]
    [CancelAfter(600_000)] // a guard against a hang only
    public async Task ManyClients_WithDisconnectsAndCancellations_NoLeak_SameText(CancellationToken guard)
    {
        const int clients = 64;
        int requests = RequestCount;
        // A pool of 48 blocks of 16 tokens holds only some of the requests at once: the rest queue or get preempted.
        var options = new EngineOptions
        {
            Threads = 2,
            MaxNumSeqs = 32,
            MaxNumBatchedTokens = 96,
            ContextLength = 256,
            KvCache = new KvCacheOptions { PoolBytes = 48 * KvCacheStorage.GetBlockByteCount(5, 16, 4, 8, KvCacheDataType.Float16) },
        };
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, options, cancellationToken: guard);
        var solo = new Dictionary<(string, int), string>();
        foreach (var p in Prompts)
            foreach (int m in MaxTokens)
                solo[(p, m)] = (await engine.CompleteAsync(p, SamplingOptions.Greedy with { MaxTokens = m }, guard)).Text;

        await using (var server = await TestServer.StartAsync(engine, new ServerOptions { ModelId = "stories260K", ChatTemplate = TestServer.PlainTemplate }, guard))
        {
            int next = -1, completed = 0, cancelled = 0, streamed = 0;
            var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
            var sw = Stopwatch.StartNew();
            async Task Client(int seed)
            {
                var chat = server.Chat("stories260K");
                var rng = new Random(seed);
                int i;
                while ((i = Interlocked.Increment(ref next)) < requests)
                {
                    string prompt = Prompts[rng.Next(Prompts.Length)];
                    int maxTokens = MaxTokens[rng.Next(MaxTokens.Length)];
                    int mode = rng.Next(5); // 0: hang up after a few chunks, 1: cancel after a random time, 2: whole answer, 3-4: streamed to the end
                    int cancelAfter = rng.Next(0, 6);
                    using var cts = CancellationTokenSource.CreateLinkedTokenSource(guard);
                    if (mode == 1) cts.CancelAfter(rng.Next(1, 150));
                    var chatOptions = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = maxTokens };
                    try
                    {
                        string text;
                        if (mode == 2)
                        {
                            ChatCompletion reply = await chat.CompleteChatAsync([new UserChatMessage(prompt)], chatOptions, cts.Token);
                            text = reply.Content.Count > 0 ? reply.Content[0].Text : "";
                        }
                        else
                        {
                            var sb = new StringBuilder();
                            int chunks = 0;
                            await foreach (var update in chat.CompleteChatStreamingAsync([new UserChatMessage(prompt)], chatOptions, cts.Token))
                            {
                                foreach (var part in update.ContentUpdate) sb.Append(part.Text);
                                if (mode == 0 && ++chunks > cancelAfter) cts.Cancel();
                            }
                            text = sb.ToString();
                            Interlocked.Increment(ref streamed);
                        }
                        if (text != solo[(prompt, maxTokens)]) failures.Enqueue($"request {i}: '{prompt}' with {maxTokens} tokens gave '{text}', alone '{solo[(prompt, maxTokens)]}'");
                        Interlocked.Increment(ref completed);
                    }
                    catch (OperationCanceledException) when (!guard.IsCancellationRequested)
                    {
                        Interlocked.Increment(ref cancelled);
                    }
                }
            }
            await Task.WhenAll(Enumerable.Range(0, clients).Select(c => Task.Run(() => Client(20261207 + c), guard)));

            // The server ends the requests of clients that went away in the engine's next steps: wait for that state.
            EngineStats stats;
            while (true)
            {
                stats = await engine.GetStatsAsync();
                if (stats.RunningCount + stats.WaitingCount == 0 && stats.KvCache.UsedBlockCount == 0) break;
                guard.ThrowIfCancellationRequested();
                await Task.Delay(10, guard);
            }
            TestContext.Out.WriteLine($"{requests} requests from {clients} clients: completed {completed} ({streamed} streamed), cancelled or hung up {cancelled}, preemptions {stats.PreemptionCount}, {sw.Elapsed.TotalSeconds:F1} s");
            Assert.That(failures, Is.Empty);
            Assert.That(completed + cancelled, Is.EqualTo(requests));
            Assert.That(completed, Is.GreaterThan(requests / 4));
            Assert.That(cancelled, Is.GreaterThan(requests / 10));
            Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "every KV block is free again");
            Assert.That(engine.Loop.WaitingToStart, Is.Zero);

            // Still serving, with the same text.
            var after = server.Chat("stories260K");
            ChatCompletion last = await after.CompleteChatAsync([new UserChatMessage(Prompts[0])], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 40 }, guard);
            Assert.That(last.Content[0].Text, Is.EqualTo(solo[(Prompts[0], 40)]));
        }
    }
}
