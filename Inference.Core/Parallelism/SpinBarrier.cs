namespace Inference.Parallelism;

/// <summary>
/// A sense-reversing barrier for a fixed number of threads that spins briefly and then yields: collectives of one forward
/// pass follow each other within microseconds, where <see cref="Barrier"/>'s kernel waits cost more than the work.
/// </summary>
internal sealed class SpinBarrier(int participants)
{
    private readonly int _participants = participants;
    private int _remaining = participants;
    private volatile int _generation;

    /// <summary>Waits until all participants have called; the last one to arrive releases the others.</summary>
    public void SignalAndWait()
    {
        int generation = _generation;
        if (Interlocked.Decrement(ref _remaining) == 0)
        {
            _remaining = _participants;
            _generation = generation + 1;
            return;
        }
        var spin = new SpinWait();
        while (_generation == generation) spin.SpinOnce(sleep1Threshold: -1);
    }
}
