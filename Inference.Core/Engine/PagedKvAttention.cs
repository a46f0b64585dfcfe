using System.Buffers;
using Inference.Backends.Cpu;
using Inference.KvCache;
using Inference.Models;

namespace Inference.Engine;

/// <summary>
/// The model's view of the paged KV cache: writes each new token's K/V into the slot its sequence's block table maps
/// its position to, then runs <see cref="PagedAttention"/> for every query token, spread over the worker pool.
/// </summary>
/// <remarks>
/// <code>
///  position p of sequence s  →  block table[s][p / blockSize] = physical block b,  slot p % blockSize
///  storage, per layer:  K, V  [blockCount, blockSize, kvHeads, headDim]
/// </code>
/// Block tables must already cover every position of the batch (the scheduler appends slots before the step).
/// </remarks>
internal sealed class PagedKvAttention : IKvAttention
{
    private readonly KvCacheStorage _storage;
    private readonly KvCacheManager _manager;
    private readonly ModelConfig _config;
    private readonly PagedAttentionShape _shape;
    private double[] _probabilities = [];
    private float[] _keyRow = [];

    public PagedKvAttention(KvCacheStorage storage, KvCacheManager manager, ModelConfig config)
    {
        _storage = storage;
        _manager = manager;
        _config = config;
        _shape = new PagedAttentionShape(config.HeadCount, config.KvHeadCount, config.HeadDim, storage.BlockSize);
    }

    public void Attend(int layer, ModelBatch batch, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, WorkerPool pool, int slidingWindow = 0, float logitSoftCap = 0f)
    {
        var shape = slidingWindow == 0 && logitSoftCap == 0f ? _shape : _shape with { SlidingWindow = slidingWindow, LogitSoftCap = logitSoftCap };
        int kvDim = _config.KvDim, bs = _storage.BlockSize;
        int maxContext = 0;
        foreach (var seg in batch.Segments)
        {
            var table = _manager.GetBlockTable(seg.SequenceId);
            for (int i = 0; i < seg.TokenCount; i++)
            {
                int pos = seg.StartPosition + i, t = seg.TokenStart + i;
                _storage.Write(layer, table[pos / bs], pos % bs, k.Slice(t * kvDim, kvDim), v.Slice(t * kvDim, kvDim));
            }
            maxContext = Math.Max(maxContext, seg.StartPosition + seg.TokenCount);
        }
        if (_manager.Eviction?.Policy == KvEvictionPolicy.HeavyHitters) AccumulateAttention(shape, layer, batch, q);
        if (batch.Segments.Count == 1)
        {
            // One sequence (a prefill chunk or a single decode token): spread its (token, KV head) pairs over the threads.
            // NOTE: a single decode token too: the worker is still spinning from the K/V matmul, so the hand-off is cheap.
            // `e2e --model .models/bench-q8_0.gguf -p 128 -n 64 --batch 1 --threads 2`, five alternating runs each with
            // and without this split (then `TokenCount > 1` here), gave 81 and 75 tok/s on average.
            var seg = batch.Segments[0];
            PagedAttention.Forward(shape, q, _storage, layer, _manager.GetBlockTable(seg.SequenceId), seg.StartPosition, output, pool);
            return;
        }
        unsafe
        {
            fixed (float* pq = q)
            fixed (float* po = output)
            {
                int scratchLength = Math.Max(PagedAttention.GetScratchLength(shape, maxContext), QuantizedKvAttention.GetScratchLength(shape, maxContext));
                pool.Run(batch.TokenCount, new Job(this, shape, layer, batch, pq, po, scratchLength));
            }
        }
    }

