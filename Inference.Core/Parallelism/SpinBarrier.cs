namespace Inference.Parallelism;

/// <summary>
/// A sense-reversing barrier for a fixed number of threads that spins briefly and then yields: collectives of one forward
/// pass follow each other within microseconds, where <see cref="Barrier"/>'s kernel waits cost more than the work.
/// </summary>
/// <remarks>
/// <see cref="Abort"/> makes every waiter (and every later arrival) throw <see cref="RankAbortedException"/> instead of
/// waiting for a participant that will not come; <see cref="Reset"/> re-arms it once no thread is inside.
/// </remarks>
internal sealed class SpinBarrier(int participants)
{
    private readonly int _participants = participants;
    private int _remaining = participants;
    private volatile int _generation;
    private volatile bool _aborted;

    /// <summary>Waits until all participants have called; the last one to arrive releases the others.</summary>
    /// <exception cref="RankAbortedException">The barrier was aborted.</exception>
    public void SignalAndWait()
    {
        if (_aborted) throw new RankAbortedException();
        int generation = _generation;
        if (Interlocked.Decrement(ref _remaining) == 0)
        {
            _remaining = _participants;
            _generation = generation + 1;
            return;
        }
        var spin = new SpinWait();
        while (_generation == generation)
        {
            if (_aborted) throw new RankAbortedException();
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>Releases every waiter with <see cref="RankAbortedException"/>, and every later caller until <see cref="Reset"/>.</summary>
    public void Abort() => _aborted = true;

    /// <summary>Re-arms an aborted barrier; only while no thread is inside <see cref="SignalAndWait"/>.</summary>
    public void Reset()
    {
        Volatile.Write(ref _remaining, _participants);
        _generation++;
        _aborted = false;
    }
}
