using System.Diagnostics;
using System.Globalization;
using System.Net;
using Inference.Cluster.Routing;
using Inference.Engine;
using Inference.KvCache;
using Inference.Sampling;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Hosting;

// A local engine cluster on loopback (docs/cluster.md).
//
//   silo:  one silo per process, hosting one replica of a model; the first one (no --primary-port) keeps the
//          development membership table, the others join it:
//            dotnet run --project samples/Inference.ClusterDemo -- silo --model M.gguf --model-id stories --silo-port 11111 --gateway-port 30000
//            dotnet run --project samples/Inference.ClusterDemo -- silo --model M.gguf --model-id stories --silo-port 11112 --gateway-port 30001 --primary-port 11111
//   local: N silos in this process, then the same workload routed by round-robin and by prefix affinity:
//            dotnet run -c Release --project samples/Inference.ClusterDemo -- local --model ../shared/testdata/stories260K.gguf --silos 3

try
{
    if (args.Length == 0) throw new ArgumentException("missing mode: silo or local");
    var options = DemoOptions.Parse(args[1..]);
    return args[0] switch
    {
        "silo" => await RunSiloAsync(options),
        "local" => await RunLocalAsync(options),
        _ => throw new ArgumentException($"unknown mode '{args[0]}': silo or local"),
    };
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine("usage: Inference.ClusterDemo silo --model PATH [--model-id ID] --silo-port N --gateway-port N [--primary-port N] [--cluster-id ID] [--threads N] [--kv-blocks N]");
    Console.Error.WriteLine("       Inference.ClusterDemo local --model PATH [--silos 3] [--requests 300] [--concurrency 3] [--threads N] [--kv-blocks 26]");
    return 2;
}

static EngineOptions EngineOptionsFor(DemoOptions o) => new()
{
    Threads = o.Threads,
    ContextLength = 512,
    KvCache = o.KvBlocks is int blocks ? new KvCacheOptions { BlockSize = 16, PoolBytes = blocks * 16L * o.KvBytesPerToken } : new KvCacheOptions(),
};

static IHost BuildSilo(DemoOptions o, int siloPort, int gatewayPort, int? primaryPort)
{
    var builder = Host.CreateApplicationBuilder();
    builder.Logging.SetMinimumLevel(LogLevel.Warning);
    builder.UseOrleans(silo => silo
        .UseLocalhostClustering(siloPort, gatewayPort, primaryPort is int p ? new IPEndPoint(IPAddress.Loopback, p) : null, o.ClusterId, o.ClusterId)
        .AddInferenceReplicas(r => r.AddModel(o.ModelId, o.ModelPath, EngineOptionsFor(o))));
    return builder.Build();
}

static async Task<int> RunSiloAsync(DemoOptions o)
{
    if (o.SiloPort is not int siloPort || o.GatewayPort is not int gatewayPort) throw new ArgumentException("silo needs --silo-port and --gateway-port");
    using var host = BuildSilo(o, siloPort, gatewayPort, o.PrimaryPort);
    await host.StartAsync();
    Console.WriteLine($"silo on 127.0.0.1:{siloPort} (gateway {gatewayPort}) hosts '{o.ModelId}'; Ctrl+C stops it");
    await host.WaitForShutdownAsync();
    return 0;
}

