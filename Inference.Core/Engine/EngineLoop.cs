using System.Diagnostics;
using System.Threading.Channels;
using Inference.KvCache;
using Inference.Models;
using Inference.Sampling;
using Inference.Scheduling;
using Inference.Speculative;

namespace Inference.Engine;

/// <summary>
/// The one thread that owns the model, the scheduler and the KV cache. Each iteration: schedule → execute → update.
/// Requests arrive through a channel; tokens leave through each request's own channel.
/// </summary>
internal sealed partial class EngineLoop : IAsyncDisposable
{
    private readonly ModelConfig _config;
    private readonly IForwardExecutor _executor;
    private readonly Scheduler _scheduler;
    private readonly EngineMetrics _metrics;
    private readonly Channel<object> _incoming = Channel.CreateUnbounded<object>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private readonly Dictionary<long, (GenerationRequest Request, SchedulerRequest Scheduled)> _live = new();
    private readonly ModelBatch _batch = new();
    private readonly ModelBatch _soloBatch = new();
    private readonly Dictionary<long, Exception> _failed = new();  // requests whose chunk failed in this step
    private float[] _logits = [];
    private int[] _segmentOf = [];  // per chunk of the step: its segment in _batch, or -1 (a prefix file's blocks copied instead)
    private int[] _deviceRowOf = [];  // per chunk of the step: its row in _deviceRows when the device chose its token, else -1
    private readonly DeviceSamplingRows _deviceRows = new();

    /// <summary>Tokens whose choice the executor made on its device (only the ids came back).</summary>
    internal long DeviceSampledTokenCount { get; private set; }
    private long _nextInternalId = -1;
    private readonly PrefixIdentity _identity;
    private readonly List<long> _prefixHolders = new();
    private readonly ISpeculativeProposer? _proposer;
    private readonly int _numSpeculativeTokens;
    private readonly List<SchedulerRequest> _proposalRequests = [];
    private int[] _proposalLimits = [];
    private readonly int[] _verified = new int[SpeculativeOptions.MaxSpeculativeTokens + 1];
    private long _speculativeSteps, _proposedTokens, _acceptedTokens;
    private readonly WaitingQueue _waitingToStart;
    private readonly KvCompactor? _compactor;

