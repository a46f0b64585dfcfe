using Inference.Cluster.Routing;
using Inference.KvCache;

namespace Inference.Tests.Cluster;

public class PrefixTableTests
{
    [Test]
    public void RemembersRecentEntries_PromotesOnLookup_AndStaysBounded()
    {
        var table = new PrefixTable(capacity: 16);
        static BlockHash H(int i) => new((UInt128)(ulong)i);
        table.Set(H(0), "a");
        for (int i = 1; i <= 100; i++)
        {
            table.Set(H(i), "r" + i);
            Assert.That(table.TryGet(H(0), out var keep), Is.True, $"a looked-up entry survives ({i})");
            Assert.That(keep, Is.EqualTo("a"));
            Assert.That(table.Count, Is.LessThanOrEqualTo(16));
        }
        Assert.That(table.TryGet(H(1), out _), Is.False, "an old entry never looked up was dropped");
        Assert.That(table.TryGet(H(100), out var last), Is.True);
        Assert.That(last, Is.EqualTo("r100"));
        table.Set(H(100), "b");
        Assert.That(table.TryGet(H(100), out var moved) && moved == "b", Is.True, "the latest replica wins");
    }

    [Test]
    public void RouterOptionsValidate()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new ClusterRouterOptions { AffinityBlocks = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new ClusterRouterOptions { MaxLoadImbalance = -1 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new ClusterRouterOptions { MinFreeBlockFraction = 1.5 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new ClusterRouterOptions { MaxAttempts = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new ClusterRouterOptions { RefreshInterval = TimeSpan.Zero });
        Assert.That(new ClusterRouterOptions { RefreshInterval = null }.RefreshInterval, Is.Null);
    }

    [Test]
    public void ServerParsesClusterOptions()
    {
        var o = Inference.Server.ServerOptions.Parse(["--cluster", "30000, 30001", "--model-id", "stories", "--routing", "round-robin", "--cluster-id", "dev"]);
        Assert.That(o.ClusterGatewayPorts, Is.EqualTo(new[] { 30000, 30001 }));
        Assert.That(o.Routing, Is.EqualTo(RoutingPolicy.RoundRobin));
        Assert.That(o.ClusterId, Is.EqualTo("dev"));
        Assert.Throws<ArgumentException>(() => Inference.Server.ServerOptions.Parse(["--cluster", "30000"]), "a cluster needs --model-id");
        Assert.Throws<ArgumentException>(() => Inference.Server.ServerOptions.Parse(["--cluster", "x", "--model-id", "m"]));
        Assert.Throws<ArgumentException>(() => Inference.Server.ServerOptions.Parse(["--model", "m.gguf", "--routing", "random"]));
    }
}
