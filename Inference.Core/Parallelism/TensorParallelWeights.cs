using System.Runtime.InteropServices;
using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Models;

namespace Inference.Parallelism;

/// <summary>
/// One tensor-parallel rank's view of a model's weights: the architecture builds its graph for the rank's
/// configuration (<see cref="TensorParallelLayout.RankConfig"/>), asks for rank-sized matrices, and this source hands
/// out that rank's slice of each full tensor.
/// </summary>
/// <remarks>
/// <code>
///  column-parallel (output rows split):  attn_q, attn_k, attn_v, ffn_gate, ffn_up   rows [r·R, (r+1)·R) of the full matrix
///                                         (and their biases)                         in place, no copy
///  row-parallel (input columns split):    attn_output, ffn_down                      columns [r·C, (r+1)·C) of every row
///                                                                                    copied once (rows are not contiguous)
///  vocabulary-parallel (rows split):      token_embd, output                         rows of the rank's vocabulary slice,
///                                                                                    in place (RankGraph: masked lookup
///                                                                                    + all-reduce, logits gathered)
///  replicated:                            norms
///  K/V with fewer KV heads than ranks:    rank r holds KV head r / (ranks / kvHeads) (vLLM's replication)
/// </code>
/// The row-parallel products are partial sums that the ranks add with one all-reduce after each (see
/// <see cref="TensorParallelLayout.IsRowParallel"/>). Disposing frees the copied column slices.
/// </remarks>
internal sealed unsafe class TensorParallelWeights : IWeightSource, IDisposable
{
    private readonly IWeightSource _inner;
    private readonly TensorParallelLayout _layout;
    private readonly int _rank;
    private readonly List<nint> _copies = [];

    public TensorParallelWeights(IWeightSource inner, TensorParallelLayout layout, int rank)
    {
        _inner = inner;
        _layout = layout;
        _rank = rank;
    }

    public string Description => _inner.Description;

    public bool Contains(string name) => _inner.Contains(name);

    /// <inheritdoc />
    /// <remarks>Expert parallelism: a rank binds its own experts whole (<see cref="RankGraph.ForTensorRank"/>).</remarks>
    public WeightMatrix GetExpertMatrix(string name, int expert, int experts, int rows, int cols) =>
        _inner.GetExpertMatrix(name, expert, experts, rows, cols);

    public WeightMatrix GetMatrix(string name, int rows, int cols)
    {
        var c = _layout.Full;
        switch (TensorParallelLayout.Classify(name))
        {
            case TensorRole.Query:
            case TensorRole.FeedForwardIn:
            {
                var full = _inner.GetMatrix(name, rows * _layout.Size, cols);
                return RowSlice(full, _rank * rows, rows);
            }
            case TensorRole.KeyValue:
            {
                var full = _inner.GetMatrix(name, c.KvDim, cols);
                return RowSlice(full, _layout.KvHeadStart(_rank) * c.HeadDim, rows);
            }
            case TensorRole.RowParallel:
            {
                var full = _inner.GetMatrix(name, rows, cols * _layout.Size);
                return ColumnSlice(name, full, _rank * cols, cols);
            }
            case TensorRole.Vocabulary:
            {
                var full = _inner.GetMatrix(name, c.VocabSize, cols);
                return RowSlice(full, _layout.VocabSlice(_rank).Start, rows);
            }
            default:
                return _inner.GetMatrix(name, rows, cols);
        }
    }

    public float[]? GetVector(string name, int length, bool optional = false)
    {
        var c = _layout.Full;
        switch (TensorParallelLayout.Classify(name))
        {
            case TensorRole.Query:
            case TensorRole.FeedForwardIn:
                return _inner.GetVector(name, length * _layout.Size, optional)?.AsSpan(_rank * length, length).ToArray();
            case TensorRole.KeyValue:
                return _inner.GetVector(name, c.KvDim, optional)?.AsSpan(_layout.KvHeadStart(_rank) * c.HeadDim, length).ToArray();
            case TensorRole.RowParallel:
                // NOTE: a bias after a row-parallel product is added once, after the all-reduce; no architecture here has one.
                throw new NotSupportedException($"tensor parallelism does not split the bias '{name}' of a row-parallel product");
            default:
                return _inner.GetVector(name, length, optional);
        }
    }

    private static WeightMatrix RowSlice(WeightMatrix full, int firstRow, int rows) =>
        new(full.Type, full.Data + firstRow * full.RowBytes, rows, full.Cols);

    private WeightMatrix ColumnSlice(string name, WeightMatrix full, int firstColumn, int cols)
    {
        int block = GgmlTypeInfo.BlockElements(full.Type);
        if (firstColumn % block != 0 || cols % block != 0)
            throw new NotSupportedException(
                $"tensor '{name}' cannot be split into {_layout.Size} column slices of {cols}: {full.Type} stores {block} values per block");
        long sliceBytes = GgmlTypeInfo.RowBytes(full.Type, cols), offset = GgmlTypeInfo.RowBytes(full.Type, firstColumn);
        var copy = (byte*)NativeMemory.AlignedAlloc((nuint)(sliceBytes * full.Rows), 64);
        _copies.Add((nint)copy);
        for (int r = 0; r < full.Rows; r++)
            new ReadOnlySpan<byte>(full.Data + r * full.RowBytes + offset, (int)sliceBytes).CopyTo(new Span<byte>(copy + r * sliceBytes, (int)sliceBytes));
        return new WeightMatrix(full.Type, copy, full.Rows, cols);
    }

