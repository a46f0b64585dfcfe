namespace Inference.Engine;

/// <summary>
/// The engine already holds <see cref="EngineOptions.MaxWaitingRequests"/> requests that have not started: a new one is
/// refused instead of queued without bound. Retry later (the OpenAI-compatible server answers 429 with
/// <c>Retry-After</c>).
/// </summary>
public sealed class RequestQueueFullException : InvalidOperationException
{
    /// <summary>Creates the exception for a queue of <paramref name="maxWaitingRequests"/>.</summary>
    public RequestQueueFullException(int maxWaitingRequests)
        : base($"the engine's waiting queue is full ({maxWaitingRequests} requests wait to start, EngineOptions.MaxWaitingRequests); retry later")
    {
        MaxWaitingRequests = maxWaitingRequests;
    }

    /// <summary>The limit that was reached.</summary>
    public int MaxWaitingRequests { get; }
}

/// <summary>
/// Counts requests submitted but not yet started (first scheduled, or ended before that) against
/// <see cref="EngineOptions.MaxWaitingRequests"/>. Thread-safe: callers enter, the engine thread leaves.
/// </summary>
internal sealed class WaitingQueue(int capacity)
{
    private int _count;

    public int Capacity => capacity;

    /// <summary>Requests counted now.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Counts <paramref name="requests"/> more, or throws when that would pass the capacity.</summary>
    /// <exception cref="RequestQueueFullException">The queue is full.</exception>
    public void Enter(int requests)
    {
        if (Interlocked.Add(ref _count, requests) <= capacity) return;
        Interlocked.Add(ref _count, -requests);
        throw new RequestQueueFullException(capacity);
    }

    public void Leave() => Interlocked.Decrement(ref _count);
}