    // factory: creates the executor; null for the CPU path.
    public EngineLoop(LlamaModel model, EngineOptions options, int contextLength, PrefixIdentity identity, IForwardExecutorFactory? factory, DraftModel? draft = null)
    {
        _config = model.Config;
        _waitingToStart = new WaitingQueue(options.MaxWaitingRequests);
        var c = model.Config;
        ContextLength = contextLength;
        // NOTE: more blocks than MaxNumSeqs full contexts (twice over, for cached prefixes) can never be used.
        // NOTE: every context-parallel rank holds a copy of every block, so a block costs that many times its bytes.
        int copies = options.ContextParallelSize;
        long blockBytes = copies * KvCacheStorage.GetBlockByteCount(c.LayerCount, options.KvCache.BlockSize, c.KvHeadCount, c.HeadDim, options.KvCache.DataType);
        long cap = 2L * options.MaxNumSeqs * ((contextLength + options.KvCache.BlockSize - 1) / options.KvCache.BlockSize) * blockBytes;
        // NOTE: vLLM's rule: the engine may use fraction × total (device memory on a GPU, the process's available memory on
        // the CPU); the pool gets what the weights and a full step's activations leave of it.
        bool parallel = options.TensorParallelSize > 1 || options.PipelineParallelSize > 1 || options.ContextParallelSize > 1;
        var device = parallel ? null : factory?.GetDeviceMemory();
        MemoryPlan = KvMemoryPlan.Create(options.KvCache, device?.Total ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, device?.Free,
            model.WeightBytes, model.ActivationBytes(options.MaxNumBatchedTokens), cap, blockBytes);
        var kvOptions = options.KvCache with { PoolBytes = Math.Max(MemoryPlan.PoolBytes, blockBytes) / copies };
        int blockCount = KvCacheStorage.GetRequiredBlockCount(kvOptions, c.LayerCount, c.KvHeadCount, c.HeadDim);
        _identity = identity;
        if (options.KvEviction is { } eviction)
        {
            eviction.Validate(contextLength, kvOptions.BlockSize);
            // NOTE: n-gram speculation runs with the attention-sink policy: the rejected proposals' slots are truncated
            // at the cache's re-based end. A draft model keeps its own KV cache of the whole text, which would need the
            // same eviction and compaction; heavy hitters would count the attention of rejected proposals' queries.
            if (options.Speculative is { Method: SpeculativeMethod.DraftModel })
                throw new NotSupportedException("KV eviction cannot be combined with a draft model (the draft's own KV cache holds the whole text and is not evicted); use n-gram speculation or none");
            if (options.Speculative is not null && eviction.Policy == KvEvictionPolicy.HeavyHitters)
                throw new NotSupportedException("heavy-hitter KV eviction cannot be combined with speculative decoding (rejected proposals would add attention to the scores); use the attention-sink policy");
            if (options.TensorParallelSize > 1) throw new NotSupportedException("KV eviction cannot be combined with tensor parallelism yet");
            if (options.ContextParallelSize > 1) throw new NotSupportedException("KV eviction cannot be combined with context parallelism yet");
            if (c.KvRetention is not null) throw new NotSupportedException("KV eviction is not needed for a model whose every layer has a sliding window: the window already bounds its KV");
            if (!KvCompactor.Supports(kvOptions.DataType)) throw new NotSupportedException($"KV eviction re-rotates stored keys, which it does for f32, f16, Q8_0 and FP8 K/V, not {kvOptions.DataType}");
        }
        var manager = new KvCacheManager(blockCount, kvOptions, identity.Salt, c.KvRetention ?? 0, options.KvEviction);
        var context = new ForwardExecutorContext(model, manager, kvOptions, blockCount, contextLength, options.MaxNumBatchedTokens, options.MaxNumSeqs, options.Threads);
        if (options.EnableExpertParallel && options.TensorParallelSize == 1)
            throw new NotSupportedException("expert parallelism spreads experts over the tensor-parallel ranks; it needs TensorParallelSize above 1");
        _executor = parallel
            ? options.Device == Device.Cuda
                ? throw new NotSupportedException($"parallel layouts run on CPU ranks; TensorParallelSize {options.TensorParallelSize} × PipelineParallelSize {options.PipelineParallelSize} × ContextParallelSize {options.ContextParallelSize} cannot be combined with Device.Cuda yet")
                : new Parallelism.ParallelExecutor(context, options.TensorParallelSize, options.PipelineParallelSize, options.EnableExpertParallel, options.ContextParallelSize)
            : factory is null ? new CpuForwardExecutor(context) : factory.Create(context);
        if (options.KvEviction is { } evicting)
        {
            if (evicting.Policy == KvEvictionPolicy.HeavyHitters && (_executor.Device != Device.Cpu || _executor is Parallelism.ParallelExecutor))
            {
                _executor.Dispose();
                throw new NotSupportedException("heavy-hitter KV eviction accumulates attention on the one-rank CPU path only; use Device.Cpu on one rank or the attention-sink policy");
            }
            _compactor = new KvCompactor(_executor.Storage, model.Graph);
        }
        _scheduler = new Scheduler(new SchedulerOptions { MaxNumSeqs = options.MaxNumSeqs, MaxNumBatchedTokens = options.MaxNumBatchedTokens }, manager);
        if (options.Speculative is { } speculative)
        {
            _numSpeculativeTokens = speculative.NumSpeculativeTokens;
            _proposer = speculative.Method == SpeculativeMethod.NGram
                ? new NGramProposer(speculative.PromptLookupMin, speculative.PromptLookupMax)
                : new DraftModelProposer(draft ?? throw new ArgumentException("a draft model is needed for SpeculativeMethod.DraftModel", nameof(draft)), options, contextLength, factory);
        }
        _metrics = new EngineMetrics(this);
        _thread = new Thread(Run) { IsBackground = true, Name = "Inference engine loop" };
        _thread.Start();
    }

    public int ContextLength { get; }

    /// <summary>The executor that runs the forward passes (tests reach a parallel layout's ranks through it).</summary>
    internal IForwardExecutor Executor => _executor;

    /// <summary>How the KV pool was sized.</summary>
    public KvMemoryPlan MemoryPlan { get; }

    /// <summary>The hardware the forward pass runs on.</summary>
    public Device Device => _executor.Device;

    /// <summary>Names that hardware.</summary>
    public string DeviceName => _executor.DeviceName;

    /// <summary>The KV cache (read it only on the engine thread, or through <see cref="Stats"/>).</summary>
    public KvCacheManager KvCache => _scheduler.KvCache;

    /// <summary>The proposer of speculative decoding, or null (tests inspect the draft model's KV).</summary>
    internal ISpeculativeProposer? Proposer => _proposer;

    /// <summary>A snapshot taken on the engine thread after each step.</summary>
    public EngineStats Stats { get; private set; } = EngineStats.Empty;

    /// <summary>
    /// Called on the engine thread after each step that ran the model (tests observe the engine's progress through it
    /// instead of waiting for time to pass).
    /// </summary>
    internal Action<SchedulerOutput>? StepCompleted { get; set; }

    /// <summary>
    /// Where the steps' time went, summed over the steps that ran the model since the engine started: proposing (a draft
    /// model's steps), the model's forward pass (a verification, with speculation) and the whole step. The benchmark
    /// takes the difference of two snapshots for its breakdown of a decode step.
    /// </summary>
    /// <param name="Steps">Steps that ran the model.</param>
    /// <param name="ProposeTicks">Stopwatch ticks spent proposing tokens (before scheduling).</param>
    /// <param name="ForwardTicks">Stopwatch ticks of the model's forward passes.</param>
    /// <param name="TotalTicks">Stopwatch ticks of the whole steps (proposing, scheduling, the forward pass, sampling).</param>
    internal readonly record struct StepTimes(long Steps, long ProposeTicks, long ForwardTicks, long TotalTicks);