    public void Dispose()
    {
        foreach (var p in _copies) NativeMemory.AlignedFree((void*)p);
        _copies.Clear();
    }
}

/// <summary>What tensor parallelism does with a tensor.</summary>
internal enum TensorRole
{
    /// <summary>Replicated on every rank.</summary>
    Replicated,
    /// <summary>Query projection (and bias): output rows split by query head.</summary>
    Query,
    /// <summary>Key or value projection (and bias): split by KV head, or one KV head per rank group when there are fewer KV heads than ranks.</summary>
    KeyValue,
    /// <summary>Feed-forward gate and up projections: output rows split.</summary>
    FeedForwardIn,
    /// <summary>Attention output and feed-forward down projections: input columns split, partial sums all-reduced.</summary>
    RowParallel,
    /// <summary>The token embedding and the output head: rows (tokens) split into contiguous vocabulary slices.</summary>
    Vocabulary,
}

/// <summary>
/// How a model is split over <see cref="Size"/> tensor-parallel ranks (Megatron-LM's layout, as vLLM runs it): attention
/// heads and the feed-forward width are divided, the KV cache holds each rank's KV heads only.
/// </summary>
internal sealed class TensorParallelLayout
{
    /// <exception cref="NotSupportedException">The model's heads or widths do not divide over <paramref name="size"/> ranks.</exception>
    public TensorParallelLayout(ModelConfig full, int size)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        Full = full;
        Size = size;
        string Why(string what, int value) => $"tensor parallelism over {size} ranks needs {what} ({value}) to be a multiple of {size}";
        if (full.HeadCount % size != 0) throw new NotSupportedException(Why("the query head count", full.HeadCount));
        if (full.FfnDim % size != 0) throw new NotSupportedException(Why("the feed-forward width", full.FfnDim));
        if (full.VocabSize < size) throw new NotSupportedException($"tensor parallelism over {size} ranks needs at least {size} vocabulary entries ({full.VocabSize})");
        if (full.KvHeadCount % size != 0 && size % full.KvHeadCount != 0)
            throw new NotSupportedException($"tensor parallelism over {size} ranks needs the KV head count ({full.KvHeadCount}) to divide it or be a multiple of it");
        RankConfig = full with
        {
            HeadCount = full.HeadCount / size,
            KvHeadCount = Math.Max(1, full.KvHeadCount / size),
            FfnDim = full.FfnDim / size,
            // Experts are not split (expert parallelism places them whole), so they keep their width.
            ExpertFfnDim = full.ExpertWidth,
        };
    }

    /// <summary>The whole model's configuration.</summary>
    public ModelConfig Full { get; }

    /// <summary>Ranks.</summary>
    public int Size { get; }

    /// <summary>One rank's configuration: its share of the query heads, KV heads and feed-forward width.</summary>
    public ModelConfig RankConfig { get; }

    /// <summary>The first of the full model's KV heads that rank <paramref name="rank"/> holds.</summary>
    public int KvHeadStart(int rank) =>
        Full.KvHeadCount >= Size ? rank * RankConfig.KvHeadCount : rank / (Size / Full.KvHeadCount);

    /// <summary>Which rank holds KV head <paramref name="kvHead"/> of the full model (the first one, when replicated).</summary>
    public int KvHeadOwner(int kvHead) =>
        Full.KvHeadCount >= Size ? kvHead / RankConfig.KvHeadCount : kvHead * (Size / Full.KvHeadCount);

    /// <summary>Whether the matrix <paramref name="name"/> is split by input columns (its product needs an all-reduce).</summary>
    public static bool IsRowParallel(string name) => Classify(name) == TensorRole.RowParallel;

    /// <summary>
    /// The tokens of the vocabulary slice rank <paramref name="rank"/> holds of the embedding and the output head:
    /// contiguous, in rank order, the first <c>vocab mod Size</c> slices one token longer (vLLM pads the vocabulary instead).
    /// </summary>
    public (int Start, int Length) VocabSlice(int rank) => RankGroup.Part(Full.VocabSize, Size, rank);

    /// <summary>The role of a tensor by its GGUF name.</summary>
    public static TensorRole Classify(string name)
    {
        if (name is "token_embd.weight" or "output.weight") return TensorRole.Vocabulary;
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return TensorRole.Replicated;
        int dot = name.IndexOf('.', 4);
        var suffix = dot < 0 ? name : name[(dot + 1)..];
        return suffix switch
        {
            "attn_q.weight" or "attn_q.bias" => TensorRole.Query,
            "attn_k.weight" or "attn_k.bias" or "attn_v.weight" or "attn_v.bias" => TensorRole.KeyValue,
            "ffn_gate.weight" or "ffn_up.weight" => TensorRole.FeedForwardIn,
            "attn_output.weight" or "ffn_down.weight" => TensorRole.RowParallel,
            _ => TensorRole.Replicated,
        };
    }
}
