using System.Buffers;
using System.Numerics.Tensors;
using Inference.Backends.Cpu;
using Inference.KvCache;
using Inference.Models;

namespace Inference.Parallelism;

/// <summary>
/// Ring attention: a context-parallel rank's attention over its own tokens' queries, with every rank's new K/V passed
/// round the ring of ranks one block per hop and each block's partial attention merged with the online-softmax rule
/// (<see cref="PartialAttention"/>). Every rank also stores every block it sees in its own KV pool, so each pool holds
/// every token's K/V once the step is done: the positions cached before the step are read locally, and decode goes on
/// from any rank.
/// </summary>
/// <remarks>
/// <code>
///  rank c of C, per layer:  store my K/V, attend my queries to my block
///                           hop h = 1 … C − 1: send the block I hold to c + 1, receive block (c − h) mod C from c − 1,
///                           store it, attend my queries to it
///                           after the last hop, attend my queries to their positions cached before the step (every
///                           block of the step is stored by then: a prefix hit may be filled by another sequence's block)
///  block: [tokens of rank j, kvHeads, headDim] keys, then values; its positions and sequences are rank j's pieces
///  bytes per layer: each block crosses C − 1 links: (C − 1) · 2 · n · kvDim · 4 for the step's n tokens
/// </code>
/// A K/V cache of f16 or a block format stores the new K/V rounded: every block is read back from the pool as stored,
/// so the queries see the values one rank would read.
/// </remarks>
internal sealed class RingKvAttention : IKvAttention
{
    private readonly KvCacheStorage _storage;
    private readonly KvCacheManager _manager;
    private readonly PagedAttentionShape _shape;
    private readonly RankGroup _ring;
    private readonly int _rank;
    private readonly ContextSplit _split;
    private readonly int _kvDim;
    private float[] _lse = [];
    private float[] _held = [], _incoming = [], _rounded = [];

    /// <param name="storage">The rank's KV pool (its KV heads, every position).</param>
    /// <param name="manager">Block tables.</param>
    /// <param name="config">The rank's configuration (its heads).</param>
    /// <param name="ring">The ranks of context parallelism that hold the same heads.</param>
    /// <param name="rank">This rank's place in <paramref name="ring"/>.</param>
    /// <param name="split">The step's tokens by rank.</param>
    public RingKvAttention(KvCacheStorage storage, KvCacheManager manager, ModelConfig config, RankGroup ring, int rank, ContextSplit split)
    {
        _storage = storage;
        _manager = manager;
        _shape = new PagedAttentionShape(config.HeadCount, config.KvHeadCount, config.HeadDim, storage.BlockSize);
        _ring = ring;
        _rank = rank;
        _split = split;
        _kvDim = config.KvDim;
    }

    public void Attend(int layer, ModelBatch batch, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, WorkerPool pool, int slidingWindow = 0, float logitSoftCap = 0f)
    {
        var shape = slidingWindow == 0 && logitSoftCap == 0f ? _shape : _shape with { SlidingWindow = slidingWindow, LogitSoftCap = logitSoftCap };
        int size = _ring.Size, n = batch.TokenCount, heads = shape.HeadCount;
        int most = 0;
        for (int j = 0; j < size; j++) most = Math.Max(most, _split.Batches[j].TokenCount);
        if (_held.Length < 2 * most * _kvDim)
        {
            _held = new float[2 * most * _kvDim];
            _incoming = new float[2 * most * _kvDim];
            _rounded = _storage.DataType == KvCacheDataType.Float32 ? [] : new float[2 * most * _kvDim];
        }
        if (_lse.Length < n * heads) _lse = new float[Math.Max(n * heads, 2 * _lse.Length)];
        var lse = _lse.AsSpan(0, n * heads);
        output.Clear();
        lse.Fill(float.NegativeInfinity);

        // My block: stored, read back as stored, attended.
        k.CopyTo(_held);
        v.CopyTo(_held.AsSpan(n * _kvDim));
        Run(shape, layer, batch, q, output, lse, _rank, Store(layer, _rank), cached: false, pool);
        for (int hop = 1; hop < size; hop++)
        {
            int from = (_rank - hop + size) % size;
            int length = 2 * _split.Batches[from].TokenCount * _kvDim, held = 2 * _split.Batches[(from + 1) % size].TokenCount * _kvDim;
            _ring.SendReceive(_rank, (_rank + 1) % size, _held.AsSpan(0, held), (_rank - 1 + size) % size, _incoming.AsSpan(0, length));
            (_held, _incoming) = (_incoming, _held);
            // NOTE: the positions cached before the step last, once every block is stored: a sequence whose prefix hit
            // blocks that another sequence fills in this very step reads them from the pool.
            Run(shape, layer, batch, q, output, lse, from, Store(layer, from), cached: hop == size - 1, pool);
        }
    }