    /// <summary>
    /// Heavy-hitter eviction: adds, for every query of <paramref name="batch"/> and every head, the softmax attention
    /// it gives each cached position to that position's score (<see cref="KvCacheManager.GetAttentionScores"/>).
    /// </summary>
    /// <remarks>
    /// NOTE: a second, plain pass over the keys (the kernels do not export their probabilities), in double, on the
    /// engine thread: it doubles the cost of attention for the layers it runs on. The scores sum over layers and heads
    /// because the paged cache evicts a token from every layer at once.
    /// </remarks>
    private void AccumulateAttention(in PagedAttentionShape shape, int layer, ModelBatch batch, ReadOnlySpan<float> q)
    {
        int heads = shape.HeadCount, kvMul = shape.KvMul, hd = shape.HeadDim, bs = shape.BlockSize, stride = shape.QueryStride;
        double scale = 1.0 / Math.Sqrt(hd);
        var type = _storage.DataType;
        bool f32 = type == KvCacheDataType.Float32, blocks = KvBlockFormat.IsBlockFormat(type);
        var keys32 = f32 ? _storage.GetKeys<float>(layer) : default;
        var keys16 = f32 || blocks ? default : _storage.GetKeys<Half>(layer);
        var keyBytes = blocks ? _storage.GetKeyBytes(layer) : default;
        int headBytes = KvBlockFormat.RowBytes(type, hd);
        if (_keyRow.Length < hd) _keyRow = new float[hd];
        var keyRow = _keyRow.AsSpan(0, hd);
        foreach (var seg in batch.Segments)
        {
            var scores = _manager.GetAttentionScores(seg.SequenceId);
            var table = _manager.GetBlockTable(seg.SequenceId);
            int context = seg.StartPosition + seg.TokenCount;
            if (_probabilities.Length < context) _probabilities = new double[Math.Max(context, 2 * _probabilities.Length)];
            var p = _probabilities.AsSpan(0, context);
            for (int i = 0; i < seg.TokenCount; i++)
            {
                int pos = seg.StartPosition + i, visible = pos + 1, first = shape.FirstVisible(visible);
                for (int h = 0; h < heads; h++)
                {
                    var query = q.Slice((seg.TokenStart + i) * stride + h * hd, hd);
                    int kvHead = h / kvMul;
                    double max = double.NegativeInfinity;
                    for (int j = first; j < visible; j++)
                    {
                        int headRow = (table[j / bs] * bs + j % bs) * shape.KvHeadCount + kvHead, row = headRow * hd;
                        double dot = 0;
                        if (f32) for (int d = 0; d < hd; d++) dot += query[d] * keys32[row + d];
                        else if (blocks)
                        {
                            // the block formats: the row dequantized (exact), one head row at a time
                            KvBlockFormat.Dequantize(type, keyBytes.Slice(headRow * headBytes, headBytes), keyRow);
                            for (int d = 0; d < hd; d++) dot += query[d] * keyRow[d];
                        }
                        else for (int d = 0; d < hd; d++) dot += query[d] * (float)keys16[row + d];
                        dot *= scale;
                        if (shape.LogitSoftCap != 0) dot = shape.LogitSoftCap * Math.Tanh(dot / shape.LogitSoftCap);
                        p[j] = dot;
                        max = Math.Max(max, dot);
                    }
                    double sum = 0;
                    for (int j = first; j < visible; j++) sum += p[j] = Math.Exp(p[j] - max);
                    for (int j = first; j < visible; j++) scores[j] += (float)(p[j] / sum);
                }
            }
        }
    }

    /// <summary>Attention of query tokens [start, end) of the batch, each against its own sequence's cache.</summary>
    private readonly unsafe struct Job(PagedKvAttention owner, PagedAttentionShape shape, int layer, ModelBatch batch, float* q, float* output, int scratchLength) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int stride = shape.QueryStride;
            float[] scratch = ArrayPool<float>.Shared.Rent(scratchLength);
            int s = 0;
            for (int t = start; t < end; t++)
            {
                while (t >= batch.Segments[s].TokenStart + batch.Segments[s].TokenCount) s++;
                var seg = batch.Segments[s];
                var table = owner._manager.GetBlockTable(seg.SequenceId);
                int pos = seg.StartPosition + (t - seg.TokenStart);
                var query = new ReadOnlySpan<float>(q + (long)t * stride, stride);
                var o = new Span<float>(output + (long)t * stride, stride);
                var storage = owner._storage;
                if (storage.DataType == KvCacheDataType.Float32)
                    PagedAttention.Forward<float>(shape, query, storage.GetKeys<float>(layer), storage.GetValues<float>(layer), table, pos, o, scratch);
                else if (KvBlockFormat.IsBlockFormat(storage.DataType))
                    QuantizedKvAttention.Forward(shape, query, storage.GetKeyBytes(layer), storage.GetValueBytes(layer), storage.DataType, table, pos, o, scratch);
                else
                    PagedAttention.Forward<Half>(shape, query, owner._storage.GetKeys<Half>(layer), owner._storage.GetValues<Half>(layer), table, pos, o, scratch);
            }
            ArrayPool<float>.Shared.Return(scratch);
        }
    }
}
