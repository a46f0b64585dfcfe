using Inference.Backends.Cpu;
using Inference.Engine;
using Inference.KvCache;
using Inference.Models;

namespace Inference.Parallelism;

/// <summary>
/// Tensor parallelism on CPU ranks: <see cref="TensorParallelLayout.Size"/> copies of the model's graph, each over its
/// rank's slice of the weights (<see cref="TensorParallelWeights"/>), its own KV pool holding its KV heads, and its own
/// worker group; the ranks meet in one all-reduce after each row-parallel product.
/// </summary>
/// <remarks>
/// <code>
///  engine thread = rank 0 ──┐   Forward(batch): every rank runs the whole graph on the same batch
///  rank threads 1..N-1   ───┤     x → [attn: q,k,v of my heads → my KV pool → att → Wo slice] → all-reduce → x
///                           │       → [ffn: gate,up slices → swiglu → Wdown slice] → all-reduce → x
///                           └── rank 0's logits are the step's (the output head is replicated)
///  per token and layer: 2 all-reduces of dim floats; a rank reads (N−1)/N · 2 · dim · 4 bytes from the others per all-reduce
/// </code>
/// The scheduler and the KV cache manager are the engine's: every rank's pool is indexed by the same block ids.
/// Every rank validates a batch identically before its first collective, so a bad batch fails on all of them together.
/// </remarks>
internal sealed class TensorParallelExecutor : IForwardExecutor
{
    private readonly TensorParallelLayout _layout;
    private readonly SharedMemoryRankGroup _group;
    private readonly Rank[] _ranks;
    private readonly Thread[] _threads;
    private readonly SemaphoreSlim _go = new(0);   // released once per rank thread and step: idle ranks block
    private readonly SpinBarrier _done;
    private readonly TensorParallelKvStorage _storage;
    private volatile bool _stopping;
    private ModelBatch? _batch;
    private int _logitRowFloats;
    private float[] _rankLogits = [];

    public TensorParallelExecutor(ForwardExecutorContext context, int size)
    {
        var model = context.Model;
        _layout = new TensorParallelLayout(model.Config, size);
        _group = new SharedMemoryRankGroup(size);
        int threadsPerRank = Math.Max(1, context.Threads / size);
        var config = _layout.RankConfig;
        _ranks = new Rank[size];
        try
        {
            for (int r = 0; r < size; r++)
            {
                var weights = new TensorParallelWeights(model.Weights, _layout, r);
                var rankModel = new LlamaModel(weights, config, new TensorParallelRank(_group, r));
                rankModel.PrepareForCpu();
                var storage = new KvCacheStorage(config.LayerCount, context.BlockCount, context.KvOptions.BlockSize, config.KvHeadCount, config.HeadDim, context.KvOptions.DataType);
                _ranks[r] = new Rank(weights, rankModel, storage, new PagedKvAttention(storage, context.KvCache, config), new WorkerPool(threadsPerRank));
            }
        }
        catch
        {
            foreach (var rank in _ranks) rank?.Dispose();
            _group.Dispose();
            throw;
        }
        _storage = new TensorParallelKvStorage(_layout, Array.ConvertAll(_ranks, r => r.Storage));
        _done = new SpinBarrier(size);
        _threads = new Thread[size - 1];
        for (int r = 1; r < size; r++)
        {
            int rank = r;
            _threads[r - 1] = new Thread(() => RankLoop(rank)) { IsBackground = true, Name = $"Inference tensor-parallel rank {rank}" };
            _threads[r - 1].Start();
        }
        DeviceName = $"CPU, tensor parallel over {size} ranks of {threadsPerRank} thread{(threadsPerRank == 1 ? "" : "s")}";
    }

    public Device Device => Device.Cpu;

    public string DeviceName { get; }

    public IKvBlockStorage Storage => _storage;

    /// <summary>Bytes the ranks read from each other so far.</summary>
    public long CommunicationBytes => _group.BytesMoved;

    public void Forward(ModelBatch batch, Span<float> logits)
    {
        int rows = batch.LogitCount * _layout.Full.VocabSize;
        if (_rankLogits.Length < rows * (_ranks.Length - 1)) _rankLogits = new float[rows * (_ranks.Length - 1)];
        _batch = batch;
        _logitRowFloats = rows;
        _go.Release(_threads.Length);
        Exception? failure = null;
        try
        {
            _ranks[0].Forward(batch, logits);
        }
        catch (Exception e)
        {
            failure = e;
        }
        _done.SignalAndWait();
        failure ??= FirstFailure();
        if (failure is not null) throw failure;
    }