static async Task<int> RunLocalAsync(DemoOptions o)
{
    var silos = new List<IHost>();
    try
    {
        for (int i = 0; i < o.Silos; i++)
        {
            var silo = BuildSilo(o, 11111 + i, 30000 + i, i == 0 ? null : 11111);
            await silo.StartAsync();
            silos.Add(silo);
        }
        var clientBuilder = Host.CreateApplicationBuilder();
        clientBuilder.Logging.SetMinimumLevel(LogLevel.Warning);
        clientBuilder.UseOrleansClient(c => c.UseLocalhostClustering([.. Enumerable.Range(30000, o.Silos)], o.ClusterId, o.ClusterId));
        using var client = clientBuilder.Build();
        await client.StartAsync();
        var grains = client.Services.GetRequiredService<IClusterClient>();
        await using var tokenizer = await InferenceEngine.LoadAsync(o.ModelPath, EngineOptionsFor(o) with { KvCache = new KvCacheOptions { PoolBytes = 1 << 20 } });

        Console.WriteLine($"{o.Silos} silos, one '{o.ModelId}' replica each; {o.Requests} requests from 10 system prompts, {o.Concurrency} at a time");
        foreach (var (policy, set) in new[] { (RoutingPolicy.RoundRobin, 0), (RoutingPolicy.LeastLoaded, 1), (RoutingPolicy.PrefixAffinity, 2) })
        {
            await using var router = new ClusterRouter(grains, new ClusterRouterOptions { Policy = policy, RefreshInterval = null });
            await router.RefreshAsync();
            var prompts = Workload.Draw(set, o.Requests, seed: set + 1).Select(tokenizer.Tokenize).ToList();
            var sampling = SamplingOptions.Greedy with { MaxTokens = 4, EndOfSequence = EndOfSequenceHandling.Ignore };
            using var gate = new SemaphoreSlim(o.Concurrency);
            var clock = Stopwatch.StartNew();
            await Task.WhenAll(prompts.Select(async p =>
            {
                await gate.WaitAsync();
                try
                {
                    await router.GenerateAsync(o.ModelId, p, sampling).CompleteAsync();
                }
                finally
                {
                    gate.Release();
                }
            }));
            var stats = router.GetStats();
            Console.WriteLine($"{policy,-15} prefix hit rate {stats.PrefixHitRate,6:P1}   {o.Requests / clock.Elapsed.TotalSeconds,6:F1} requests/s   " +
                $"per replica {string.Join("/", stats.Replicas.Values.Select(r => r.RequestCount))}");
        }
        await client.StopAsync();
        return 0;
    }
    finally
    {
        for (int i = silos.Count - 1; i >= 0; i--)
        {
            await silos[i].StopAsync();
            silos[i].Dispose();
        }
    }
}

internal sealed record DemoOptions
{
    public string ModelPath { get; init; } = "";
    public string ModelId { get; init; } = "stories";
    public string ClusterId { get; init; } = "inference";
    public int? SiloPort { get; init; }
    public int? GatewayPort { get; init; }
    public int? PrimaryPort { get; init; }
    public int Threads { get; init; } = 1;
    public int? KvBlocks { get; init; }
    public int Silos { get; init; } = 3;
    public int Requests { get; init; } = 300;
    public int Concurrency { get; init; } = 3;

    /// <summary>stories260K's f16 KV bytes per token (5 layers, 4 KV heads of 8); used only with --kv-blocks.</summary>
    public long KvBytesPerToken { get; init; } = 2L * 5 * 4 * 8 * 2;

    public static DemoOptions Parse(string[] args)
    {
        var o = new DemoOptions();
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{name} needs a value");
            int Int() => int.TryParse(Value(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v > 0 ? v : throw new ArgumentException($"{name} needs a positive integer");
            o = name switch
            {
                "--model" => o with { ModelPath = Value() },
                "--model-id" => o with { ModelId = Value() },
                "--cluster-id" => o with { ClusterId = Value() },
                "--silo-port" => o with { SiloPort = Int() },
                "--gateway-port" => o with { GatewayPort = Int() },
                "--primary-port" => o with { PrimaryPort = Int() },
                "--threads" => o with { Threads = Int() },
                "--kv-blocks" => o with { KvBlocks = Int() },
                "--silos" => o with { Silos = Int() },
                "--requests" => o with { Requests = Int() },
                "--concurrency" => o with { Concurrency = Int() },
                _ => throw new ArgumentException($"unknown option {name}"),
            };
        }
        if (o.ModelPath.Length == 0) throw new ArgumentException("--model PATH is required");
        return o;
    }
}

/// <summary>The demo's workload: ten ~100-token system prompts per set, each request one of them plus a question.</summary>
internal static class Workload
{
    private static readonly string[] Names = ["Lily", "Tom", "Ben", "Sue", "Max", "Anna", "Sam", "Mia", "Tim", "Zoe", "Jack", "Amy", "Leo", "Kate", "Dan", "Eve", "Bob", "Ivy", "Ned", "Pam"];
    private static readonly string[] Things = ["ball", "dog", "cat", "tree", "car", "cake", "bird", "boat", "hat", "fish"];

    public static List<string> Draw(int set, int count, int seed)
    {
        var systems = Enumerable.Range(0, 10).Select(i =>
            $"{Names[(i + 7 * set) % Names.Length]} had a {Things[i]} and a friend named {Names[(i + 3 + set) % Names.Length]}. Every day they went to the park to play. " +
            "They were very happy together and they loved the sun. At night they read books about stars, trees and the big blue sea, and then they went to bed with a smile.").ToArray();
        var random = new Random(seed);
        var list = new List<string>(count);
        for (int i = 0; i < count; i++) list.Add(systems[random.Next(systems.Length)] + $" Question {i}: what did {Things[random.Next(Things.Length)]} do?");
        return list;
    }
}
