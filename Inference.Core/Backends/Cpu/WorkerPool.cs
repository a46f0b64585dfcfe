using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace Inference.Backends.Cpu;

/// <summary>A unit of parallel work over the index range [start, end).</summary>
public interface IRangeJob
{
    /// <summary>Processes items <paramref name="start"/> (inclusive) to <paramref name="end"/> (exclusive).</summary>
    void Execute(int start, int end);
}

/// <summary>
/// Splits index ranges over a fixed set of persistent threads. One pool per engine; the calling thread takes part.
/// </summary>
/// <remarks>
/// <para>Each <see cref="Run{TJob}(int, TJob)"/> cuts [0, itemCount) into contiguous chunks, about <see cref="ChunksPerThread"/>
/// per thread, which the caller and the workers take in order from a shared counter: a thread that starts late (woken
/// late, or sharing its core with other work) takes fewer chunks instead of holding up the step. Workers spin briefly
/// after a job (the next matmul usually follows within microseconds) and then block.</para>
/// <para>Not thread-safe: call <see cref="Run{TJob}(int, TJob)"/> from one thread at a time (the engine thread), and never from
/// inside a job. A call allocates nothing once a job type has been seen on the calling thread.</para>
/// </remarks>
public sealed class WorkerPool : IDisposable
{
    // NOTE: ~50 µs of spinning covers the gap between consecutive kernels of one decode step without burning a core
    // while the engine is idle.
    private static readonly long SpinTicks = Stopwatch.Frequency / 20_000;

    private readonly Thread[] _workers;
    private readonly object _gate = new();
    private volatile int _generation;
    private volatile bool _disposed;
    private int _sleepers;
    private int _pending;
    private IJobRunner? _runner;
    private int _itemCount;
    private int _parts;
    private int _chunk;
    private int _next;

    /// <summary>Chunks per thread that one <see cref="Run{TJob}(int, TJob)"/> cuts its items into (when there are enough items).</summary>
    public const int ChunksPerThread = 4;
    private Exception? _failure;

