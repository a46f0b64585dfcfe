using Inference.Models.Graph;

namespace Inference.Parallelism;

/// <summary>Turns an architecture's graph for one tensor-parallel rank into the graph that rank runs.</summary>
internal static class TensorParallelGraph
{
    /// <summary>
    /// <paramref name="graph"/> with an <see cref="OpKind.AllReduce"/> of each row-parallel product's output right after
    /// it (the ranks' partial sums added before the residual add reads them).
    /// </summary>
    /// <exception cref="NotSupportedException">A block matrix the layout does not know how to split (a fused QKV, experts).</exception>
    public static ModelGraph WithAllReduces(ModelGraph graph)
    {
        var ops = new List<ModelOp>(graph.Ops.Length + 2 * 64);
        foreach (var op in graph.Ops)
        {
            if (op.Kind == OpKind.MixtureOfExperts) throw new NotSupportedException("tensor parallelism does not split mixture-of-experts blocks");
            ops.Add(op);
            if (op.Kind != OpKind.MatMul) continue;
            foreach (int w in (ReadOnlySpan<int>)[op.W0, op.W1, op.W2])
            {
                if (w < 0) continue;
                string name = graph.Weights[w].Name;
                if (name.StartsWith("blk.", StringComparison.Ordinal) && TensorParallelLayout.Classify(name) == TensorRole.Replicated)
                    throw new NotSupportedException($"tensor parallelism does not know how to split '{name}'");
            }
            if (TensorParallelLayout.IsRowParallel(graph.Weights[op.W0].Name))
            {
                if (op.W1 >= 0) throw new NotSupportedException($"tensor parallelism cannot all-reduce a shared product of '{graph.Weights[op.W0].Name}'");
                ops.Add(ModelOp.Of(OpKind.AllReduce, op.Layer) with { Dst = op.Dst });
            }
        }
        return new ModelGraph([.. ops], graph.Buffers, graph.Weights, graph.RopeTables, graph.LogitsBuffer);
    }
}
