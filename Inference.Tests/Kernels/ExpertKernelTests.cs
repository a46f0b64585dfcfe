using ILGPU.Runtime;
using Inference.Backends.Cpu;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;

namespace Inference.Tests.Kernels;

/// <summary>
/// The mixture-of-experts routing and combining kernels (<see cref="ExpertKernels"/>) on the CPU accelerator against
/// <see cref="ReferenceExperts"/> and the CPU path's <see cref="MixtureOfExperts.Route"/>; random inputs, poisoned outputs,
/// and a token's bits checked to be the same alone and inside a batch.
/// </summary>
public partial class ExpertKernelTests
{
    private static LayerKernels Kernels => LayerKernelTests.Kernels.Value;
    private static Accelerator Acc => KernelTestAccelerator.Cpu;

    /// <summary>Router logits with ties planted: row 1 has two equal maxima, row 2 all equal.</summary>
    private static float[] Logits(int tokens, int experts, int seed)
    {
        var logits = PagedAttentionCase.Random(new Random(seed), tokens * experts, 4f);
        logits[experts + 3] = logits[experts + 1] = 9f;
        Array.Fill(logits, 0.25f, 2 * experts, experts);
        return logits;
    }

    private static (int[] Chosen, float[] Weights, float[] Probabilities) Route(float[] logits, int tokens, int experts, int k, bool normalize)
    {
        using var lb = Acc.Allocate1D(logits);
        using var cb = Acc.Allocate1D(Enumerable.Repeat(-7, tokens * k).ToArray());
        using var wb = Acc.Allocate1D(PagedAttentionCase.Poisoned(tokens * k));
        Kernels.RouteExperts(lb.View, cb.View, wb.View, tokens, experts, k, normalize);
        Acc.Synchronize();
        return (cb.GetAsArray1D(), wb.GetAsArray1D(), lb.GetAsArray1D());
    }

    // Mixtral (8 experts, top-2, renormalised), qwen2moe (60, top-4, as they are), qwen3moe (128, top-8, renormalised)
    [TestCase(8, 2, true)]
    [TestCase(60, 4, false)]
    [TestCase(128, 8, true)]
    [TestCase(5, 5, false)]
    public void Route_MatchesTheReferenceAndTheCpuPath(int experts, int k, bool normalize)
    {
        const int tokens = 37;
        var logits = Logits(tokens, experts, experts * 10 + k);
        var (chosen, weights, _) = Route(logits, tokens, experts, k, normalize);

        var refChosen = new int[tokens * k];
        var refWeights = new double[tokens * k];
        ReferenceExperts.Route(logits, experts, k, normalize, refChosen, refWeights);
        Assert.That(chosen, Is.EqualTo(refChosen), "expert ids (ties to the lower id)");
        for (int i = 0; i < weights.Length; i++) Assert.That(weights[i], Is.EqualTo(refWeights[i]).Within(1e-6 + 1e-5 * refWeights[i]), $"weight {i}");
        Assert.That(chosen.AsSpan(k, 2).ToArray(), Is.EqualTo(new[] { 1, 3 }), "the planted tie goes to the lower id first");
        Assert.That(chosen.AsSpan(2 * k, k).ToArray(), Is.EqualTo(Enumerable.Range(0, k).ToArray()), "an all-equal row picks ids in order");

        var cpuLogits = (float[])logits.Clone();
        var cpuChosen = new int[tokens * k];
        var cpuWeights = new float[tokens * k];
        MixtureOfExperts.Route(cpuLogits, tokens, experts, k, normalize, cpuChosen, cpuWeights);
        Assert.That(chosen, Is.EqualTo(cpuChosen));
        for (int i = 0; i < weights.Length; i++) Assert.That(weights[i], Is.EqualTo(cpuWeights[i]).Within(1e-6 + 1e-5 * cpuWeights[i]), $"weight {i}");
        if (normalize)
            for (int t = 0; t < tokens; t++) Assert.That(weights.AsSpan(t * k, k).ToArray().Sum(), Is.EqualTo(1f).Within(1e-5f));
    }

    [Test]
    public void Route_ATokensBitsDoNotDependOnItsBatch()
    {
        const int tokens = 19, experts = 16, k = 4;
        var logits = Logits(tokens, experts, 4);
        var (chosen, weights, probabilities) = Route(logits, tokens, experts, k, normalize: true);
        foreach (int t in new[] { 0, 7, tokens - 1 })
        {
            var (c1, w1, p1) = Route(logits.AsSpan(t * experts, experts).ToArray(), 1, experts, k, normalize: true);
            Assert.That(c1, Is.EqualTo(chosen.AsSpan(t * k, k).ToArray()));
            Assert.That(w1, Is.EqualTo(weights.AsSpan(t * k, k).ToArray()), "bit-identical weights");
            Assert.That(p1, Is.EqualTo(probabilities.AsSpan(t * experts, experts).ToArray()), "bit-identical probabilities");
        }
    }

    [TestCase(1, 64, 2)]
    [TestCase(13, 96, 4)]
    [TestCase(7, 33, 8)]
    public void CombineAndSharedGate_MatchTheReference(int tokens, int dim, int k)
    {
        var rng = new Random(tokens * dim + k);
        var y = PagedAttentionCase.Random(rng, tokens * k * dim, 2f);
        var weights = PagedAttentionCase.Random(rng, tokens * k);
        var slotRows = Enumerable.Range(0, tokens * k).OrderBy(_ => rng.Next()).ToArray();   // a permutation of Y's rows
        var shared = PagedAttentionCase.Random(rng, tokens * dim);
        var gate = PagedAttentionCase.Random(rng, tokens, 5f);

        var expected = new float[tokens * dim];
        ReferenceExperts.Combine(y, weights, slotRows, expected, k);
        using var yb = Acc.Allocate1D(y);
        using var wb = Acc.Allocate1D(weights);
        using var sb = Acc.Allocate1D(slotRows);
        using var ob = Acc.Allocate1D(PagedAttentionCase.Poisoned(tokens * dim));
        Kernels.CombineExperts(yb.View, wb.View, sb.View, ob.View, tokens, dim, k);
        Acc.Synchronize();
        var combined = ob.GetAsArray1D();
        PagedAttentionCase.AssertClose(expected, combined, 1e-6f, 1e-5f, "combine");

        ReferenceExperts.AddSigmoidGated(expected, shared, gate);
        using var shb = Acc.Allocate1D(shared);
        using var gb = Acc.Allocate1D(gate);
        Kernels.AddSigmoidGated(ob.View, shb.View, gb.View, tokens, dim);
        Acc.Synchronize();
        PagedAttentionCase.AssertClose(expected, ob.GetAsArray1D(), 1e-6f, 1e-5f, "shared gate");

        // batch invariance: the last token alone gives the same bits
        int t = tokens - 1;
        using var w1 = Acc.Allocate1D(weights.AsSpan(t * k, k).ToArray());
        using var s1 = Acc.Allocate1D(slotRows.AsSpan(t * k, k).ToArray());
        using var o1 = Acc.Allocate1D(PagedAttentionCase.Poisoned(dim));
        Kernels.CombineExperts(yb.View, w1.View, s1.View, o1.View, 1, dim, k);
        Acc.Synchronize();
        Assert.That(o1.GetAsArray1D(), Is.EqualTo(combined.AsSpan(t * dim, dim).ToArray()));
    }
}