    private StepTimes _stepTimes;

    /// <summary>A snapshot of <see cref="StepTimes"/> (read from any thread; written by the engine thread after each step).</summary>
    internal StepTimes Times
    {
        get
        {
            lock (_timesGate) return _stepTimes;
        }
    }

    private readonly object _timesGate = new();

    /// <summary>Called on the engine thread before a request samples a token (tests inject faults here).</summary>
    internal Action<GenerationRequest>? BeforeSample { get; set; }

    /// <summary>Requests submitted that have not started yet (counted against <see cref="EngineOptions.MaxWaitingRequests"/>).</summary>
    internal int WaitingToStart => _waitingToStart.Count;

    /// <summary>Queues <paramref name="request"/> (and its forks).</summary>
    /// <exception cref="RequestQueueFullException">Too many requests wait to start.</exception>
    public void Submit(GenerationRequest request)
    {
        _waitingToStart.Enter(1 + (request.Forks?.Count ?? 0));
        request.Submitted = Stopwatch.GetTimestamp();
        request.EnterQueue(_waitingToStart);
        if (request.Forks is { } forks)
        {
            foreach (var child in forks)
            {
                child.Submitted = request.Submitted;
                child.EnterQueue(_waitingToStart);
            }
        }
        if (!_incoming.Writer.TryWrite(request))
        {
            request.LeaveQueue();
            if (request.Forks is { } f)
                foreach (var child in f) child.LeaveQueue();
            throw new ObjectDisposedException(nameof(InferenceEngine));
        }
    }

    /// <summary>Runs <paramref name="action"/> on the engine thread between steps.</summary>
    public Task<T> InvokeAsync<T>(Func<EngineLoop, T> action)
    {
        var work = new InvokeWork<T>(action);
        if (!_incoming.Writer.TryWrite(work)) throw new ObjectDisposedException(nameof(InferenceEngine));
        return work.Result.Task;
    }

    private interface IInvokeWork
    {
        void Run(EngineLoop loop);
        void Fail(Exception error);
    }

    private sealed record InvokeWork<T>(Func<EngineLoop, T> Action) : IInvokeWork
    {
        public TaskCompletionSource<T> Result { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Run(EngineLoop loop)
        {
            try { Result.TrySetResult(Action(loop)); }
            catch (Exception e) { Result.TrySetException(e); }
        }

        public void Fail(Exception error) => Result.TrySetException(error);
    }