    /// <summary>
    /// Stores rank <paramref name="owner"/>'s block (held in <c>_held</c>) in this rank's pool; returns the block the
    /// queries attend to: the values as stored. (The block passed on keeps the computed values, so every rank stores the
    /// same bytes.)
    /// </summary>
    private float[] Store(int layer, int owner)
    {
        var block = _held;
        var rounded = _rounded;
        var pieces = _split.Batches[owner];
        int n = pieces.TokenCount, kvDim = _kvDim, bs = _storage.BlockSize;
        foreach (var seg in pieces.Segments)
        {
            var table = _manager.GetBlockTable(seg.SequenceId);
            for (int i = 0; i < seg.TokenCount; i++)
            {
                int t = seg.TokenStart + i, pos = seg.StartPosition + i;
                _storage.Write(layer, table[pos / bs], pos % bs, block.AsSpan(t * kvDim, kvDim), block.AsSpan((n + t) * kvDim, kvDim));
                if (rounded.Length > 0)
                    ReadRow(layer, table[pos / bs], pos % bs, rounded.AsSpan(t * kvDim, kvDim), rounded.AsSpan((n + t) * kvDim, kvDim));
            }
        }
        return rounded.Length > 0 ? rounded : block;
    }

    /// <summary>The key and value of one slot as stored, as floats.</summary>
    private void ReadRow(int layer, int blockId, int slot, Span<float> key, Span<float> value)
    {
        int row = blockId * _storage.BlockSize + slot, kvDim = _kvDim;
        switch (_storage.DataType)
        {
            case KvCacheDataType.Float32:
                _storage.GetKeys<float>(layer).Slice(row * kvDim, kvDim).CopyTo(key);
                _storage.GetValues<float>(layer).Slice(row * kvDim, kvDim).CopyTo(value);
                break;
            case KvCacheDataType.Float16:
                TensorPrimitives.ConvertToSingle(_storage.GetKeys<Half>(layer).Slice(row * kvDim, kvDim), key);
                TensorPrimitives.ConvertToSingle(_storage.GetValues<Half>(layer).Slice(row * kvDim, kvDim), value);
                break;
            default:
            {
                int bytes = KvBlockFormat.RowBytes(_storage.DataType, kvDim);
                KvBlockFormat.Dequantize(_storage.DataType, _storage.GetKeyBytes(layer).Slice(row * bytes, bytes), key);
                KvBlockFormat.Dequantize(_storage.DataType, _storage.GetValueBytes(layer).Slice(row * bytes, bytes), value);
                break;
            }
        }
    }

    /// <summary>Merges into every query of <paramref name="batch"/> its attention to rank <paramref name="owner"/>'s block (<paramref name="values"/>: keys, then values), and with <paramref name="cached"/> first to its sequence's positions cached before the step.</summary>
    private unsafe void Run(in PagedAttentionShape shape, int layer, ModelBatch batch, ReadOnlySpan<float> q, Span<float> output, Span<float> lse, int owner, float[] values, bool cached, WorkerPool pool)
    {
        int n = batch.TokenCount;
        if (n == 0) return;
        fixed (float* pq = q)
        fixed (float* po = output)
        fixed (float* pl = lse)
        fixed (float* block = values)
        {
            var job = new Job(this, shape, layer, batch, _split.Batches[owner], pq, po, pl, block, cached);
            long bytes = 2L * n * (_split.Batches[owner].TokenCount + (cached ? MostCached(batch) : 0)) * _kvDim * sizeof(float);
            pool.Run(n, job, bytes);
        }
    }

