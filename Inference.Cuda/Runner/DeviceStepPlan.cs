using Inference.Kernels.Layer;
using Inference.Models;
using Inference.Models.Graph;

namespace Inference.Cuda.Runner;

/// <summary>What one step of a <see cref="DeviceStepPlan"/> launches.</summary>
internal enum PlanStepKind : byte
{
    /// <summary>One graph operation as it is (<see cref="PlanStep.Op"/>).</summary>
    Op,
    /// <summary>Add (Op) then RmsNorm of its destination (Op2): one <c>AddRmsNorm</c> launch.</summary>
    AddRmsNorm,
    /// <summary>
    /// Rope of Q (Op2), Rope of K (Op3), optionally Scale of Q (Op4), then Attention (Op): one <c>RopeWriteKv</c> launch
    /// (Q rotated in place, rotated K and V into the pool), then the attention kernels.
    /// </summary>
    RopeAttention,
    /// <summary>MatMul with a gate and an up output (Op) then SwiGlu or GeGlu of them (Op2): one fused row-kernel launch where the row kernels take the product.</summary>
    GluMatMul,
}

/// <summary>
/// One step of a plan: a kind and the graph operations it stands for (indexes into <see cref="ModelGraph.Ops"/>, -1
/// unused); a <see cref="PlanStepKind.RopeAttention"/> step also carries its launch shape, fixed by the graph.
/// </summary>
internal readonly record struct PlanStep(PlanStepKind Kind, int Op, int Op2 = -1, int Op3 = -1, int Op4 = -1, RopeKvShape RopeKv = default)
{
    /// <summary>The last graph operation of the step: a step stands for a contiguous run of operations, the next starts after it.</summary>
    public int LastOp => Math.Max(Math.Max(Op, Op2), Math.Max(Op3, Op4));
}

/// <summary>
/// The device executor's steps for a graph, chosen once by a peephole over <see cref="ModelGraph.Ops"/>: runs of
/// operations that one fused kernel does are replaced by one step, everything else is a step of its own.
/// </summary>
/// <remarks>
/// <code>
///  Add(x += d) · RmsNorm(x → y)                          → AddRmsNorm          (the residual add and the next norm)
///  Rope(q) · Rope(k) · [Scale(q)] · Attention(q, k, v)   → RopeAttention       (f32 and f16 pools; the same table)
///  MatMul(n → gate, up) · SwiGlu/GeGlu(gate, up)         → GluMatMul           (same-shaped gate and up)
/// </code>
/// A fusion that leaves a buffer unwritten (K keeps its unrotated values, up is never stored) is taken only when no later
/// operation reads that buffer before writing it; no fusion spans the start of the head (<see cref="ModelGraph.HeadStart"/>).
/// </remarks>
internal sealed class DeviceStepPlan
{
    private DeviceStepPlan(PlanStep[] steps, int headStep)
    {
        Steps = steps;
        HeadStep = headStep;
    }

    public PlanStep[] Steps { get; }

    /// <summary>Index of the first step of the head (skipped when no segment wants logits); Steps.Length when there is none.</summary>
    public int HeadStep { get; }

    /// <summary>Builds the plan: every operation a step of its own when <paramref name="fuse"/> is false.</summary>
    /// <param name="graph">The model's graph.</param>
    /// <param name="fuse">Whether to fuse.</param>
    /// <param name="ropeKv">Whether the KV pool takes the fused RoPE + KV write (f32 and f16 pools).</param>
    public static DeviceStepPlan Build(ModelGraph graph, bool fuse, bool ropeKv)
    {
        var ops = graph.Ops;
        var steps = new List<PlanStep>(ops.Length);
        int headStep = -1;
        for (int i = 0; i < ops.Length;)
        {
            if (i == graph.HeadStart) headStep = steps.Count;
            int end = graph.HeadStart > i ? graph.HeadStart : ops.Length;   // no fusion crosses the head's start
            if (fuse && TryAddRmsNorm(ops, i, end, out var step)
                || fuse && TryGlu(ops, i, end, out step)
                || fuse && ropeKv && TryRopeAttention(graph, i, end, out step))
            {
                steps.Add(step);
                i = step.LastOp + 1;
                continue;
            }
            steps.Add(new PlanStep(PlanStepKind.Op, i));
            i++;
        }
        return new DeviceStepPlan([.. steps], headStep < 0 ? steps.Count : headStep);
    }