    private Exception? FirstFailure()
    {
        foreach (var r in _ranks)
        {
            if (r.Failure is { } e)
            {
                r.Failure = null;
                return e;
            }
        }
        return null;
    }

    private void RankLoop(int rank)
    {
        var r = _ranks[rank];
        while (true)
        {
            _go.Wait();
            if (_stopping) return;
            try
            {
                r.Forward(_batch!, _rankLogits.AsSpan((rank - 1) * _logitRowFloats, _logitRowFloats));
            }
            catch (Exception e)
            {
                r.Failure = e;
            }
            _done.SignalAndWait();
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _go.Release(_threads.Length);
        foreach (var t in _threads) t.Join();
        foreach (var r in _ranks) r.Dispose();
        _group.Dispose();
        _go.Dispose();
    }

    private sealed class Rank(TensorParallelWeights weights, LlamaModel model, KvCacheStorage storage, PagedKvAttention attention, WorkerPool pool) : IDisposable
    {
        public KvCacheStorage Storage => storage;

        public Exception? Failure { get; set; }

        public void Forward(ModelBatch batch, Span<float> logits) => model.Forward(batch, attention, logits, pool);

        public void Dispose()
        {
            pool.Dispose();
            storage.Dispose();
            weights.Dispose();
        }
    }
}

/// <summary>A rank's place in its tensor-parallel group: the model's all-reduce operations go through it.</summary>
internal sealed record TensorParallelRank(RankGroup Group, int Rank);

/// <summary>
/// The ranks' KV pools seen as one (copy-on-write copies go to every rank; a prefix file's block holds every KV head in
/// the layout of an unsplit pool, each head read from the rank that holds it).
/// </summary>
internal sealed class TensorParallelKvStorage(TensorParallelLayout layout, KvCacheStorage[] ranks) : IKvBlockStorage
{
    private readonly KvCacheStorage _first = ranks[0];

    public int LayerCount => _first.LayerCount;

    public int BlockCount => _first.BlockCount;

    public int BlockSize => _first.BlockSize;

    public int KvHeadCount => layout.Full.KvHeadCount;

    public int HeadDim => _first.HeadDim;

    public KvCacheDataType DataType => _first.DataType;

    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        foreach (var r in ranks) r.CopyBlocks(copies);
    }

    public void ReadBlock(int layer, int blockId, Span<byte> keys, Span<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        var (rankKeys, rankValues) = RankBlock();
        for (int r = 0; r < ranks.Length; r++)
        {
            // A replicated head is read from its first holder.
            if (layout.KvHeadOwner(layout.KvHeadStart(r)) != r) continue;
            ((IKvBlockStorage)ranks[r]).ReadBlock(layer, blockId, rankKeys, rankValues);
            CopyHeads(r, rankKeys, keys, toFull: true);
            CopyHeads(r, rankValues, values, toFull: true);
        }
    }

    public void WriteBlock(int layer, int blockId, ReadOnlySpan<byte> keys, ReadOnlySpan<byte> values)
    {
        KvBlockStorage.CheckBlockAccess(this, layer, blockId, keys.Length, values.Length);
        var (rankKeys, rankValues) = RankBlock();
        for (int r = 0; r < ranks.Length; r++)
        {
            // Every holder of a replicated head gets it.
            CopyHeads(r, keys, rankKeys, toFull: false);
            CopyHeads(r, values, rankValues, toFull: false);
            ((IKvBlockStorage)ranks[r]).WriteBlock(layer, blockId, rankKeys, rankValues);
        }
    }

    private (byte[] Keys, byte[] Values) RankBlock()
    {
        int bytes = KvBlockStorage.LayerBlockByteCount(_first);
        return (new byte[bytes], new byte[bytes]);
    }

    /// <summary>Copies rank <paramref name="rank"/>'s heads of every slot between the unsplit layout [slot, kvHead, headDim] and the rank's.</summary>
    private void CopyHeads(int rank, ReadOnlySpan<byte> from, Span<byte> to, bool toFull)
    {
        int head = HeadDim * KvCacheStorage.ElementSize(DataType), rankHeads = _first.KvHeadCount, firstHead = layout.KvHeadStart(rank);
        for (int slot = 0; slot < BlockSize; slot++)
        {
            int full = (slot * KvHeadCount + firstHead) * head, local = slot * rankHeads * head;
            if (toFull) from.Slice(local, rankHeads * head).CopyTo(to.Slice(full, rankHeads * head));
            else from.Slice(full, rankHeads * head).CopyTo(to.Slice(local, rankHeads * head));
        }
    }
}
