using System.Diagnostics;
using System.Threading.Channels;
using Inference.Backends.Cpu;
using Inference.Models;

namespace Inference.Engine;

/// <summary>
/// The one thread that owns the model, the KV cache and the request queues. Each iteration: schedule → execute →
/// update. Requests arrive through a channel; tokens leave through each request's own channel.
/// </summary>
internal sealed class EngineLoop : IAsyncDisposable
{
    private readonly LlamaModel _model;
    private readonly EngineOptions _options;
    private readonly WorkerPool _pool;
    private readonly ContiguousKvCache _kv;
    private readonly Channel<object> _incoming = Channel.CreateUnbounded<object>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private readonly LinkedList<GenerationRequest> _waiting = new();
    private readonly List<GenerationRequest> _running = new();
    private readonly ModelBatch _batch = new();
    private readonly List<GenerationRequest> _scheduled = new();
    private float[] _logits = [];

    public EngineLoop(LlamaModel model, EngineOptions options, int contextLength)
    {
        _model = model;
        _options = options;
        _pool = new WorkerPool(options.Threads);
        _kv = new ContiguousKvCache(model.Config, contextLength);
        _thread = new Thread(Run) { IsBackground = true, Name = "Inference engine loop" };
        _thread.Start();
    }

    public void Submit(GenerationRequest request)
    {
        request.Submitted = Stopwatch.GetTimestamp();
        if (!_incoming.Writer.TryWrite(request))
            throw new ObjectDisposedException(nameof(InferenceEngine));
    }

    /// <summary>Computes the logits at the last position of <paramref name="tokens"/> on the engine thread.</summary>
    public Task<float[]> EvaluateAsync(int[] tokens, CancellationToken cancellationToken)
    {
        var work = new EvaluateWork(tokens, cancellationToken);
        if (!_incoming.Writer.TryWrite(work)) throw new ObjectDisposedException(nameof(InferenceEngine));
        return work.Result.Task;
    }

    private sealed record EvaluateWork(int[] Tokens, CancellationToken CancellationToken)
    {
        public TaskCompletionSource<float[]> Result { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private void Run()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                if (!Drain()) break;
                if (!Schedule())
                {
                    WaitForWork();
                    continue;
                }
                Execute();
                Update();
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            FailAll(e);
            return;
        }
        FailAll(new ObjectDisposedException(nameof(InferenceEngine)));
    }

    /// <summary>Moves new work into the waiting queue and removes cancelled requests. False once the engine stops.</summary>
    private bool Drain()
    {
        while (_incoming.Reader.TryRead(out var item))
        {
            if (item is GenerationRequest r) _waiting.AddLast(r);
            else if (item is EvaluateWork w) RunEvaluate(w);
        }
        for (var node = _waiting.First; node is not null;)
        {
            var next = node.Next;
            if (node.Value.IsCancelled)
            {
                node.Value.Finish(FinishReason.Cancelled, new OperationCanceledException("the request was cancelled"));
                _waiting.Remove(node);
            }
            node = next;
        }
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            if (!_running[i].IsCancelled) continue;
            Retire(_running[i], FinishReason.Cancelled);
        }
        return !_stop.IsCancellationRequested;
    }

    private void WaitForWork()
    {
        try
        {
            // Poll so that a request paused for back-pressure resumes once its consumer reads.
            _incoming.Reader.WaitToReadAsync(_stop.Token).AsTask().Wait(_running.Count > 0 ? 1 : Timeout.Infinite);
        }
        catch (AggregateException e) when (e.InnerException is OperationCanceledException)
        {
        }
    }

    /// <summary>
    /// Chooses this step's tokens. NOTE: there is no separate prefill phase: each request's computed tokens catch up to
    /// its known tokens, a long prompt in chunks of at most the token budget, running requests first.
    /// </summary>
    private bool Schedule()
    {
        while (_waiting.Count > 0 && _running.Count < _options.MaxNumSeqs)
        {
            var r = _waiting.First!.Value;
            _waiting.RemoveFirst();
            _running.Add(r);
        }

        _batch.Clear();
        _scheduled.Clear();
        int budget = _options.MaxNumBatchedTokens;
        foreach (var r in _running)
        {
            if (budget == 0) break;
            if (r.IsConsumerBehind) continue;
            int pending = r.Tokens.Count - r.ComputedTokens;
            int n = Math.Min(pending, budget);
            if (n <= 0) continue;
            bool complete = n == pending;
            _batch.Add(r.Id, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(r.Tokens).Slice(r.ComputedTokens, n), r.ComputedTokens, wantLogits: complete);
            _scheduled.Add(r);
            if (r.FirstScheduled == 0) r.FirstScheduled = Stopwatch.GetTimestamp();
            budget -= n;
        }
        return _scheduled.Count > 0;
    }

    private void Execute()
    {
        int vocab = _model.Config.VocabSize;
        if (_logits.Length < _batch.LogitCount * vocab) _logits = new float[_batch.LogitCount * vocab];
        _model.Forward(_batch, _kv, _logits, _pool);
    }

    private void Update()
    {
        int vocab = _model.Config.VocabSize;
        for (int i = 0; i < _scheduled.Count; i++)
        {
            var r = _scheduled[i];
            var seg = _batch.Segments[i];
            r.ComputedTokens += seg.TokenCount;
            if (seg.LogitIndex < 0) continue;
            var logits = _logits.AsSpan(seg.LogitIndex * vocab, vocab);
            int token = r.Sampler.Sample(logits, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(r.Tokens));
            var finish = r.Accept(token);
            if (finish is not null) Retire(r, finish.Value);
        }
    }

    private void Retire(GenerationRequest r, FinishReason reason)
    {
        _running.Remove(r);
        _kv.Remove(r.Id);
        if (reason == FinishReason.Cancelled) r.Finish(reason, new OperationCanceledException("the request was cancelled"));
        else r.Finish(reason);
    }

    private void RunEvaluate(EvaluateWork w)
    {
        if (w.CancellationToken.IsCancellationRequested)
        {
            w.Result.TrySetCanceled(w.CancellationToken);
            return;
        }
        const long evalId = -1;
        try
        {
            var batch = new ModelBatch();
            var logits = new float[_model.Config.VocabSize];
            for (int start = 0; start < w.Tokens.Length; start += _options.MaxNumBatchedTokens)
            {
                int n = Math.Min(_options.MaxNumBatchedTokens, w.Tokens.Length - start);
                batch.Clear();
                batch.Add(evalId, w.Tokens.AsSpan(start, n), start, wantLogits: start + n == w.Tokens.Length);
                _model.Forward(batch, _kv, logits, _pool);
            }
            w.Result.TrySetResult(logits);
        }
        catch (Exception e)
        {
            w.Result.TrySetException(e);
        }
        finally
        {
            _kv.Remove(evalId);
        }
    }

    private void FailAll(Exception error)
    {
        _incoming.Writer.TryComplete();
        while (_incoming.Reader.TryRead(out var item))
        {
            if (item is GenerationRequest r) _waiting.AddLast(r);
            else if (item is EvaluateWork w) w.Result.TrySetException(error);
        }
        foreach (var r in _running) r.Finish(FinishReason.Cancelled, error);
        foreach (var r in _waiting) r.Finish(FinishReason.Cancelled, error);
        _running.Clear();
        _waiting.Clear();
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _incoming.Writer.TryComplete();
        await Task.Run(() => _thread.Join()).ConfigureAwait(false);
        _pool.Dispose();
        _stop.Dispose();
    }
}
