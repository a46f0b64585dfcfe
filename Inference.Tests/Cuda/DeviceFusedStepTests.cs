using Inference.Cuda;
using Inference.Cuda.Runner;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;
using Inference.Models.Graph;

namespace Inference.Tests.Cuda;

/// <summary>
/// The device executor's fused steps (<see cref="DeviceStepPlan"/>: residual add + RMSNorm, RoPE + K/V write, gate/up
/// product + SwiGLU/GeGLU) against the same executor with fusion off, on random-weight models of every dense
/// architecture, F32/F16/Q8_0 weights, f32/f16/Q8_0 KV, a mixture of experts: greedy tokens and every logit bit for
/// bit on ILGPU's CPU accelerator (the fused kernels keep the unfused arithmetic and its order).
/// </summary>
public class DeviceFusedStepTests
{
    [TestCase("llama", GgmlType.F32, KvCacheDataType.Float32, 8, 2)]
    [TestCase("llama", GgmlType.F16, KvCacheDataType.Float16, 8, 8)]
    [TestCase("llama", GgmlType.Q8_0, KvCacheDataType.Float16, 8, 1)]
    [TestCase("llama", GgmlType.F32, KvCacheDataType.Q8_0, 8, 2)]
    [TestCase("qwen2", GgmlType.F32, KvCacheDataType.Float32, 8, 2)]
    [TestCase("qwen3", GgmlType.F16, KvCacheDataType.Float16, 8, 2)]
    [TestCase("gemma2", GgmlType.F32, KvCacheDataType.Float32, 8, 2)]
    [TestCase("gemma3", GgmlType.F32, KvCacheDataType.Float16, 8, 2)]
    [TestCase("phi3", GgmlType.F32, KvCacheDataType.Float32, 8, 8)]
    [TestCase("qwen2moe", GgmlType.F32, KvCacheDataType.Float32, 8, 2)]
    public void FusedSteps_GiveTheUnfusedTokensAndLogits_BitForBit(string architecture, GgmlType type, KvCacheDataType kv, int heads, int kvHeads) =>
        CompareFusedWithUnfused(DeviceTestAccelerator.Cpu, architecture, type, kv, heads, kvHeads, kv == KvCacheDataType.Q8_0 ? 32 : 16, CudaAttentionKernels.Ilgpu, 0);

    /// <summary>
    /// Prefill of two prompts, seven greedy decode steps (the last with one sequence alone) on a fused and an unfused
    /// executor sharing one KV cache manager: the same greedy tokens, and logits bit for bit (<paramref name="relativeL2"/>
    /// 0) or within that relative L2 per row.
    /// </summary>
    internal static void CompareFusedWithUnfused(ILGPU.Runtime.Accelerator accelerator, string architecture, GgmlType type, KvCacheDataType kv, int heads, int kvHeads,
        int headDim, CudaAttentionKernels attention, double relativeL2)
    {
        string path = DeviceForwardExecutorTests.Model(heads, kvHeads, type, headDim, architecture, experts: architecture.EndsWith("moe", StringComparison.Ordinal) ? 6 : 0,
            softCap: architecture == "gemma2" ? 0.5f : 0f);
        using var gguf = GgufFile.Open(path);
        var config = ModelConfig.FromGguf(gguf);
        var model = new LlamaModel(gguf, config);
        var kvOptions = new KvCacheOptions { BlockSize = 8, DataType = kv, PoolBytes = 1, PrefixCaching = PrefixCachingMode.Disabled };
        var manager = new KvCacheManager(24, kvOptions);
        var ctx = new ForwardExecutorContext(model, manager, kvOptions, 24, 96, 64, 8, 2);
        using var fused = new DeviceForwardExecutor(accelerator, ctx, attention, owner: null, deviceSampling: false);
        using var plain = new DeviceForwardExecutor(accelerator, ctx, attention, owner: null, deviceSampling: false, fusedKernels: false);
        Assert.That(fused.Plan.Steps, Has.Length.LessThan(plain.Plan.Steps.Length), "some operations are fused");
        Assert.That(plain.Plan.Steps.All(s => s.Kind == PlanStepKind.Op), "fusion off: every operation on its own");
        bool ropeKv = kv is KvCacheDataType.Float32 or KvCacheDataType.Float16;
        Assert.That(fused.Plan.Steps.Count(s => s.Kind == PlanStepKind.RopeAttention), Is.EqualTo(ropeKv ? config.LayerCount : 0), "RoPE + K/V write in every layer (f32/f16 pools)");

        int vocab = config.VocabSize;
        var rng = new Random(HashCode.Combine(architecture, type, kv));
        var prompts = new[] { 11, 6 }.Select(n => Enumerable.Range(0, n).Select(_ => 1 + rng.Next(vocab - 1)).ToArray()).ToArray();
        var tokens = prompts.Select(p => p.ToList()).ToArray();
        for (int s = 0; s < prompts.Length; s++) Assert.That(manager.TryAllocate(s + 1, prompts[s], out _));
        var batch = new ModelBatch();
        // the prompts in one step (prefill chunks crossing a block), then six greedy decode steps of both sequences, and a
        // step where the second sequence decodes alone
        for (int s = 0; s < prompts.Length; s++) batch.Add(s + 1, prompts[s], 0, wantLogits: true);
        Compare("prefill");
        for (int step = 0; step < 7; step++)
        {
            batch.Clear();
            int first = step == 6 ? 1 : 0;
            for (int s = first; s < prompts.Length; s++)
            {
                Assert.That(manager.TryAppendSlots(s + 1, tokens[s].ToArray().AsSpan(tokens[s].Count - 1, 1)));
                batch.Add(s + 1, tokens[s].ToArray().AsSpan(tokens[s].Count - 1, 1), tokens[s].Count - 1, wantLogits: true);
            }
            Compare($"decode step {step}");
        }

        void Compare(string what)
        {
            var expected = new float[batch.LogitCount * vocab];
            var actual = new float[expected.Length];
            Array.Fill(expected, float.NaN);
            Array.Fill(actual, float.NaN);
            plain.Forward(batch, expected);
            fused.Forward(batch, actual);
            Assert.That(actual, Has.None.NaN, $"{what}: every logit written");
            if (relativeL2 == 0) Assert.That(actual, Is.EqualTo(expected), $"{what}: fused logits against unfused, bit for bit");
            for (int i = 0; i < batch.LogitCount; i++)
            {
                int seq = (int)batch.Segments[i].SequenceId - 1;
                int next = Inference.Kernels.Reference.ReferenceSelection.ArgMax(actual.AsSpan(i * vocab, vocab));
                Assert.That(next, Is.EqualTo(Inference.Kernels.Reference.ReferenceSelection.ArgMax(expected.AsSpan(i * vocab, vocab))), $"{what}: greedy token of row {i}");
                if (relativeL2 > 0)
                    Assert.That(Inference.Kernels.Reference.ReferenceCompare.RelativeL2(actual.AsSpan(i * vocab, vocab), expected.AsSpan(i * vocab, vocab)), Is.LessThan(relativeL2), $"{what}: row {i}");
                tokens[seq].Add(next);
            }
        }
    }

