using Inference.Cluster.Routing;
using Inference.Engine;
using Inference.Sampling;
using Inference.Tests.Support;
using Orleans.TestingHost;

namespace Inference.Tests.Cluster;

/// <summary>A silo killed while its replica streams: every request still completes once, with a single engine's tokens.</summary>
[NonParallelizable]
public class ClusterFailoverTests
{
    [Test]
    [CancelAfter(240_000)]
    public async Task KillingASiloMidRun_LosesNoRequest_AndRepeatsNoToken()
    {
        await using var cluster = await ReplicaCluster.StartAsync(3);
        await using var single = await InferenceEngine.LoadAsync(TestData.Stories260K, ReplicaCluster.EngineOptions(blocks: 200));
        await using var router = new ClusterRouter(cluster.Client, new ClusterRouterOptions { Policy = RoutingPolicy.RoundRobin, RefreshInterval = TimeSpan.FromMilliseconds(200) });
        await router.RefreshAsync();

        string[] prompts = [.. Enumerable.Range(0, 9).Select(i => $"Once upon a time there was a {(i % 3 == 0 ? "dog" : i % 3 == 1 ? "cat" : "bird")} number {i}. It")];
        var sampling = SamplingOptions.Greedy with { MaxTokens = 120, EndOfSequence = EndOfSequenceHandling.Ignore };
        var released = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var firstTokens = new CountdownEvent(prompts.Length);

        // Each consumer takes one token, then waits: its request cannot finish (the replica stops at its back-pressure
        // limit, well short of 120 tokens) until the silo has been killed.
        var runs = prompts.Select(async p =>
        {
            var tokens = single.Tokenize(p);
            var stream = router.GenerateAsync(ReplicaCluster.Model, tokens, sampling);
            var received = new List<int>();
            var text = "";
            await foreach (var t in stream)
            {
                received.Add(t.TokenId);
                text += t.Text;
                if (received.Count == 1)
                {
                    firstTokens.Signal();
                    await released.Task;
                }
            }
            return (received, text, await stream.Completion);
        }).ToArray();

        await Task.Run(() => firstTokens.Wait(TestContext.CurrentContext.CancellationToken));
        var before = router.GetStats();
        var victimId = before.Replicas.Where(r => r.Value.ModelId == ReplicaCluster.Model).MaxBy(r => r.Value.InFlight).Key;
        int stranded = before.Replicas[victimId].InFlight;
        Assert.That(stranded, Is.EqualTo(3), "round-robin put three of the nine requests on each replica");
        var victim = cluster.Silos.Single(s => victimId.StartsWith(s.SiloAddress.ToParsableString() + "|", StringComparison.Ordinal));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await cluster.KillSiloAsync(victim);
        TestContext.Out.WriteLine($"killed in {clock.Elapsed.TotalSeconds:F1} s");
        released.SetResult();

        var results = await Task.WhenAll(runs);
        TestContext.Out.WriteLine($"all done {clock.Elapsed.TotalSeconds:F1} s after the kill");
        for (int i = 0; i < prompts.Length; i++)
        {
            var expected = await single.CompleteAsync(prompts[i], sampling);
            var (received, text, completion) = results[i];
            Assert.That(received, Is.EqualTo(expected.TokenIds), $"request {i}: every token once, in order");
            Assert.That(text, Is.EqualTo(expected.Text));
            Assert.That(completion.TokenIds, Is.EqualTo(expected.TokenIds));
        }
        var after = router.GetStats();
        TestContext.Out.WriteLine($"resent {after.ResendCount} of the {stranded} requests on the killed replica; " +
            string.Join(", ", after.Replicas.Where(r => r.Value.ModelId == ReplicaCluster.Model).Select(r => $"{r.Key}: {r.Value.RequestCount} requests{(r.Value.Failed ? ", failed" : "")}")));
        Assert.That(after.ResendCount, Is.EqualTo(stranded));
        Assert.That(after.FailedCount, Is.Zero);
        Assert.That(router.Replicas.Any(r => r.ReplicaId == victimId), Is.False, "the killed replica is no longer routed to");
    }
}