    private void Run()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                Drain();
                long start = Stopwatch.GetTimestamp();
                Propose();
                long proposed = Stopwatch.GetTimestamp();
                var output = Schedule();
                if (output.IsEmpty)
                {
                    WaitForWork();
                    continue;
                }
                PrefillDraft(output);
                long forward = Stopwatch.GetTimestamp();
                Execute(output);
                long executed = Stopwatch.GetTimestamp();
                Update(output);
                lock (_timesGate)
                    _stepTimes = new StepTimes(_stepTimes.Steps + 1, _stepTimes.ProposeTicks + (proposed - start),
                        _stepTimes.ForwardTicks + (executed - forward), _stepTimes.TotalTicks + (Stopwatch.GetTimestamp() - start));
                StepCompleted?.Invoke(output);
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            FailAll(e);
            return;
        }
        FailAll(new ObjectDisposedException(nameof(InferenceEngine)));
    }

    /// <summary>Admits new work and ends cancelled requests (their blocks are freed now, in this step).</summary>
    private void Drain()
    {
        // Cancellations first, so that work queued after a cancellation (a stats query, say) sees its blocks freed.
        List<long>? cancelled = null;
        foreach (var (id, entry) in _live)
            if (entry.Request.IsCancelled) (cancelled ??= []).Add(id);
        if (cancelled is not null)
            foreach (var id in cancelled) Retire(id, FinishReason.Cancelled);
        while (_incoming.Reader.TryRead(out var item))
        {
            switch (item)
            {
                case GenerationRequest r when r.IsCancelled: CancelBeforeAdmission(r); break;
                case GenerationRequest r: Admit(r); break;
                case IInvokeWork i: i.Run(this); break;
            }
        }
    }

    private void CancelBeforeAdmission(GenerationRequest r)
    {
        r.Finish(FinishReason.Cancelled, new OperationCanceledException("the request was cancelled"));
        if (r.Forks is not { Count: > 0 } forks) return;
        // Its forks go on without it: the first still live becomes the parent of the others.
        var next = forks.Find(f => !f.IsCancelled);
        foreach (var f in forks)
            if (f.IsCancelled) f.Finish(FinishReason.Cancelled, new OperationCanceledException("the request was cancelled"));
        if (next is not null)
        {
            next.Forks = forks.FindAll(f => !f.IsCancelled && !ReferenceEquals(f, next));
            Admit(next);
        }
        forks.Clear();
    }

    private void Admit(GenerationRequest r)
    {
        var scheduled = r.Scheduled;
        if (r.Sampling.PromptLogprobs is not null && r.PromptLogprobs is null && !r.IsSideWork)
        {
            // The prompt's chunks keep the logits of every position; nothing is taken from the prefix cache until the
            // last prompt token is computed. NOTE: logits rows are vocab floats each; a chunk keeps them to about
            // 16 MiB whatever the step budget.
            if (r.PromptTokens.Length == 1) r.PromptLogprobs = [];
            else
            {
                r.PromptScores = new TokenLogprobs[r.PromptTokens.Length - 1];
                scheduled.ReusesCachedPrefix = false;
                scheduled.MaxChunkTokenCount = Math.Clamp((1 << 22) / _config.VocabSize, 1, _scheduler.Options.MaxNumBatchedTokens);
            }
        }
        try
        {
            if (r.Beam is { } run) CheckBeamSearchFits(run);
            _scheduler.AddRequest(scheduled);
        }
        catch (ArgumentException e)
        {
            FailWithForks(r, new ArgumentException(e.Message, e));
            return;
        }
        _live.Add(r.Id, (r, scheduled));
        r.Beam?.Start(r, scheduled);
    }

    private void WaitForWork()
    {
        try
        {
            // Poll while requests are paused for back-pressure, so they resume once their consumer reads.
            _incoming.Reader.WaitToReadAsync(_stop.Token).AsTask().Wait(_live.Count > 0 ? 1 : Timeout.Infinite);
        }
        catch (AggregateException e) when (e.InnerException is OperationCanceledException)
        {
        }
    }

    private SchedulerOutput Schedule()
    {
        // NOTE: a beam whose logits are in, waiting for its siblings', counts as not reading: it yields its sequence slot
        // and blocks to others and is not recomputed before the search moves on.
        foreach (var (id, entry) in _live)
            entry.Scheduled.ConsumerState = entry.Request.IsConsumerBehind || entry.Request.Beam?.IsParked(id) == true ? ConsumerState.NotReading : ConsumerState.Reading;
        return _scheduler.Schedule();
    }

    private void Execute(SchedulerOutput output)
    {
        KvCompactor.Perform(_executor.Storage, _compactor, output.BlockCopies, output.Compactions);
        _batch.Clear();
        long now = Stopwatch.GetTimestamp();
        var chunks = output.Chunks;
        if (_segmentOf.Length < chunks.Length)
        {
            _segmentOf = new int[Math.Max(16, 2 * chunks.Length)];
            _deviceRowOf = new int[_segmentOf.Length];
        }
        _deviceRows.Clear();
        _deviceRows.VocabSize = _config.VocabSize;
        for (int i = 0; i < chunks.Length; i++)
        {
            ref readonly var chunk = ref chunks[i];
            var r = _live[chunk.RequestId].Request;
            _deviceRowOf[i] = -1;
            if (r.FirstScheduled == 0)
            {
                r.LeaveQueue();
                r.FirstScheduled = now;
                r.PrefixHitTokens = chunk.Request.CachedTokenCount;
            }
            if (r.PrefixSource is { } file)
            {
                // A prefix file's chunk: its blocks are copied in, nothing is computed.
                _segmentOf[i] = -1;
                try
                {
                    CopyPrefixBlocks(file, chunk);
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    _failed[chunk.RequestId] = e;
                }
                continue;
            }
            int rows = chunk.SamplesToken ? 1 + chunk.SpeculativeTokenCount : 0;
            // Prompt scoring: the logits after every prompt position of the chunk.
            if (r.PromptScores is not null && chunk.StartPosition < r.PromptTokens.Length - 1) rows = chunk.TokenCount;
            _segmentOf[i] = _batch.Segments.Count;
            if (rows == 1 && chunk.SpeculativeTokenCount == 0 && _executor.SamplesOnDevice && SamplesOnDevice(r))
            {
                // NOTE: the sampler reserves its draw: if the step fails and the token is chosen on the host after all,
                // the host takes the same draw.
                var scheduled = _live[chunk.RequestId].Scheduled;
                _deviceRowOf[i] = _deviceRows.Count;
                r.Sampler.AddDeviceRow(_deviceRows, _batch.LogitCount, scheduled.TokenIds, scheduled.PromptTokenCount);
            }
            _batch.Add(chunk.RequestId, chunk.TokenIds, chunk.CachePosition, rows);
        }
        int vocab = _config.VocabSize;
        if (_logits.Length < _batch.LogitCount * vocab) _logits = new float[_batch.LogitCount * vocab];
        if (_batch.TokenCount > 0)
        {
            try
            {
                if (_deviceRows.Count > 0) _executor.Forward(_batch, _logits, _deviceRows);
                else _executor.Forward(_batch, _logits);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // The solo reruns bring every row's logits back: the host chooses every token of this step.
                _deviceRows.Clear();
                IsolateFailures(output, e);
            }
        }
        _metrics.StepExecuted(output.TotalTokenCount, output.PreemptedRequestIds.Length);
    }

    /// <summary>
    /// The batch failed: runs each chunk alone so that only the requests whose own chunk fails end (with that error)
    /// and the others go on as if nothing happened.
    /// </summary>
    /// <remarks>
    /// NOTE: rerunning a chunk rewrites every KV slot it covers, and a row's result does not depend on its batch, so the
    /// survivors' logits and KV are what the whole batch would have produced. Blocks shared through the prefix cache are
    /// full and computed by earlier steps: a chunk never writes them.
    /// </remarks>
    private void IsolateFailures(SchedulerOutput output, Exception batchError)
    {
        int vocab = _config.VocabSize;
        var chunks = output.Chunks;
        for (int i = 0; i < chunks.Length; i++)
        {
            if (_segmentOf[i] < 0) continue;
            if (_batch.Segments.Count == 1)
            {
                _failed[chunks[i].RequestId] = batchError;
                return;
            }
            var segment = _batch.Segments[_segmentOf[i]];
            _soloBatch.Clear();
            _soloBatch.Add(chunks[i].RequestId, chunks[i].TokenIds, chunks[i].CachePosition, segment.LogitRowCount);
            var logits = segment.LogitRowCount > 0 ? _logits.AsSpan(segment.LogitIndex * vocab, segment.LogitRowCount * vocab) : Span<float>.Empty;
            try
            {
                _executor.Forward(_soloBatch, logits);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                _failed[chunks[i].RequestId] = e;
            }
        }
    }

    private void Update(SchedulerOutput output)
    {
        int vocab = _config.VocabSize;
        var chunks = output.Chunks;
        if (_failed.Count > 0)
        {
            for (int i = 0; i < chunks.Length; i++)
            {
                if (!_failed.Remove(chunks[i].RequestId, out var error)) continue;
                // The failed chunk's slots hold no trustworthy KV: keep it out of the prefix cache.
                chunks[i].Request.ComputedTokenCount = chunks[i].StartPosition;
                Retire(chunks[i].RequestId, FinishReason.Cancelled, error);
            }
        }
        for (int i = 0; i < chunks.Length; i++)
        {
            if (!_live.TryGetValue(chunks[i].RequestId, out var entry)) continue;
            var (r, scheduled) = entry;
            var segment = _segmentOf[i] >= 0 ? _batch.Segments[_segmentOf[i]] : default;
            if (r.PromptScores is not null && segment.LogitRowCount > 0 && !ScorePromptChunk(r, scheduled, chunks[i], segment)) continue;
            if (!chunks[i].SamplesToken) continue;
            if (r.PrefixSource is not null)
            {
                // Every block of the file is in: pin them for the engine's lifetime.
                long holder = _nextInternalId--;
                KvCache.Fork(r.Id, holder);
                _prefixHolders.Add(holder);
                Retire(r.Id, FinishReason.Length);
                continue;
            }
            // The rows to sample from: the chunk's last (1 + proposed tokens) rows.
            int logitIndex = segment.LogitIndex + segment.LogitRowCount - 1 - chunks[i].SpeculativeTokenCount;
            if (r.Beam is { } run)
            {
                BeamLogits(run, scheduled, _logits.AsSpan(logitIndex * vocab, vocab));
                continue;
            }
            if (r.OnPromptComputed is { } sideWork)
            {
                try
                {
                    sideWork(r.Id, _logits.AsSpan(logitIndex * vocab, vocab));
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    Retire(r.Id, FinishReason.Cancelled, e);
                    continue;
                }
                Retire(r.Id, FinishReason.Length);
                continue;
            }
            if (chunks[i].SpeculativeTokenCount > 0)
            {
                Verify(r, scheduled, _logits.AsSpan(logitIndex * vocab, (chunks[i].SpeculativeTokenCount + 1) * vocab));
                continue;
            }
            if (_deviceRowOf[i] >= 0 && _deviceRowOf[i] < _deviceRows.Count)
            {
                r.Sampler.CommitDeviceChoice();
                DeviceSampledTokenCount++;
                Accept(r, scheduled, _deviceRows.Tokens[_deviceRowOf[i]], null);
                continue;
            }
            var logits = _logits.AsSpan(logitIndex * vocab, vocab);
            if (r.Forks is { Count: > 0 }) StartForks(r, scheduled, logits);
            SampleAndAccept(r, scheduled, logits);
        }
        Stats = CurrentStats();
    }

    /// <summary>
    /// Prompt log-probabilities from a chunk's logits rows: the row after position p scores prompt token p + 1. The chunk
    /// that reaches the last prompt token completes them; the request then reuses cached prefixes again (after a
    /// preemption). Returns false when the request failed.
    /// </summary>
    private bool ScorePromptChunk(GenerationRequest r, SchedulerRequest scheduled, in ScheduledChunk chunk, BatchSegment segment)
    {
        var scores = r.PromptScores!;
        int vocab = _config.VocabSize, prompt = r.PromptTokens.Length, top = r.Sampling.PromptLogprobs ?? 0;
        int first = chunk.StartPosition + chunk.TokenCount - segment.LogitRowCount;
        try
        {
            for (int j = 0; j < segment.LogitRowCount && first + j + 1 < prompt; j++)
                scores[first + j] = TokenLogprobs.Compute(_logits.AsSpan((segment.LogitIndex + j) * vocab, vocab), 1f, r.PromptTokens[first + j + 1], top);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Retire(r.Id, FinishReason.Cancelled, e);
            return false;
        }
        if (chunk.StartPosition + chunk.TokenCount >= prompt)
        {
            r.PromptLogprobs = scores;
            r.PromptScores = null;
            scheduled.ReusesCachedPrefix = true;
            scheduled.MaxChunkTokenCount = 0;
        }
        return true;
    }

    /// <summary>Copies the blocks of a prefix file that <paramref name="chunk"/> fills (those whose last slot it covers).</summary>
    private void CopyPrefixBlocks(PrefixFile.Reader file, in ScheduledChunk chunk)
    {
        // NOTE: the file's block b holds tokens [b·size, (b + 1)·size); once a sequence evicted tokens its blocks do not.
        if (chunk.EvictedTokenCount > 0)
            throw new NotSupportedException($"the prefix file holds more tokens than the KV eviction budget ({KvCache.Eviction?.KeptTokenCount}) keeps");
        var storage = _executor.Storage;
        int bs = storage.BlockSize, end = chunk.StartPosition + chunk.TokenCount;
        var table = KvCache.GetBlockTable(chunk.RequestId);
        for (int b = chunk.StartPosition / bs; (b + 1) * bs <= end; b++)
            if (table[b] != KvCacheManager.ReleasedBlock) file.CopyInto(storage, b, table[b]);
    }

    /// <summary>
    /// Whether the device may choose <paramref name="r"/>'s next token: nothing needs the full logits on the host (no
    /// logprobs, constraint, beam, forks, side work or sampling hook).
    /// </summary>
    private bool SamplesOnDevice(GenerationRequest r) =>
        r.Matcher is null && r.Sampling.Logprobs is null && !r.IsSideWork && r.Forks is not { Count: > 0 } && r.PromptScores is null
        && BeforeSample is null;

    private void SampleAndAccept(GenerationRequest r, SchedulerRequest scheduled, Span<float> logits)
    {
        int token;
        TokenLogprobs? logprobs;
        try
        {
            BeforeSample?.Invoke(r);
            r.Matcher?.ApplyMask(logits);
            token = r.Sampler.Sample(logits, scheduled.TokenIds, scheduled.PromptTokenCount);
            logprobs = r.Sampling.Logprobs is int top ? r.Sampler.GetLogprobs(logits, token, top) : null;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // One request's failure stays its own.
            Retire(r.Id, FinishReason.Cancelled, e);
            return;
        }
        Accept(r, scheduled, token, logprobs);
    }

    /// <summary>Hands the chosen <paramref name="token"/> to the scheduler and the request; retires it when it finishes.</summary>
    private void Accept(GenerationRequest r, SchedulerRequest scheduled, int token, TokenLogprobs? logprobs)
    {
        FinishReason? finish;
        try
        {
            var schedulerReason = _scheduler.Update(scheduled, token);
            finish = r.Accept(token, logprobs);
            if (finish is null && schedulerReason == FinishReason.Length) finish = FinishReason.Length;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // One request's failure stays its own.
            Retire(r.Id, FinishReason.Cancelled, e);
            return;
        }
        if (finish is not null) Retire(r.Id, finish.Value);
    }

    /// <summary>
    /// Before scheduling: proposes tokens for every running request that is decoding (all its known tokens computed but
    /// the last sampled one), at most <see cref="SpeculativeOptions.NumSpeculativeTokens"/>, the room before its length
    /// limit and the room in its output buffer (a step may emit every accepted token and one more).
    /// </summary>
    private void Propose()
    {
        if (_proposer is null) return;
        _proposalRequests.Clear();
        if (_proposalLimits.Length < _live.Count) _proposalLimits = new int[_live.Count * 2];
        foreach (var (_, (r, scheduled)) in _live)
        {
            scheduled.ClearSpeculativeTokens();
            if (r.IsSideWork) continue;
            if (scheduled.Status != RequestStatus.Running || scheduled.ComputedTokenCount != scheduled.TokenCount - 1 || scheduled.OutputTokenCount == 0) continue;
            int room = GenerationRequest.OutputCapacity - 2 - (r.Output.Reader.CanCount ? r.Output.Reader.Count : GenerationRequest.OutputCapacity);
            int limit = Math.Min(Math.Min(_numSpeculativeTokens, scheduled.SpeculativeCapacity), room);
            if (limit <= 0) continue;
            _proposalLimits[_proposalRequests.Count] = limit;
            _proposalRequests.Add(scheduled);
        }
        if (_proposalRequests.Count == 0) return;
        try
        {
            _proposer.Propose(_proposalRequests, _proposalLimits.AsSpan(0, _proposalRequests.Count));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // NOTE: a failing proposer costs the speed-up of this step, never a request: they decode one token each.
            foreach (var scheduled in _proposalRequests)
            {
                scheduled.ClearSpeculativeTokens();
                _proposer.Release(scheduled.RequestId);
            }
        }
    }

    /// <summary>The proposer computes this step's prompt chunks too (a draft model's KV), before the model runs them.</summary>
    private void PrefillDraft(SchedulerOutput output)
    {
        if (_proposer is null) return;
        try
        {
            _proposer.Prefill(output.Chunks);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // NOTE: as in Propose, a failing proposer costs speed, never a request: it starts over at the next proposal.
            foreach (ref readonly var chunk in output.Chunks) _proposer.Release(chunk.RequestId);
        }
    }

    /// <summary>
    /// The request's chunk computed its last known token and its proposed tokens: samples from the logits after each
    /// position in turn (constraint mask, penalties over the tokens so far, logprobs: all as for one token) and keeps
    /// going while the sampled token equals the proposed one. The first sampled token that differs, or the one after
    /// the last proposal, ends the step; the rejected proposals' KV is rolled back.
    /// </summary>
    /// <remarks>
    /// NOTE: this is the standard rejection rule for point-mass proposals: a proposal q is accepted with probability
    /// min(1, p(q)/1) = p(q), and on rejection the token is drawn from p without q, renormalized; drawing x from p and
    /// accepting when x = q does exactly that. Greedy output is therefore the same as without speculation, and sampled
    /// output follows the model's distribution.
    /// </remarks>
    private void Verify(GenerationRequest r, SchedulerRequest scheduled, Span<float> rows)
    {
        int vocab = _config.VocabSize;
        var proposed = scheduled.SpeculativeTokenIds;
        int count = 0, accepted = 0;
        FinishReason? finish = null;
        try
        {
            for (int i = 0; i <= proposed.Length; i++)
            {
                var logits = rows.Slice(i * vocab, vocab);
                r.Matcher?.ApplyMask(logits);
                // NOTE: the history is the known tokens and the proposals before this position, all accepted so far.
                int token = r.Sampler.Sample(logits, scheduled.ScheduledTokenIds[..(scheduled.TokenCount + i)], scheduled.PromptTokenCount);
                var logprobs = r.Sampling.Logprobs is int top ? r.Sampler.GetLogprobs(logits, token, top) : null;
                _verified[count++] = token;
                bool match = i < proposed.Length && token == proposed[i];
                if (match) accepted++;
                finish = r.Accept(token, logprobs);
                if (finish is not null || !match) break;
            }
            r.SpeculativeSteps++;
            r.ProposedTokens += proposed.Length;
            r.AcceptedTokens += accepted;
            _speculativeSteps++;
            _proposedTokens += proposed.Length;
            _acceptedTokens += accepted;
            _metrics.Verified(proposed.Length, accepted);
            var schedulerReason = _scheduler.Update(scheduled, _verified.AsSpan(0, count));
            if (finish is null && schedulerReason == FinishReason.Length) finish = FinishReason.Length;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Retire(r.Id, FinishReason.Cancelled, e);
            return;
        }
        if (finish is not null) Retire(r.Id, finish.Value);
    }

    /// <summary>
    /// The parent's prompt is computed: its forks start as copies of its KV (the prompt's blocks held once) and sample
    /// their first tokens from the same logits with their own samplers. A fork that finds no free sequence slot is
    /// queued as an ordinary request instead (its prompt then mostly hits the prefix cache).
    /// </summary>
    private void StartForks(GenerationRequest parent, SchedulerRequest parentScheduled, ReadOnlySpan<float> logits)
    {
        // NOTE: each sampler applies its penalties in place, so every fork starts from its own copy of the raw logits.
        int vocab = logits.Length;
        var pooled = System.Buffers.ArrayPool<float>.Shared.Rent(2 * vocab);
        var raw = pooled.AsSpan(0, vocab);
        var copy = pooled.AsSpan(vocab, vocab);
        logits.CopyTo(raw);
        var forks = parent.Forks!;
        foreach (var child in forks)
        {
            if (child.IsCancelled)
            {
                child.Finish(FinishReason.Cancelled, new OperationCanceledException("the request was cancelled"));
                continue;
            }
            var scheduled = child.Scheduled;
            if (!_scheduler.TryAddFork(parentScheduled, scheduled))
            {
                child.PromptLogprobs ??= parent.PromptLogprobs;
                Admit(child);
                continue;
            }
            _live.Add(child.Id, (child, scheduled));
            child.LeaveQueue();
            child.FirstScheduled = parent.FirstScheduled;
            child.PrefixHitTokens = parent.PrefixHitTokens;
            child.PromptLogprobs ??= parent.PromptLogprobs;
            raw.CopyTo(copy);
            SampleAndAccept(child, scheduled, copy);
        }
        forks.Clear();
        System.Buffers.ArrayPool<float>.Shared.Return(pooled);
    }

    /// <summary>The state now (engine thread only).</summary>
    public EngineStats CurrentStats() =>
        new(_scheduler.RunningCount, _scheduler.WaitingCount, _scheduler.PreemptionCount, _scheduler.KvCache.GetStats())
        {
            Speculation = _proposer is null ? null : new SpeculationMetrics(_speculativeSteps, _proposedTokens, _acceptedTokens),
            Communication = (_executor as Parallelism.ParallelExecutor)?.Communication,
        };

    /// <summary>Ends a live request: frees its blocks (now) and completes its stream (with <paramref name="error"/> when it failed).</summary>
    private void Retire(long id, FinishReason reason, Exception? error = null)
    {
        if (!_live.Remove(id, out var entry)) return;
        _scheduler.Finish(id, reason);
        if (entry.Request.Beam is { } run)
        {
            EndBeamSearch(run, reason, error);
            return;
        }
        _proposer?.Release(id);
        if (error is not null) entry.Request.Finish(reason, error);
        else if (reason == FinishReason.Cancelled) entry.Request.Finish(reason, new OperationCanceledException("the request was cancelled"));
        else entry.Request.Finish(reason);
        _metrics.RequestFinished(entry.Request);
        if (entry.Request.Forks is { Count: > 0 } forks)
        {
            // The parent ended before its prompt was computed: its forks go on as ordinary requests.
            foreach (var child in forks)
            {
                if (child.IsCancelled) child.Finish(FinishReason.Cancelled, new OperationCanceledException("the request was cancelled"));
                else Admit(child);
            }
            forks.Clear();
        }
    }

    /// <summary>How many tokens of a <paramref name="length"/>-token prompt a prefix file holds (its whole blocks).</summary>
    /// <exception cref="ArgumentException">The prompt is shorter than one block.</exception>
    /// <exception cref="NotSupportedException">The model's attention window is shorter than the prompt.</exception>
    public int PrefixTokens(int length)
    {
        int bs = _executor.Storage.BlockSize;
        if (length < bs) throw new ArgumentException($"the prompt has {length} tokens; a prefix file holds whole blocks of {bs}", "prompt");
        // NOTE: under sliding-window attention the blocks before the window are released while the prompt is computed.
        if (_config.KvRetention is int window && length > window)
            throw new NotSupportedException($"the prompt has {length} tokens; a prefix file of this model (attention window {window}) holds at most {window}");
        return length / bs * bs;
    }

    /// <summary>Writes the first <paramref name="tokenCount"/> tokens of live sequence <paramref name="id"/> to a prefix file (engine thread).</summary>
    public void WritePrefix(string path, int[] tokens, long id, int tokenCount)
    {
        // NOTE: an evicting sequence's blocks no longer hold its prompt at its positions.
        if (KvCache.HasEvicted(id))
            throw new NotSupportedException($"the prompt outgrew the KV eviction budget ({KvCache.Eviction!.KeptTokenCount} tokens) while it was computed; a prefix file holds at most that many");
        PrefixFile.Write(path, _identity, _executor.Storage, tokens, KvCache.GetBlockTable(id), tokenCount / _executor.Storage.BlockSize);
    }

    /// <summary>
    /// Opens and checks a prefix file against this engine (any thread: the checksum and, the first time, the weights
    /// hash are computed here, not on the engine thread).
    /// </summary>
    public PrefixFile.Reader OpenPrefix(string path) => PrefixFile.Reader.Open(path, _identity, _executor.Storage);

    /// <summary>Computes the hash of every weight if not yet known (any thread), so the engine thread never does.</summary>
    public void PrepareWeightsHash() => _ = _identity.Weights?.Value;

    /// <summary>The weights hash (after <see cref="PrepareWeightsHash"/>); zero when the identity has none.</summary>
    public UInt128 WeightsHash => _identity.Weights?.Value ?? 0;

    private void FailAll(Exception error)
    {
        _incoming.Writer.TryComplete();
        while (_incoming.Reader.TryRead(out var item))
        {
            if (item is GenerationRequest r) FailWithForks(r, error);
            else if (item is IInvokeWork i) i.Fail(error);
        }
        foreach (var id in _live.Keys.ToArray())
        {
            var r = _live[id].Request;
            _live.Remove(id);
            _scheduler.Finish(id, FinishReason.Cancelled);
            FailWithForks(r, error);
        }
    }

    private static void FailWithForks(GenerationRequest r, Exception error)
    {
        r.Finish(FinishReason.Cancelled, error);
        if (r.Forks is null) return;
        foreach (var child in r.Forks) child.Finish(FinishReason.Cancelled, error);
        r.Forks.Clear();
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _incoming.Writer.TryComplete();
        await Task.Run(() => _thread.Join()).ConfigureAwait(false);
        _metrics.Dispose();
        _proposer?.Dispose();
        _executor.Dispose();
        _stop.Dispose();
    }
}