    private int MostCached(ModelBatch batch)
    {
        int most = 0;
        for (int p = 0; p < batch.Segments.Count; p++) most = Math.Max(most, _split.StepStart(_rank, p));
        return most;
    }

    /// <summary>Queries [start, end) of the rank's batch against one block (and the cached positions).</summary>
    private readonly unsafe struct Job(RingKvAttention owner, PagedAttentionShape shape, int layer, ModelBatch batch, ModelBatch block,
        float* q, float* output, float* lse, float* blockData, bool cached) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int heads = shape.HeadCount, hd = shape.HeadDim, stride = shape.QueryStride, kvDim = owner._kvDim, bs = owner._storage.BlockSize;
            int blockTokens = block.TokenCount;
            var storage = owner._storage;
            bool f32 = storage.DataType == KvCacheDataType.Float32;
            int scratchLength = stride + heads + Math.Max(blockTokens, bs) + 2 * bs * kvDim;
            float[] rented = ArrayPool<float>.Shared.Rent(scratchLength);
            var scratch = rented.AsSpan();
            var partOutput = scratch[..stride];
            var partLse = scratch.Slice(stride, heads);
            var scores = scratch.Slice(stride + heads, Math.Max(blockTokens, bs));
            var rows = scratch.Slice(stride + heads + scores.Length, 2 * bs * kvDim);
            var keys = new ReadOnlySpan<float>(blockData, blockTokens * kvDim);
            var values = new ReadOnlySpan<float>(blockData + (long)blockTokens * kvDim, blockTokens * kvDim);
            int p = 0;
            for (int t = start; t < end; t++)
            {
                while (t >= batch.Segments[p].TokenStart + batch.Segments[p].TokenCount) p++;
                var seg = batch.Segments[p];
                int position = seg.StartPosition + (t - seg.TokenStart);
                var query = new ReadOnlySpan<float>(q + (long)t * stride, stride);
                var o = new Span<float>(output + (long)t * stride, stride);
                var l = new Span<float>(lse + (long)t * heads, heads);
                if (cached)
                {
                    // The positions before the step, block by block of the pool, from the first this query sees.
                    int stepStart = owner._split.StepStart(owner._rank, p);
                    var table = owner._manager.GetBlockTable(seg.SequenceId);
                    for (int from = shape.FirstVisible(position + 1); from < stepStart;)
                    {
                        int to = Math.Min(stepStart, (from / bs + 1) * bs), count = to - from;
                        if (f32)
                        {
                            // A block's slots are contiguous rows of the pool.
                            int at = (table[from / bs] * bs + from % bs) * kvDim;
                            PartialAttention.Forward(shape, query, position, storage.GetKeys<float>(layer).Slice(at, count * kvDim),
                                storage.GetValues<float>(layer).Slice(at, count * kvDim), from, partOutput, partLse, scores);
                        }
                        else
                        {
                            var k = rows[..(count * kvDim)];
                            var v = rows.Slice(bs * kvDim, count * kvDim);
                            for (int i = 0; i < count; i++)
                                owner.ReadRow(layer, table[(from + i) / bs], (from + i) % bs, k.Slice(i * kvDim, kvDim), v.Slice(i * kvDim, kvDim));
                            PartialAttention.Forward(shape, query, position, k, v, from, partOutput, partLse, scores);
                        }
                        PartialAttention.Combine(o, l, partOutput, partLse, hd);
                        from = to;
                    }
                }
                // The block's pieces of the same sequence that start at or before this query.
                foreach (var piece in block.Segments)
                {
                    if (piece.SequenceId != seg.SequenceId || piece.StartPosition > position) continue;
                    int first = shape.FirstVisible(position + 1);
                    if (piece.StartPosition + piece.TokenCount <= first) continue;
                    PartialAttention.Forward(shape, query, position, keys.Slice(piece.TokenStart * kvDim, piece.TokenCount * kvDim),
                        values.Slice(piece.TokenStart * kvDim, piece.TokenCount * kvDim), piece.StartPosition, partOutput, partLse, scores);
                    PartialAttention.Combine(o, l, partOutput, partLse, hd);
                }
            }
            ArrayPool<float>.Shared.Return(rented);
        }
    }
}
