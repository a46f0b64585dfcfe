using Inference.Backends.Cpu;
using Inference.Engine;
using Inference.KvCache;
using Inference.Models;

namespace Inference.Parallelism;

/// <summary>
/// Tensor and pipeline parallelism on CPU ranks: a grid of <c>stages × tensor ranks</c>, each rank a thread with its own
/// worker group, its part of the model's graph (<see cref="RankGraph"/>) over its slice of the weights
/// (<see cref="TensorParallelWeights"/>), and its own KV pool holding its stage's layers and its KV heads.
/// </summary>
/// <remarks>
/// <code>
///  rank (s, t) = s · T + t; the engine thread is rank (0, 0)
///
///  tensor parallel, inside a stage:  x → [attn: q,k,v of my heads → my KV → att → Wo slice] → all-reduce → x
///                                      → [ffn: gate,up slices → swiglu → Wdown slice] → all-reduce → x
///                                    embedding: my vocabulary slice's rows → all-reduce; head: my slice of the logits
///                                    → gathered on t = 0
///  pipeline parallel, across stages: the step's batch is cut into micro-batches (by tokens; a prompt chunk may be cut
///                                    too, its pieces in position order): stage s runs micro-batch m, sends its residual
///                                    stream to stage s + 1 (rank (s+1, t) from rank (s, t)) and goes on with m + 1
///
///    stage 0   | m0 | m1 | m2 | m3 |
///    stage 1        | m0 | m1 | m2 | m3 |      bubble: (P − 1) / (M + P − 1) of the stages' time
/// </code>
/// The scheduler and the KV cache manager are the engine's: every rank's pool is indexed by the same block ids. The
/// batch is validated on the engine thread before any rank starts, so a bad batch fails before a collective.
/// </remarks>
internal sealed unsafe class ParallelExecutor : IForwardExecutor
{
    /// <summary>Micro-batches per pipeline stage that a step's batch of at least <see cref="LargeBatchTokens"/> tokens per stage is cut into; a smaller one is cut into one per stage.</summary>
    public const int MicroBatchesPerStage = 2;

    /// <summary>
    /// Tokens per stage from which a batch is cut into <see cref="MicroBatchesPerStage"/> micro-batches per stage: each
    /// micro-batch reads every weight of its stage again, so a small (decode) batch is cut no finer than the overlap needs.
    /// </summary>
    public const int LargeBatchTokens = 64;

    private readonly int _tensorSize, _stageCount, _vocab;
    private readonly SharedMemoryRankGroup[] _tensorGroups;   // [stage]
    private readonly SharedMemoryRankGroup? _pipeline;         // every rank, for the sends between stages
    private readonly Rank[] _ranks;
    private readonly Thread[] _threads;
    private readonly SemaphoreSlim _go = new(0);   // released once per rank thread and step: idle ranks block
    private readonly SpinBarrier _done;
    private readonly IKvBlockStorage _storage;
    private readonly ModelBatch[] _micro;
    private readonly int[] _microLogitRow;
    private int _microCount;
    private int[] _tokens = [];
    private volatile bool _stopping;
    private float* _logits;
    private long _steps;

