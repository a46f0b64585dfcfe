namespace Inference.Backends.Cpu;

/// <summary>A unit of parallel work over the index range [start, end).</summary>
public interface IRangeJob
{
    /// <summary>Processes items <paramref name="start"/> (inclusive) to <paramref name="end"/> (exclusive).</summary>
    void Execute(int start, int end);
}

/// <summary>
/// Splits index ranges over a fixed number of threads. One pool per engine; the calling thread takes part.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    /// <summary>Creates a pool of <paramref name="threadCount"/> threads (the caller counts as one).</summary>
    public WorkerPool(int threadCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threadCount, 1);
        ThreadCount = threadCount;
    }

    /// <summary>Number of threads that share each job, the caller included.</summary>
    public int ThreadCount { get; }

    /// <summary>Runs <paramref name="job"/> over [0, <paramref name="itemCount"/>) split into contiguous slices.</summary>
    public void Run<TJob>(int itemCount, TJob job) where TJob : IRangeJob
    {
        if (itemCount <= 0) return;
        int parts = Math.Min(ThreadCount, itemCount);
        if (parts == 1)
        {
            job.Execute(0, itemCount);
            return;
        }
        Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = parts }, p =>
        {
            int start = (int)((long)itemCount * p / parts);
            int end = (int)((long)itemCount * (p + 1) / parts);
            job.Execute(start, end);
        });
    }

    /// <inheritdoc />
    public void Dispose()
    {
    }
}
