using Inference.Engine;
using Inference.KvCache;
using Inference.Tests.Support;

namespace Inference.Tests.KvCache;

/// <summary>The KV pool's size by vLLM's rule (fraction × total − weights − activations), with injected numbers.</summary>
public class KvMemoryPlanTests
{
    private const long GiB = 1L << 30, MiB = 1L << 20;

    [Test]
    public void Rule_IsFractionOfTotal_LessWeightsAndActivations_CappedAtTheSequencesNeed()
    {
        var options = new KvCacheOptions { MemoryFraction = 0.9, BlockSize = 16 };
        var plan = KvMemoryPlan.Create(options, totalBytes: 80 * GiB, freeBytes: 79 * GiB, weightBytes: 16 * GiB, activationBytes: 2 * GiB, capBytes: long.MaxValue, blockBytes: 2 * MiB);
        long expected = (long)(0.9 * 80 * GiB) - 18 * GiB;
        Assert.That(plan.RuleBytes, Is.EqualTo(expected));
        Assert.That(plan.PoolBytes, Is.EqualTo(expected));
        Assert.That(plan.BlockCount, Is.EqualTo(expected / (2 * MiB)));
        Assert.That(plan.TokenCapacity, Is.EqualTo(plan.BlockCount * 16L));
        Assert.That(plan.SequencesOf(4096), Is.EqualTo(plan.BlockCount / 256));
        Assert.That(plan.Formula(), Is.EqualTo("0.9 × 80.0 GiB − 16.0 GiB weights − 2.0 GiB activations = 54.0 GiB"));

        var capped = KvMemoryPlan.Create(options, 80 * GiB, null, 16 * GiB, 2 * GiB, capBytes: 3 * GiB, blockBytes: 2 * MiB);
        Assert.That(capped.PoolBytes, Is.EqualTo(3 * GiB));
        var explicitBudget = KvMemoryPlan.Create(options with { PoolBytes = 100 * MiB }, 80 * GiB, null, 79 * GiB, 2 * GiB, long.MaxValue, 2 * MiB);
        Assert.That(explicitBudget.PoolBytes, Is.EqualTo(100 * MiB), "an explicit budget is not the rule's");
        Assert.That(explicitBudget.Formula(), Does.StartWith("explicit budget"));
    }

    [Test]
    public void Rule_WithNothingLeft_OrTooLittleFreeDeviceMemory_IsAOneLineError()
    {
        var options = new KvCacheOptions { MemoryFraction = 0.5 };
        var e = Assert.Throws<ArgumentException>(() => KvMemoryPlan.Create(options, 16 * GiB, null, 7 * GiB, 2 * GiB, long.MaxValue, 2 * MiB))!;
        Assert.That(e.Message, Does.Contain("0.5 × 16.0 GiB − 7.0 GiB weights − 2.0 GiB activations = −1.0 GiB").And.Not.Contain('\n'));
        var busy = Assert.Throws<ArgumentException>(() => KvMemoryPlan.Create(options, 80 * GiB, freeBytes: 30 * GiB, 1 * GiB, 1 * GiB, long.MaxValue, 2 * MiB))!;
        Assert.That(busy.Message, Does.Contain("only 30.0 GiB is free"));
    }

    [Test]
    public async Task Engine_SizesItsPoolByTheRule_OnTheCpu()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, ContextLength = 256, KvCache = new KvCacheOptions { MemoryFraction = 0.01 } });
        var plan = engine.KvMemory;
        Assert.That(plan.TotalBytes, Is.EqualTo(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes));
        Assert.That(plan.WeightBytes, Is.InRange(250_000L, 2_000_000L), "stories260K: 260K parameters in f32");
        Assert.That(plan.ActivationBytes, Is.GreaterThan(0));
        Assert.That(plan.BlockBytes, Is.EqualTo(engine.KvBytesPerToken * 16));
        Assert.That((await engine.GetStatsAsync()).KvCache.TotalBlockCount, Is.EqualTo(plan.BlockCount));
    }
}
