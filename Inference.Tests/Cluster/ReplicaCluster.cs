using Inference.Cluster.Contracts;
using Inference.Engine;
using Inference.KvCache;
using Inference.Tests.Support;
using Orleans.Hosting;
using Orleans.TestingHost;

namespace Inference.Tests.Cluster;

/// <summary>An in-process Orleans cluster on loopback whose silos each host stories260K replicas.</summary>
internal static class ReplicaCluster
{
    public const string Model = "stories";
    public const string OtherModel = "stories-b";

    /// <summary>
    /// One replica's engine: one thread, and a KV pool of 26 blocks of 16 tokens: four of the tests' 100-token system prompts
    /// besides the requests running, so which prompts a replica is sent decides whether they stay cached.
    /// </summary>
    public static EngineOptions EngineOptions(int blocks = 26) => new()
    {
        Threads = 1,
        ContextLength = 512,
        MaxNumSeqs = 8,
        KvCache = new KvCacheOptions { BlockSize = 16, PoolBytes = blocks * 16L * BytesPerToken, DataType = KvCacheDataType.Float32 },
    };

    // stories260K: 5 layers, 4 KV heads of 8 dims; f32 keys and values.
    private const long BytesPerToken = 2L * 5 * 4 * 8 * 4;

    public static async Task<TestCluster> StartAsync(int silos)
    {
        var builder = new TestClusterBuilder((short)silos);
        builder.AddSiloBuilderConfigurator<Silo>();
        var cluster = builder.Build();
        await cluster.DeployAsync();
        return cluster;
    }

    private sealed class Silo : ISiloConfigurator
    {
        public void Configure(ISiloBuilder siloBuilder) => siloBuilder.AddInferenceReplicas(o => o
            .AddModel(Model, TestData.Stories260K, EngineOptions())
            .AddModel(OtherModel, TestData.Stories260K, EngineOptions(blocks: 16)));
    }

    /// <summary>The load of every replica of every silo.</summary>
    public static async Task<Dictionary<string, ReplicaLoad>> LoadsAsync(IGrainFactory grains, IEnumerable<ReplicaDescriptor> replicas)
    {
        var result = new Dictionary<string, ReplicaLoad>();
        foreach (var r in replicas) result[r.ReplicaId] = await grains.GetGrain<IEngineReplicaGrain>(r.ReplicaId).GetLoadAsync();
        return result;
    }
}