    /// <summary>
    /// The plan of a llama-style model: a layer's 12 operations (15 launches besides the attention kernels: the norm, the
    /// Q, K, V products, two ropes, the K/V write, …) become 9 launches, its attention norm folded into the previous
    /// layer's last add; the first layer keeps its own norm (10), the last layer's add stays alone before the head's gather.
    /// </summary>
    [Test]
    public void LlamaPlan_FusesEveryLayer()
    {
        using var gguf = GgufFile.Open(DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32));
        var config = ModelConfig.FromGguf(gguf);
        var model = new LlamaModel(gguf, config);
        var graph = model.Graph;
        var fused = DeviceStepPlan.Build(graph, fuse: true, ropeKv: true);
        var plain = DeviceStepPlan.Build(graph, fuse: false, ropeKv: true);
        Assert.That(config.LayerCount, Is.EqualTo(2));
        Assert.That(Launches(graph, plain, 0), Is.EqualTo(15), "unfused layer 0 (its own attention norm, not the next layer's)");
        Assert.That(Launches(graph, plain, 1), Is.EqualTo(15), "unfused last layer");
        Assert.That(Launches(graph, fused, 0), Is.EqualTo(10), "fused layer 0: its own attention norm, and its last add with layer 1's attention norm");
        Assert.That(Launches(graph, fused, 1), Is.EqualTo(9), "fused last layer: its attention norm folded into layer 0's add, its last add alone");
        Assert.That(fused.CountSteps(graph, 0, PlanStepKind.AddRmsNorm), Is.EqualTo(2));
        Assert.That(fused.CountSteps(graph, 0, PlanStepKind.GluMatMul), Is.EqualTo(1));
        Assert.That(fused.CountSteps(graph, 0, PlanStepKind.RopeAttention), Is.EqualTo(1));
        Assert.That(graph.Ops[fused.Steps[fused.HeadStep].Op].Kind, Is.EqualTo(OpKind.GatherLogitRows), "the head starts where the graph's does");
        Assert.That(DeviceStepPlan.Build(graph, fuse: true, ropeKv: false).CountSteps(graph, 0, PlanStepKind.RopeAttention), Is.Zero, "block-format pools keep the separate write");
        foreach (var plan in new[] { fused, plain })
        {
            int next = 0;
            foreach (var s in plan.Steps)
            {
                int first = s.Op;
                foreach (int o in (ReadOnlySpan<int>)[s.Op2, s.Op3, s.Op4])
                    if (o >= 0) first = Math.Min(first, o);
                Assert.That(first, Is.EqualTo(next), "each step starts where the last one ended");
                next = s.LastOp + 1;
            }
            Assert.That(next, Is.EqualTo(graph.Ops.Length), "the steps cover every operation once, in order");
        }
        foreach (var s in fused.Steps.Where(s => s.Kind == PlanStepKind.RopeAttention))
        {
            var table = graph.RopeTables[graph.Ops[s.Op2].Param];
            Assert.That((s.RopeKv.QueryHeads, s.RopeKv.KvHeads, s.RopeKv.HeadDim, s.RopeKv.RotaryDim, s.RopeKv.QueryScale),
                Is.EqualTo((config.HeadCount, config.KvHeadCount, config.HeadDim, table.RopeDim, 1f)), "the fused launch's shape, built with the plan");
        }
    }

    /// <summary>Kernel launches of <paramref name="layer"/>'s steps besides the attention kernels themselves.</summary>
    private static int Launches(ModelGraph graph, DeviceStepPlan plan, int layer)
    {
        int launches = 0;
        foreach (var s in plan.Steps)
        {
            var op = graph.Ops[s.Op];
            if (op.Layer != layer) continue;
            launches += s.Kind != PlanStepKind.Op ? 1 : op.Kind switch
            {
                OpKind.MatMul => 1 + (op.W1 >= 0 ? 1 : 0) + (op.W2 >= 0 ? 1 : 0),
                _ => 1,   // the attention operation: its K/V write (the attention kernels are not counted)
            };
        }
        return launches;
    }
}
