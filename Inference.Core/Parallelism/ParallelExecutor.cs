using Inference.Backends.Cpu;
using Inference.Engine;
using Inference.KvCache;
using Inference.Models;

namespace Inference.Parallelism;

/// <summary>
/// Tensor, pipeline and context parallelism on CPU ranks: a grid of <c>stages (or context ranks) × tensor ranks</c>, each rank a thread with its own
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
///
///  context parallel (rank (c, t) = c · T + t): the step's tokens are cut among the context ranks (ContextSplit: zigzag
///                                    chunks of long segments, short ones whole), every context rank runs the whole model
///                                    on its tokens, and attention is ring attention (RingKvAttention) among the ranks
///                                    with the same tensor rank; every context rank's pool holds every token's K/V
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

    private readonly int _tensorSize, _stageCount, _contextSize, _vocab;
    private readonly SharedMemoryRankGroup[] _tensorGroups;   // [stage or context rank]
    private readonly SharedMemoryRankGroup? _pipeline;         // every rank, for the sends between stages
    private readonly SharedMemoryRankGroup[] _rings;          // [tensor rank]: the context ranks that hold its heads
    private readonly ContextSplit? _split;
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

    public ParallelExecutor(ForwardExecutorContext context, int tensorSize, int stageCount, bool expertParallel = false, int contextSize = 1)
    {
        var model = context.Model;
        var full = model.Config;
        if (stageCount > full.LayerCount)
            throw new NotSupportedException($"pipeline parallelism over {stageCount} stages needs at least {stageCount} layers (the model has {full.LayerCount})");
        if (contextSize > 1 && stageCount > 1)
            throw new NotSupportedException($"context parallelism ({contextSize} ranks) cannot be combined with pipeline parallelism ({stageCount} stages) yet");
        _tensorSize = tensorSize;
        _stageCount = stageCount;
        _contextSize = contextSize;
        _vocab = full.VocabSize;
        var layout = new TensorParallelLayout(full, tensorSize);
        // One tensor group per pipeline stage or per context rank (one of the two sizes is 1).
        int groupCount = stageCount * contextSize, rankCount = tensorSize * groupCount;
        int threadsPerRank = Math.Max(1, context.Threads / rankCount);
        var config = layout.RankConfig;
        _tensorGroups = new SharedMemoryRankGroup[groupCount];
        for (int s = 0; s < groupCount; s++) _tensorGroups[s] = new SharedMemoryRankGroup(tensorSize);
        _pipeline = stageCount > 1 ? new SharedMemoryRankGroup(rankCount) : null;
        _rings = new SharedMemoryRankGroup[contextSize > 1 ? tensorSize : 0];
        for (int t = 0; t < _rings.Length; t++) _rings[t] = new SharedMemoryRankGroup(contextSize);
        _split = contextSize > 1 ? new ContextSplit(contextSize) : null;
        _ranks = new Rank[rankCount];
        var groupStorages = new IKvBlockStorage[groupCount];
        try
        {
            for (int s = 0; s < groupCount; s++)
            {
                // Pipeline stage s holds its layers; a context rank holds them all.
                var (firstLayer, layers) = RankGroup.Part(full.LayerCount, stageCount, stageCount == 1 ? 0 : s);
                for (int t = 0; t < tensorSize; t++)
                {
                    int g = s * tensorSize + t;
                    var place = new RankPlace(_tensorGroups[s], t, _pipeline, g, layout.VocabSlice(t), full.LayerCount, firstLayer, firstLayer + layers,
                        PreviousRank: g - tensorSize, NextRank: g + tensorSize, ExpertParallel: expertParallel);
                    // NOTE: one rank reads the model's own weights in place; tensor ranks read their slices.
                    var weights = tensorSize == 1 ? null : new TensorParallelWeights(model.Weights, layout, t);
                    var rankModel = new LlamaModel((IWeightSource?)weights ?? model.Weights, config, place);
                    var storage = new KvCacheStorage(layers, context.BlockCount, context.KvOptions.BlockSize, config.KvHeadCount, config.HeadDim, context.KvOptions.DataType);
                    IKvAttention attention = _split is null
                        ? new PagedKvAttention(storage, context.KvCache, config)
                        : new RingKvAttention(storage, context.KvCache, config, _rings[t], s, _split);
                    _ranks[g] = new Rank(weights, rankModel, storage, attention, new WorkerPool(threadsPerRank));
                }
                groupStorages[s] = tensorSize == 1
                    ? _ranks[s].Storage
                    : new TensorParallelKvStorage(layout, Array.ConvertAll(_ranks[(s * tensorSize)..((s + 1) * tensorSize)], r => r.Storage));
            }
            // NOTE: the ranks share this machine's last-level cache, so whether their weights stream from memory is
            // decided from the sum of what they read (a tensor rank holds a slice, a context rank a whole copy).
            long streamed = 0;
            foreach (var rank in _ranks) streamed += rank.Model.MatMulBytes;
            bool streams = CpuCaches.StreamsFromMemory(streamed);
            foreach (var rank in _ranks) rank.Model.PrepareForCpu(streams);
        }
        catch
        {
            foreach (var rank in _ranks) rank?.Dispose();
            foreach (var group in _tensorGroups) group.Dispose();
            foreach (var ring in _rings) ring.Dispose();
            _pipeline?.Dispose();
            throw;
        }
        _storage = groupCount == 1 ? groupStorages[0]
            : contextSize > 1 ? new ReplicatedKvStorage(groupStorages)
            : new PipelineKvStorage(groupStorages);
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
        string split = (tensorSize, stageCount, contextSize) switch
        {
            (1, 1, _) => $"context parallel over {contextSize} ranks",
            (_, 1, > 1) => $"context parallel over {contextSize} × tensor parallel over {tensorSize} ({rankCount} ranks)",
            (_, 1, _) => $"tensor parallel over {tensorSize} ranks",
            (1, _, _) => $"pipeline parallel over {stageCount} stages ({stageCount} ranks)",
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
            foreach (var g in _rings) bytes += g.BytesMoved;
            var time = TimeSpan.Zero;
            for (int r = 0; r < _ranks.Length; r++)
            {
                time += _tensorGroups[r / _tensorSize].CommunicationTime(r % _tensorSize);
                if (_pipeline is not null) time += _pipeline.CommunicationTime(r);
                if (_rings.Length > 0) time += _rings[r % _tensorSize].CommunicationTime(r / _tensorSize);
            }
            return new ParallelCommunication(_tensorSize, _stageCount, Interlocked.Read(ref _steps), bytes, time / _ranks.Length, _contextSize);
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
        if (_split is not null) _split.Split(batch);
        else CutIntoMicroBatches(batch);
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
                _ranks[0].Failure = e;
                AbortGroups();
            }
            _done.SignalAndWait();
            _logits = null;
        }
        Interlocked.Increment(ref _steps);
        var failure = FirstFailure(out int failed);
        if (failure is null) return;
        // Every rank has left its collectives (the failed one by its error, the others aborted): re-arm the groups.
        foreach (var g in Groups()) g.Reset();
        throw new RankFailedException(failed, failure);
    }

    /// <summary>Every group of the layout.</summary>
    private IEnumerable<RankGroup> Groups()
    {
        foreach (var g in _tensorGroups) yield return g;
        foreach (var g in _rings) yield return g;
        if (_pipeline is not null) yield return _pipeline;
    }

    /// <summary>Makes every rank leave the collective it waits in (a rank failed): none is left waiting for the failed one.</summary>
    private void AbortGroups()
    {
        foreach (var g in _tensorGroups) g.Abort();
        foreach (var g in _rings) g.Abort();
        _pipeline?.Abort();
    }

    /// <summary>
    /// A test's injected fault: rank <paramref name="rank"/> throws <paramref name="error"/> before operation
    /// <paramref name="op"/> of its graph in the next step that reaches it, once.
    /// </summary>
    internal void InjectFault(int rank, int op, Exception error)
    {
        var model = _ranks[rank].Model;
        model.BeforeOperation = i =>
        {
            if (i != op) return;
            model.BeforeOperation = null;
            throw error;
        };
    }

    /// <summary>Operations of rank <paramref name="rank"/>'s part of the graph.</summary>
    internal int OperationCount(int rank) => _ranks[rank].Model.Graph.Ops.Length;

    /// <summary>Rank <paramref name="g"/>'s share of a step: its part of the graph over every micro-batch in order.</summary>
    private void RunStep(int g)
    {
        var rank = _ranks[g];
        if (_split is not null)
        {
            RunContextRank(g);
            return;
        }
        for (int m = 0; m < _microCount; m++)
        {
            var micro = _micro[m];
            var logits = rank.Model.WritesLogits ? new Span<float>(_logits + (long)_microLogitRow[m] * _vocab, micro.LogitCount * _vocab) : Span<float>.Empty;
            rank.Model.Forward(micro, rank.Attention, logits, rank.Pool);
        }
    }

    /// <summary>
    /// Context rank <c>g / T</c>'s share of a step: its tokens of the batch (<see cref="ContextSplit"/>), their logits
    /// rows copied to the step's rows; without tokens it still passes the other ranks' K/V round the ring.
    /// </summary>
    private void RunContextRank(int g)
    {
        var rank = _ranks[g];
        int c = g / _tensorSize;
        var local = _split!.Batches[c];
        if (local.TokenCount == 0)
        {
            foreach (var op in rank.Model.Graph.Ops)
                if (op.Kind == Models.Graph.OpKind.Attention) rank.Attention.Attend(op.Layer, local, [], [], [], [], rank.Pool, op.Param, op.Value);
            return;
        }
        if (!rank.Model.WritesLogits)
        {
            rank.Model.Forward(local, rank.Attention, Span<float>.Empty, rank.Pool);
            return;
        }
        int length = local.LogitCount * _vocab;
        if (rank.Logits.Length < length) rank.Logits = new float[Math.Max(length, 2 * rank.Logits.Length)];
        rank.Model.Forward(local, rank.Attention, rank.Logits.AsSpan(0, length), rank.Pool);
        for (int p = 0; p < local.Segments.Count; p++)
        {
            var piece = local.Segments[p];
            if (piece.LogitRowCount == 0) continue;
            int rows = piece.LogitRowCount * _vocab;
            rank.Logits.AsSpan(piece.LogitIndex * _vocab, rows).CopyTo(new Span<float>(_logits + (long)_split.LogitRow(c, p) * _vocab, rows));
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

    /// <summary>
    /// The error of the first rank (in rank order) that failed by itself rather than by leaving an aborted collective, or
    /// null when none failed; clears every rank's failure.
    /// </summary>
    private Exception? FirstFailure(out int rank)
    {
        Exception? first = null;
        rank = -1;
        for (int g = 0; g < _ranks.Length; g++)
        {
            var e = _ranks[g].Failure;
            _ranks[g].Failure = null;
            if (e is null || (first is not null && (e is RankAbortedException || first is not RankAbortedException))) continue;
            first = e;
            rank = g;
        }
        return first;
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
                AbortGroups();
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
        foreach (var g in _rings) g.Dispose();
        _pipeline?.Dispose();
        _go.Dispose();
    }

    private sealed class Rank(TensorParallelWeights? weights, LlamaModel model, KvCacheStorage storage, IKvAttention attention, WorkerPool pool) : IDisposable
    {
        public LlamaModel Model => model;

        public IKvAttention Attention => attention;

        /// <summary>A context rank's logits rows, before they are copied to the step's rows.</summary>
        public float[] Logits { get; set; } = [];

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