    public ParallelExecutor(ForwardExecutorContext context, int tensorSize, int stageCount, bool expertParallel = false)
    {
        var model = context.Model;
        var full = model.Config;
        if (stageCount > full.LayerCount)
            throw new NotSupportedException($"pipeline parallelism over {stageCount} stages needs at least {stageCount} layers (the model has {full.LayerCount})");
        _tensorSize = tensorSize;
        _stageCount = stageCount;
        _vocab = full.VocabSize;
        var layout = new TensorParallelLayout(full, tensorSize);
        int rankCount = tensorSize * stageCount;
        int threadsPerRank = Math.Max(1, context.Threads / rankCount);
        var config = layout.RankConfig;
        _tensorGroups = new SharedMemoryRankGroup[stageCount];
        for (int s = 0; s < stageCount; s++) _tensorGroups[s] = new SharedMemoryRankGroup(tensorSize);
        _pipeline = stageCount > 1 ? new SharedMemoryRankGroup(rankCount) : null;
        _ranks = new Rank[rankCount];
        var stageStorages = new IKvBlockStorage[stageCount];
        try
        {
            for (int s = 0; s < stageCount; s++)
            {
                var (firstLayer, layers) = RankGroup.Part(full.LayerCount, stageCount, s);
                for (int t = 0; t < tensorSize; t++)
                {
                    int g = s * tensorSize + t;
                    var place = new RankPlace(_tensorGroups[s], t, _pipeline, g, layout.VocabSlice(t), full.LayerCount, firstLayer, firstLayer + layers,
                        PreviousRank: g - tensorSize, NextRank: g + tensorSize, ExpertParallel: expertParallel);
                    // NOTE: one rank reads the model's own weights in place; tensor ranks read their slices.
                    var weights = tensorSize == 1 ? null : new TensorParallelWeights(model.Weights, layout, t);
                    var rankModel = new LlamaModel((IWeightSource?)weights ?? model.Weights, config, place);
                    rankModel.PrepareForCpu();
                    var storage = new KvCacheStorage(layers, context.BlockCount, context.KvOptions.BlockSize, config.KvHeadCount, config.HeadDim, context.KvOptions.DataType);
                    _ranks[g] = new Rank(weights, rankModel, storage, new PagedKvAttention(storage, context.KvCache, config), new WorkerPool(threadsPerRank));
                }
                stageStorages[s] = tensorSize == 1
                    ? _ranks[s].Storage
                    : new TensorParallelKvStorage(layout, Array.ConvertAll(_ranks[(s * tensorSize)..((s + 1) * tensorSize)], r => r.Storage));
            }
        }
        catch
        {
            foreach (var rank in _ranks) rank?.Dispose();
            foreach (var group in _tensorGroups) group.Dispose();
            _pipeline?.Dispose();
            throw;
        }
        _storage = stageCount == 1 ? stageStorages[0] : new PipelineKvStorage(stageStorages);
        int maxMicro = stageCount == 1 ? 1 : MicroBatchesPerStage * stageCount;
        _micro = new ModelBatch[maxMicro];
        for (int m = 0; m < maxMicro; m++) _micro[m] = new ModelBatch();
        _microLogitRow = new int[maxMicro];
        _done = new SpinBarrier(rankCount);
        _threads = new Thread[rankCount - 1];
        for (int r = 1; r < rankCount; r++)
        {
            int rank = r;
            _threads[r - 1] = new Thread(() => RankLoop(rank)) { IsBackground = true, Name = $"Inference parallel rank {rank}" };
            _threads[r - 1].Start();
        }
        string split = (tensorSize, stageCount) switch
        {
            (_, 1) => $"tensor parallel over {tensorSize} ranks",
            (1, _) => $"pipeline parallel over {stageCount} stages ({stageCount} ranks)",
            _ => $"tensor parallel over {tensorSize} ranks × pipeline parallel over {stageCount} stages ({rankCount} ranks)",
        };
        DeviceName = $"CPU, {split} of {threadsPerRank} thread{(threadsPerRank == 1 ? "" : "s")}";
    }

    public Device Device => Device.Cpu;

    public string DeviceName { get; }

    public IKvBlockStorage Storage => _storage;

    /// <summary>Steps run, bytes the ranks read from each other, and the ranks' mean time inside collectives, so far.</summary>
    public ParallelCommunication Communication
    {
        get
        {
            long bytes = _pipeline?.BytesMoved ?? 0;
            foreach (var g in _tensorGroups) bytes += g.BytesMoved;
            var time = TimeSpan.Zero;
            for (int r = 0; r < _ranks.Length; r++)
            {
                time += _tensorGroups[r / _tensorSize].CommunicationTime(r % _tensorSize);
                if (_pipeline is not null) time += _pipeline.CommunicationTime(r);
            }
            return new ParallelCommunication(_tensorSize, _stageCount, Interlocked.Read(ref _steps), bytes, time / _ranks.Length);
        }
    }

    public void Forward(ModelBatch batch, Span<float> logits)
    {
        if (batch.TokenCount == 0) return;
        if (logits.Length < batch.LogitCount * _vocab) throw new ArgumentException("logits buffer too small", nameof(logits));
        // NOTE: the one check a rank's part of the graph makes on the batch's contents, made here for all of them: a rank
        // that failed alone would leave the others waiting in a collective.
        foreach (int token in batch.Tokens)
            if ((uint)token >= (uint)_vocab) throw new ArgumentOutOfRangeException(nameof(batch), $"token id {token} is outside the vocabulary of {_vocab}");
        CutIntoMicroBatches(batch);
        Exception? failure = null;
        fixed (float* p = logits)
        {
            _logits = p;
            _go.Release(_threads.Length);
            try
            {
                RunStep(0);
            }
            catch (Exception e)
            {
                failure = e;
            }
            _done.SignalAndWait();
            _logits = null;
        }
        Interlocked.Increment(ref _steps);
        failure ??= FirstFailure();
        if (failure is not null) throw failure;
    }

    /// <summary>Rank <paramref name="g"/>'s share of a step: its part of the graph over every micro-batch in order.</summary>
    private void RunStep(int g)
    {
        var rank = _ranks[g];
        for (int m = 0; m < _microCount; m++)
        {
            var micro = _micro[m];
            var logits = rank.Model.WritesLogits ? new Span<float>(_logits + (long)_microLogitRow[m] * _vocab, micro.LogitCount * _vocab) : Span<float>.Empty;
            rank.Model.Forward(micro, rank.Attention, logits, rank.Pool);
        }
    }

