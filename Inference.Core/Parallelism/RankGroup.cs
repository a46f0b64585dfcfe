namespace Inference.Parallelism;

/// <summary>
/// A group of <see cref="Size"/> ranks that compute one model together and exchange activations through collectives:
/// the seam between a parallel layout (tensor, pipeline, expert, context) and the hardware that moves the bytes.
/// </summary>
/// <remarks>
/// <para>Every collective is called by all ranks of the group, each from its own thread with its own rank, in the same
/// order; it returns on a rank once that rank's output is complete and its input may be reused. Point-to-point
/// <see cref="Send"/> and <see cref="Receive"/> pair one sender with one receiver.</para>
/// <para>Sums are taken in rank order (rank 0 first), so every rank receives the same bits whatever the timing.</para>
/// </remarks>
public abstract class RankGroup : IDisposable
{
    /// <summary>Creates a group of <paramref name="size"/> ranks.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is less than 1.</exception>
    protected RankGroup(int size)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        Size = size;
    }

    /// <summary>Number of ranks.</summary>
    public int Size { get; }

    /// <summary>Element-wise sum of every rank's <paramref name="data"/>, written back to every rank's <paramref name="data"/>.</summary>
    /// <exception cref="ArgumentException">The ranks passed spans of different lengths.</exception>
    public abstract void AllReduce(int rank, Span<float> data);

    /// <summary>
    /// Concatenates every rank's <paramref name="mine"/> in rank order into every rank's <paramref name="all"/>
    /// (<c>all.Length = Size × mine.Length</c>).
    /// </summary>
    public abstract void AllGather(int rank, ReadOnlySpan<float> mine, Span<float> all);

    /// <summary>
    /// Sums every rank's <paramref name="full"/> and gives rank r the r-th of <see cref="Size"/> equal parts of the sum in
    /// <paramref name="mine"/> (<c>full.Length = Size × mine.Length</c>).
    /// </summary>
    public abstract void ReduceScatter(int rank, ReadOnlySpan<float> full, Span<float> mine);

    /// <summary>
    /// Gathers every rank's columns of a <paramref name="rows"/>-row matrix into <paramref name="root"/>'s
    /// <paramref name="all"/>: rank q's <paramref name="mine"/> is <c>[rows, w_q]</c> (<c>w_q = mine.Length / rows</c>, widths
    /// may differ), the root's <paramref name="all"/> is <c>[rows, Σ w_q]</c> with rank q's columns after those of ranks
    /// before it. Other ranks pass an empty <paramref name="all"/>. (A vocabulary-parallel output head's logits.)
    /// </summary>
    /// <exception cref="ArgumentException">A length is not a multiple of <paramref name="rows"/>, or the root's <paramref name="all"/> is not the sum of the widths.</exception>
    public abstract void GatherColumns(int rank, int root, ReadOnlySpan<float> mine, int rows, Span<float> all);

    /// <summary>Sends <paramref name="data"/> from <paramref name="rank"/> to <paramref name="destination"/>; returns once it was received.</summary>
    public abstract void Send(int rank, int destination, ReadOnlySpan<float> data);

    /// <summary>Receives into <paramref name="data"/> what <paramref name="source"/> sends to <paramref name="rank"/> (the same length).</summary>
    public abstract void Receive(int rank, int source, Span<float> data);

    /// <summary>
    /// Sends <paramref name="send"/> to <paramref name="destination"/> and receives into <paramref name="receive"/> what
    /// <paramref name="source"/> sends to <paramref name="rank"/> at the same time; returns once both are done. Every rank
    /// of a ring (each sending to the next, receiving from the previous) calls it at once without deadlock, whatever the
    /// order in which the ranks arrive. (Ring attention passes K/V blocks around this way.)
    /// </summary>
    /// <exception cref="ArgumentException">A rank sends to or receives from itself, or <paramref name="receive"/> is not as long as what its source sends.</exception>
    public abstract void SendReceive(int rank, int destination, ReadOnlySpan<float> send, int source, Span<float> receive);

    /// <summary>
    /// Every rank sends a part of <paramref name="send"/> to every rank (itself included): <paramref name="send"/> holds
    /// <see cref="Size"/> consecutive parts, part q of <paramref name="sendCounts"/>[q] elements for rank q; rank r's
    /// <paramref name="receive"/> gets, in rank order, part r of every rank's <paramref name="send"/>
    /// (<paramref name="receiveCounts"/>[q] elements from rank q). (Expert parallelism: rows sent to the ranks of their
    /// experts, and the results sent back.)
    /// </summary>
    /// <exception cref="ArgumentException">A count array's length is not <see cref="Size"/>, a span is not the sum of its
    /// counts, or a rank's receive count does not match what the sender sends it (thrown on every rank).</exception>
    public abstract void AllToAll(int rank, ReadOnlySpan<float> send, ReadOnlySpan<int> sendCounts, Span<float> receive, ReadOnlySpan<int> receiveCounts);

    /// <summary>
    /// Ragged all-gather in place: every rank's part [<paramref name="start"/>, + <paramref name="length"/>) of its
    /// <paramref name="data"/> is copied to the same place of every other rank's <paramref name="data"/>. The ranks' parts
    /// must not overlap; <paramref name="data"/> has the same length on every rank.
    /// </summary>
    /// <exception cref="ArgumentException">The lengths differ or a part is outside <paramref name="data"/> (thrown on every rank).</exception>
    public abstract void AllGatherInPlace(int rank, Span<float> data, int start, int length);

    /// <summary>
    /// Abandons the group's collectives after a rank failed: every rank waiting in one, and every rank that enters one
    /// until <see cref="Reset"/>, throws <see cref="RankAbortedException"/> instead of waiting for the failed rank. Any
    /// thread may call it, any number of times.
    /// </summary>
    public abstract void Abort();

    /// <summary>Re-arms the group after <see cref="Abort"/>, once no rank is inside a collective.</summary>
    public abstract void Reset();

    /// <summary>Releases what the group holds.</summary>
    public virtual void Dispose() => GC.SuppressFinalize(this);

    /// <summary>Checks a rank argument.</summary>
    protected void CheckRank(int rank, string name = "rank")
    {
        if ((uint)rank >= (uint)Size) throw new ArgumentOutOfRangeException(name, rank, $"a rank of a group of {Size} is in [0, {Size})");
    }

    /// <summary>
    /// The part of <paramref name="length"/> elements that rank <paramref name="rank"/> reduces: contiguous, in rank order,
    /// the first <c>length mod Size</c> parts one element longer.
    /// </summary>
    public static (int Start, int Length) Part(int length, int size, int rank)
    {
        int q = length / size, r = length % size;
        int start = rank * q + Math.Min(rank, r);
        return (start, q + (rank < r ? 1 : 0));
    }
}