    /// <summary>Creates a pool of <paramref name="threadCount"/> threads (the caller counts as one).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threadCount"/> is less than 1.</exception>
    public WorkerPool(int threadCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threadCount, 1);
        ThreadCount = threadCount;
        _workers = new Thread[threadCount - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            int index = i + 1;
            _workers[i] = new Thread(() => WorkerLoop(index)) { IsBackground = true, Name = $"Inference worker {index}" };
            _workers[i].Start();
        }
    }

    /// <summary>Number of threads that share each job, the caller included.</summary>
    public int ThreadCount { get; }

    /// <summary>Bytes of work below which <see cref="Run{TJob}(int, TJob, long)"/> keeps a job on the calling thread.</summary>
    public const long SerialBytes = 64 << 10;

    /// <summary>
    /// <see cref="Run{TJob}(int, TJob)"/>, or the whole job on the calling thread when it touches fewer than
    /// <see cref="SerialBytes"/> bytes: a hand-off costs more than such a job, and workers kept busy by tiny jobs starve
    /// other threads of the process on a machine with as many cores as workers.
    /// </summary>
    /// <param name="itemCount">Items of the job.</param>
    /// <param name="job">The job.</param>
    /// <param name="workBytes">Bytes the whole job reads (weights, cache rows): the size of the work.</param>
    /// <exception cref="ObjectDisposedException">The pool was disposed.</exception>
    public void Run<TJob>(int itemCount, TJob job, long workBytes) where TJob : IRangeJob
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        // NOTE: stories260K (matrices of 16 KB) generated 200 tokens at 3.6 ms each with two threads and 0.48 ms with
        // one: the busy workers kept the thread printing the tokens off both cores for a scheduler slice per token.
        if (workBytes < SerialBytes)
        {
            if (itemCount > 0) job.Execute(0, itemCount);
            return;
        }
        Run(itemCount, job);
    }

    /// <summary>Runs <paramref name="job"/> over [0, <paramref name="itemCount"/>) split into contiguous slices and
    /// returns when every slice is done. An exception thrown by any slice is rethrown here.</summary>
    /// <exception cref="ObjectDisposedException">The pool was disposed.</exception>
    public void Run<TJob>(int itemCount, TJob job) where TJob : IRangeJob
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (itemCount <= 0) return;
        int parts = Math.Min(ThreadCount, itemCount);
        if (parts == 1)
        {
            job.Execute(0, itemCount);
            return;
        }

        // NOTE: the job is copied into a per-thread, per-type box (allocated once) so workers can call it through an
        // interface without boxing the struct on every call.
        var box = JobBox<TJob>.ForCurrentThread;
        box.Job = job;
        _runner = box;
        _itemCount = itemCount;
        _parts = parts;
        _chunk = Math.Max(1, itemCount / (parts * ChunksPerThread));
        _next = 0;
        _failure = null;
        _pending = _workers.Length;
        Interlocked.Increment(ref _generation);
        if (Volatile.Read(ref _sleepers) > 0)
            lock (_gate) Monitor.PulseAll(_gate);

        try
        {
            RunChunks(ref job);
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _failure, e, null);
        }

        WaitForWorkers();
        box.Job = default!;
        _runner = null;
        if (_failure is { } failure)
        {
            _failure = null;
            ExceptionDispatchInfo.Capture(failure).Throw();
        }
    }

    /// <summary>Waits until every worker has finished its part of the current job: one <c>pause</c> per look for up to
    /// <see cref="SpinTicks"/>, then <see cref="SpinWait"/>'s backing off (which yields the core).</summary>
    /// <remarks>NOTE: <see cref="SpinWait.SpinOnce(int)"/> from the start doubles its spins between looks, so a worker that
    /// finished a few microseconds after the caller was seen up to about as late again; with a single pause per look a
    /// hand-off of two threads took 0.39–0.54 µs on average instead of 0.80–0.82 (an empty job, Xeon family 6 model 207).</remarks>
    private void WaitForWorkers()
    {
        long start = Stopwatch.GetTimestamp();
        while (Volatile.Read(ref _pending) != 0)
        {
            if (Stopwatch.GetTimestamp() - start < SpinTicks)
            {
                Thread.SpinWait(1);
                continue;
            }
            var spinner = new SpinWait();
            while (Volatile.Read(ref _pending) != 0) spinner.SpinOnce(sleep1Threshold: -1);
            return;
        }
    }

    /// <summary>Stops and joins the worker threads.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Interlocked.Increment(ref _generation);
        lock (_gate) Monitor.PulseAll(_gate);
        foreach (var w in _workers) w.Join();
    }

    /// <summary>Takes chunks from the shared counter until none is left.</summary>
    private void RunChunks<TJob>(ref TJob job) where TJob : IRangeJob
    {
        int count = _itemCount, chunk = _chunk;
        while (true)
        {
            int start = Interlocked.Add(ref _next, chunk) - chunk;
            if (start >= count) return;
            job.Execute(start, Math.Min(count, start + chunk));
        }
    }

    private void WorkerLoop(int index)
    {
        int seen = 0;
        while (true)
        {
            WaitForGeneration(seen);
            seen = _generation;
            if (_disposed) return;
            if (index < _parts)
            {
                try
                {
                    var runner = _runner!;
                    RunChunks(ref runner);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref _failure, e, null);
                }
            }
            Interlocked.Decrement(ref _pending);
        }
    }

    private void WaitForGeneration(int seen)
    {
        long start = Stopwatch.GetTimestamp();
        while (_generation == seen)
        {
            if (Stopwatch.GetTimestamp() - start < SpinTicks)
            {
                Thread.SpinWait(1);
                continue;
            }
            lock (_gate)
            {
                Interlocked.Increment(ref _sleepers);
                while (_generation == seen) Monitor.Wait(_gate);
                Interlocked.Decrement(ref _sleepers);
            }
        }
    }

    private interface IJobRunner : IRangeJob
    {
    }

    private sealed class JobBox<TJob> : IJobRunner where TJob : IRangeJob
    {
        [ThreadStatic] private static JobBox<TJob>? t_box;

        public TJob Job = default!;

        public static JobBox<TJob> ForCurrentThread => t_box ??= new JobBox<TJob>();

        public void Execute(int start, int end) => Job.Execute(start, end);
    }
}