    /// <summary>
    /// Cuts <paramref name="batch"/> into micro-batches of about equal token counts (one, without pipeline stages). A
    /// segment cut in two keeps its logits rows on its last tokens, which are the piece's last tokens too, so the
    /// micro-batches' logits rows follow each other in the batch's order.
    /// </summary>
    private void CutIntoMicroBatches(ModelBatch batch)
    {
        int n = batch.TokenCount;
        int count = Math.Min(n, n >= LargeBatchTokens * _stageCount ? _micro.Length : _stageCount);
        if (_stageCount == 1 || count == 1)
        {
            _microCount = 1;
            _micro[0].Clear();
            CopyTokens(batch);
            foreach (var seg in batch.Segments)
                _micro[0].Add(seg.SequenceId, _tokens.AsSpan(seg.TokenStart, seg.TokenCount), seg.StartPosition, seg.LogitRowCount);
            _microLogitRow[0] = 0;
            return;
        }
        CopyTokens(batch);
        _microCount = count;
        int s = 0, logitRow = 0;
        var segments = batch.Segments;
        for (int m = 0; m < count; m++)
        {
            int from = (int)((long)m * n / count), to = (int)((long)(m + 1) * n / count);
            var micro = _micro[m];
            micro.Clear();
            _microLogitRow[m] = logitRow;
            while (segments[s].TokenStart + segments[s].TokenCount <= from) s++;
            for (int k = s; k < segments.Count && segments[k].TokenStart < to; k++)
            {
                var seg = segments[k];
                int start = Math.Max(from, seg.TokenStart), end = Math.Min(to, seg.TokenStart + seg.TokenCount);
                int logitRows = Math.Max(0, end - Math.Max(start, seg.FirstLogitToken));
                micro.Add(seg.SequenceId, _tokens.AsSpan(start, end - start), seg.StartPosition + (start - seg.TokenStart), logitRows);
            }
            logitRow += micro.LogitCount;
        }
    }

    private void CopyTokens(ModelBatch batch)
    {
        if (_tokens.Length < batch.TokenCount) _tokens = new int[Math.Max(batch.TokenCount, 2 * _tokens.Length)];
        var tokens = batch.Tokens;
        for (int i = 0; i < tokens.Count; i++) _tokens[i] = tokens[i];
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
                RunStep(rank);
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
        foreach (var g in _tensorGroups) g.Dispose();
        _pipeline?.Dispose();
        _go.Dispose();
    }

    private sealed class Rank(TensorParallelWeights? weights, LlamaModel model, KvCacheStorage storage, PagedKvAttention attention, WorkerPool pool) : IDisposable
    {
        public LlamaModel Model => model;

        public PagedKvAttention Attention => attention;

        public WorkerPool Pool => pool;

        public KvCacheStorage Storage => storage;

        public Exception? Failure { get; set; }

        public void Dispose()
        {
            pool.Dispose();
            storage.Dispose();
            weights?.Dispose();
        }
    }
}

/// <summary>
/// A rank's place in a parallel layout: the part of the model's graph it runs (<see cref="Apply"/>) and the groups its
/// collectives and sends go through.
/// </summary>
/// <param name="Tensor">The rank's tensor-parallel group (its stage's ranks; of size 1 without tensor parallelism).</param>
/// <param name="TensorRank">The rank's place in <paramref name="Tensor"/>.</param>
/// <param name="Pipeline">Every rank of the layout, for the sends between stages; null without pipeline stages.</param>
/// <param name="PipelineRank">The rank's place in <paramref name="Pipeline"/>.</param>
/// <param name="Vocab">The rank's slice of the vocabulary (the embedding's and output head's rows).</param>
/// <param name="LayerCount">The model's layers.</param>
/// <param name="FirstLayer">The first layer of the rank's stage.</param>
/// <param name="EndLayer">The layer after the stage's last.</param>
/// <param name="PreviousRank">The rank of the previous stage it receives from.</param>
/// <param name="NextRank">The rank of the next stage it sends to.</param>
/// <param name="ExpertParallel">Whether the tensor ranks spread mixture-of-experts blocks' experts among themselves.</param>
internal sealed record RankPlace(
    RankGroup Tensor, int TensorRank, RankGroup? Pipeline, int PipelineRank, (int Start, int Length) Vocab,
    int LayerCount, int FirstLayer, int EndLayer, int PreviousRank, int NextRank, bool ExpertParallel = false)
{
    /// <summary>The rank's part of <paramref name="graph"/>.</summary>
    public Models.Graph.ModelGraph Apply(Models.Graph.ModelGraph graph)
    {
        if (Tensor.Size > 1) graph = RankGraph.ForTensorRank(graph, Vocab.Start, Vocab.Length, ExpertParallel ? (TensorRank, Tensor.Size) : null);
        if (Pipeline is not null) graph = RankGraph.ForStage(graph, LayerCount, FirstLayer, EndLayer, PreviousRank, NextRank);
        return graph;
    }
}
