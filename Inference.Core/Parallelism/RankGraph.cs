using Inference.Models.Graph;

namespace Inference.Parallelism;

/// <summary>Turns an architecture's graph into the part one rank of a parallel layout runs, with its communication as operations.</summary>
/// <remarks>
/// <code>
///  tensor parallel (rank t of T):   Embed (rows of my vocabulary slice, zeros elsewhere) → AllReduce
///                                   row-parallel MatMul → AllReduce
///                                   MixtureOfExperts → ExpertAllToAll (expert parallel: my experts, tokens dispatched)
///                                   head MatMul → my slice of the logits → GatherColumns → logits on rank 0
///  pipeline parallel (stage s):     Receive(live buffers ← previous stage) · ops of my layers (KV layers renumbered
///                                   from 0) · Send(live buffers → next stage); embedding on the first, head on the last
/// </code>
/// </remarks>
internal static class RankGraph
{
    /// <summary>
    /// <paramref name="graph"/> for one tensor-parallel rank: an <see cref="OpKind.AllReduce"/> of each row-parallel
    /// product's output right after it and of the embedding (each rank looks up only the tokens of its vocabulary slice
    /// [<paramref name="vocabStart"/>, + <paramref name="vocabLength"/>)), and the output head's product into the rank's
    /// slice of the logits, gathered into the whole rows on the group's first rank.
    /// </summary>
    /// <param name="graph">The whole model's graph (built for the rank's share of heads and widths).</param>
    /// <param name="vocabStart">The first token of the rank's vocabulary slice.</param>
    /// <param name="vocabLength">Tokens of the slice.</param>
    /// <param name="experts">With expert parallelism, the rank and the group's size: the rank holds experts
    /// <see cref="RankGroup.Part"/>(experts, size, rank) of each mixture-of-experts block (and the shared expert), and the
    /// block becomes an <see cref="OpKind.ExpertAllToAll"/>; null refuses such blocks.</param>
    /// <exception cref="NotSupportedException">A block matrix the layout does not know how to split (a fused QKV, experts without expert parallelism).</exception>
    public static ModelGraph ForTensorRank(ModelGraph graph, int vocabStart, int vocabLength, (int Rank, int Size)? experts = null)
    {
        var expertLayers = (ExpertLayer[])graph.Experts.Clone();
        var ops = new List<ModelOp>(graph.Ops.Length + 2 * 64);
        var buffers = new List<BufferSpec>(graph.Buffers);
        int rankLogits = buffers.Count;
        buffers.Add(new BufferSpec("logits.rank", vocabLength, LogitRows: true));
        var weights = (WeightSpec[])graph.Weights.Clone();
        for (int i = 0; i < weights.Length; i++)
            if (weights[i].IsMatrix && TensorParallelLayout.Classify(weights[i].Name) == TensorRole.Vocabulary) weights[i] = weights[i] with { Rows = vocabLength };
        for (int i = 0; i < graph.Ops.Length; i++)
        {
            var op = graph.Ops[i];
            if (i >= graph.HeadStart)
            {
                // The head's ops on the logits work on this rank's columns of them.
                if (op.Dst == graph.LogitsBuffer) op = op with { Dst = rankLogits };
                if (op.Src == graph.LogitsBuffer) op = op with { Src = rankLogits };
                if (op.Kind == OpKind.MatMul && op.Dst == rankLogits && TensorParallelLayout.Classify(graph.Weights[op.W0].Name) != TensorRole.Vocabulary)
                    throw new NotSupportedException($"tensor parallelism does not know how to split the output head '{graph.Weights[op.W0].Name}'");
            }
            if (op.Kind == OpKind.MixtureOfExperts)
            {
                if (experts is not { } ep) throw new NotSupportedException("tensor parallelism does not split mixture-of-experts blocks; spread their experts over the ranks with expert parallelism (--enable-expert-parallel)");
                expertLayers[op.Param] = RankExperts(graph.Experts[op.Param], ep.Rank, ep.Size);
                ops.Add(op with { Kind = OpKind.ExpertAllToAll });
                continue;
            }
            if (op.Kind == OpKind.Embed)
            {
                if (TensorParallelLayout.Classify(graph.Weights[op.W0].Name) != TensorRole.Vocabulary)
                    throw new NotSupportedException($"tensor parallelism does not know how to split the embedding '{graph.Weights[op.W0].Name}'");
                ops.Add(op with { Param = vocabStart });
                ops.Add(ModelOp.Of(OpKind.AllReduce, op.Layer) with { Dst = op.Dst });
                continue;
            }
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
        if (graph.HasHead) ops.Add(ModelOp.Of(OpKind.GatherColumns, -1) with { Src = rankLogits, Dst = graph.LogitsBuffer });
        return new ModelGraph([.. ops], [.. buffers], weights, graph.RopeTables, graph.LogitsBuffer, expertLayers);
    }

    /// <summary>
    /// <paramref name="layer"/> as rank <paramref name="rank"/> of <paramref name="size"/> holds it: the other ranks' experts
    /// unset (-1: neither bound nor run here), the shared expert on every rank (each runs it over its own tokens). The
    /// router stays whole, so every rank routes every token alike.
    /// </summary>
    private static ExpertLayer RankExperts(ExpertLayer layer, int rank, int size)
    {
        if (layer.Count < size) throw new NotSupportedException($"expert parallelism over {size} ranks needs at least {size} experts per block ({layer.Count})");
        var (first, count) = RankGroup.Part(layer.Count, size, rank);
        int[] Mine(int[] ids)
        {
            var mine = new int[ids.Length];
            for (int e = 0; e < ids.Length; e++) mine[e] = e >= first && e < first + count ? ids[e] : -1;
            return mine;
        }
        return layer with { Gate = Mine(layer.Gate), Up = Mine(layer.Up), Down = Mine(layer.Down) };
    }

    /// <summary>
    /// The operations of layers [<paramref name="firstLayer"/>, <paramref name="endLayer"/>) of <paramref name="graph"/>
    /// (and the embedding when the first layer is 0, the output head when the last is the model's), their layers
    /// renumbered from 0 (the stage's KV pool holds its layers only); the buffers live at the stage's start are received
    /// from rank <paramref name="previousRank"/> and those live at its end sent to rank <paramref name="nextRank"/>.
    /// </summary>
    public static ModelGraph ForStage(ModelGraph graph, int layerCount, int firstLayer, int endLayer, int previousRank, int nextRank)
    {
        var all = graph.Ops;
        int start = firstLayer == 0 ? 0 : FirstOpOfLayer(all, firstLayer);
        int end = endLayer == layerCount ? all.Length : FirstOpOfLayer(all, endLayer);
        var ops = new List<ModelOp>(end - start + 4);
        if (start > 0)
            foreach (int b in LiveAt(all, start)) ops.Add(ModelOp.Of(OpKind.Receive, firstLayer) with { Dst = b, Param = previousRank });
        for (int i = start; i < end; i++)
        {
            var op = all[i];
            if (op.Layer >= 0)
            {
                if (op.Layer < firstLayer || op.Layer >= endLayer) throw new InvalidOperationException($"operation {i} of layer {op.Layer} is out of layer order");
                op = op with { Layer = op.Layer - firstLayer };
            }
            ops.Add(op);
        }
        if (end < all.Length)
            foreach (int b in LiveAt(all, end)) ops.Add(ModelOp.Of(OpKind.Send, endLayer - 1 - firstLayer) with { Src = b, Param = nextRank });
        return new ModelGraph([.. ops], graph.Buffers, graph.Weights, graph.RopeTables, graph.LogitsBuffer, graph.Experts, partial: true);
    }

    private static int FirstOpOfLayer(ModelOp[] ops, int layer)
    {
        for (int i = 0; i < ops.Length; i++) if (ops[i].Layer == layer) return i;
        throw new InvalidOperationException($"the graph has no operation of layer {layer}");
    }

    /// <summary>The buffers that operations from <paramref name="start"/> on read before they write them (what a stage boundary must carry).</summary>
    internal static List<int> LiveAt(ModelOp[] ops, int start)
    {
        var live = new List<int>();
        var written = new HashSet<int>();
        Span<int> reads = stackalloc int[4], writes = stackalloc int[4];
        for (int i = start; i < ops.Length; i++)
        {
            Access(ops[i], reads, writes, out int readCount, out int writeCount);
            for (int r = 0; r < readCount; r++)
                if (reads[r] >= 0 && !written.Contains(reads[r]) && !live.Contains(reads[r])) live.Add(reads[r]);
            for (int w = 0; w < writeCount; w++) if (writes[w] >= 0) written.Add(writes[w]);
        }
        return live;
    }

    /// <summary>The buffers an operation reads (all of them before it writes) and those it overwrites whole.</summary>
    private static void Access(ModelOp op, Span<int> reads, Span<int> writes, out int readCount, out int writeCount)
    {
        switch (op.Kind)
        {
            case OpKind.Embed:
            case OpKind.Receive:
                readCount = 0;
                writes[0] = op.Dst;
                writeCount = 1;
                return;
            case OpKind.RmsNorm:
            case OpKind.GatherLogitRows:
            case OpKind.GatherColumns:
            case OpKind.MixtureOfExperts:
            case OpKind.ExpertAllToAll:
                reads[0] = op.Src;
                readCount = 1;
                writes[0] = op.Dst;
                writeCount = 1;
                return;
            case OpKind.MatMul:
                reads[0] = op.Src;
                readCount = 1;
                writes[0] = op.Dst;
                writes[1] = op.Dst2;
                writes[2] = op.Dst3;
                writeCount = 3;
                return;
            case OpKind.Attention:
                reads[0] = op.Src;
                reads[1] = op.Src2;
                reads[2] = op.Src3;
                readCount = 3;
                writes[0] = op.Dst;
                writeCount = 1;
                return;
            case OpKind.AddBias:
            case OpKind.Rope:
            case OpKind.Scale:
            case OpKind.SoftCap:
            case OpKind.AllReduce:
                reads[0] = op.Dst;
                readCount = 1;
                writeCount = 0;
                return;
            case OpKind.Send:
                reads[0] = op.Src;
                readCount = 1;
                writeCount = 0;
                return;
            default:
                // Add, SwiGlu, GeGlu and any operation added later: every buffer it names counts as read.
                reads[0] = op.Src;
                reads[1] = op.Src2;
                reads[2] = op.Src3;
                reads[3] = op.Dst;
                readCount = 4;
                writeCount = 0;
                return;
        }
    }
}