    /// <summary>Steps per kind in layer <paramref name="layer"/> (a step belongs to the layer of its operation <see cref="PlanStep.Op"/>).</summary>
    public int CountSteps(ModelGraph graph, int layer, PlanStepKind kind)
    {
        int count = 0;
        foreach (var s in Steps)
            if (s.Kind == kind && graph.Ops[s.Op].Layer == layer) count++;
        return count;
    }

    private static bool TryAddRmsNorm(ModelOp[] ops, int i, int end, out PlanStep step)
    {
        step = default;
        if (i + 1 >= end) return false;
        var add = ops[i];
        var norm = ops[i + 1];
        if (add.Kind != OpKind.Add || norm.Kind != OpKind.RmsNorm || norm.Src != add.Dst || norm.Dst == add.Dst) return false;
        step = new PlanStep(PlanStepKind.AddRmsNorm, i, i + 1);
        return true;
    }

    private static bool TryGlu(ModelOp[] ops, int i, int end, out PlanStep step)
    {
        step = default;
        if (i + 1 >= end) return false;
        var mm = ops[i];
        var glu = ops[i + 1];
        if (mm.Kind != OpKind.MatMul || mm.W1 < 0 || mm.W2 >= 0 || glu.Kind is not (OpKind.SwiGlu or OpKind.GeGlu)
            || glu.Dst != mm.Dst || glu.Src != mm.Dst2 || mm.Dst == mm.Dst2 || mm.Src == mm.Dst || mm.Src == mm.Dst2) return false;
        if (!DeadAfter(ops, mm.Dst2, i + 2)) return false;
        step = new PlanStep(PlanStepKind.GluMatMul, i, i + 1);
        return true;
    }

    /// <summary>Rope(q), Rope(k) in either order, then an optional Scale(q), then Attention(q, k, v).</summary>
    private static bool TryRopeAttention(ModelGraph graph, int i, int end, out PlanStep step)
    {
        var ops = graph.Ops;
        step = default;
        if (i + 2 >= end || ops[i].Kind != OpKind.Rope || ops[i + 1].Kind != OpKind.Rope) return false;
        int at = i + 2, scale = -1;
        if (ops[at].Kind == OpKind.Scale) scale = at++;
        if (at >= end || ops[at].Kind != OpKind.Attention) return false;
        var attention = ops[at];
        int q = attention.Src, k = attention.Src2, v = attention.Src3;
        int ropeQ = ops[i].Dst == q ? i : ops[i + 1].Dst == q ? i + 1 : -1;
        int ropeK = ops[i].Dst == k ? i : ops[i + 1].Dst == k ? i + 1 : -1;
        if (ropeQ < 0 || ropeK < 0 || ropeQ == ropeK || q == k || q == v || k == v || attention.Dst == q || attention.Dst == k) return false;
        if (ops[ropeQ].Param != ops[ropeK].Param || (scale >= 0 && ops[scale].Dst != q)) return false;
        var table = graph.RopeTables[ops[ropeQ].Param];
        if (graph.Buffers[q].Width % table.HeadDim != 0 || graph.Buffers[k].Width % table.HeadDim != 0 || graph.Buffers[k].Width != graph.Buffers[v].Width) return false;
        // the fused kernel leaves k unrotated: nothing after may read it before writing it
        if (!DeadAfter(ops, k, at + 1)) return false;
        var shape = new RopeKvShape(graph.Buffers[q].Width / table.HeadDim, graph.Buffers[k].Width / table.HeadDim, table.HeadDim, table.RopeDim,
            table.Layout == RopeLayout.Neox ? 1 : 0, scale >= 0 ? ops[scale].Value : 1f);
        step = new PlanStep(PlanStepKind.RopeAttention, at, ropeQ, ropeK, scale, shape);
        return true;
    }

    /// <summary>Whether no operation from <paramref name="from"/> on reads <paramref name="buffer"/> before one overwrites it whole.</summary>
    private static bool DeadAfter(ModelOp[] ops, int buffer, int from)
    {
        for (int i = from; i < ops.Length; i++)
        {
            var op = ops[i];
            if (op.Src == buffer || op.Src2 == buffer || op.Src3 == buffer) return false;
            bool writes = op.Dst == buffer || op.Dst2 == buffer || op.Dst3 == buffer;
            if (!writes) continue;
            // operations that read their destination first (in place) use its old rows
            bool overwrites = op.Kind is OpKind.Embed or OpKind.MatMul or OpKind.RmsNorm or OpKind.Attention or OpKind.GatherLogitRows
                or OpKind.MixtureOfExperts or OpKind.Receive;
            return overwrites;
        }
        return true;
    }
}
