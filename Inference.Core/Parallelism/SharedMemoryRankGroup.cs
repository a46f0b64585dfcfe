using System.Diagnostics;
using System.Numerics.Tensors;

namespace Inference.Parallelism;

/// <summary>
/// Ranks that share one address space (CPU ranks: each a thread with its own worker group): collectives read the other
/// ranks' buffers directly, so no byte is copied more often than the result needs.
/// </summary>
/// <remarks>
/// <code>
///  AllReduce (each rank publishes its buffer; parts split as RankGroup.Part):
///    barrier → rank r sums part r of every buffer, in rank order, into part r of its own buffer
///    barrier → rank r copies part q (q ≠ r) from rank q's buffer
///    barrier → buffers may be reused
///  bytes moved per rank: reads (Size − 1)/Size · n + (Size − 1)/Size · n floats from the other ranks
/// </code>
/// Each collective holds its callers' spans pinned only while it runs. Not reentrant: one collective at a time per group.
/// </remarks>
public sealed unsafe class SharedMemoryRankGroup : RankGroup
{
    private readonly float*[] _buffers;
    private readonly int[] _lengths;
    private readonly SpinBarrier _barrier;
    private readonly Mailbox[] _mailboxes;   // [source * Size + destination]
    private readonly float[][] _scratch;     // [rank] one row of sums each
    private readonly long[] _ticks;          // [rank * 8] Stopwatch ticks inside collectives (a cache line apart)
    private int _rootLength;
    private readonly int[] _sendCounts;        // [rank · Size + q] AllToAll's counts, published with the buffer
    private readonly int[] _receiveCounts;
    private readonly int[] _receiveLengths;    // [rank] AllToAll's receive span
    private readonly int[] _starts;            // [rank] AllGatherInPlace's part
    private readonly int[] _partLengths;

    /// <summary>Creates a group of <paramref name="size"/> ranks.</summary>
    public SharedMemoryRankGroup(int size) : base(size)
    {
        _buffers = new float*[size];
        _sendCounts = new int[size * size];
        _receiveCounts = new int[size * size];
        _starts = new int[size];
        _receiveLengths = new int[size];
        _partLengths = new int[size];
        _lengths = new int[size];
        _barrier = new SpinBarrier(size);
        _ticks = new long[size * 8];
        _scratch = new float[size][];
        for (int r = 0; r < size; r++) _scratch[r] = [];
        _mailboxes = new Mailbox[size * size];
        for (int i = 0; i < _mailboxes.Length; i++) _mailboxes[i] = new Mailbox();
    }

    /// <summary>Bytes read from other ranks' buffers by all collectives so far (all ranks together).</summary>
    public long BytesMoved => Interlocked.Read(ref _bytesMoved);
    private long _bytesMoved;

    /// <summary>Time rank <paramref name="rank"/> spent inside collectives so far, waiting for the others included.</summary>
    public TimeSpan CommunicationTime(int rank)
    {
        CheckRank(rank);
        return Stopwatch.GetElapsedTime(0, Volatile.Read(ref _ticks[rank * 8]));
    }

    private void AddTime(int rank, long start) => _ticks[rank * 8] += Stopwatch.GetTimestamp() - start;

    /// <inheritdoc />
    public override void AllReduce(int rank, Span<float> data)
    {
        CheckRank(rank);
        if (Size == 1) return;
        long started = Stopwatch.GetTimestamp();
        fixed (float* p = data)
        {
            Publish(rank, p, data.Length);
            CheckLengths(data.Length);
            var (start, length) = Part(data.Length, Size, rank);
            if (length > 0)
            {
                // NOTE: rank order for every part, own buffer included, so all ranks compute the same bits; the sum
                // goes through a scratch row because this rank's own values are one of its terms.
                var sum = Scratch(rank, length);
                SumInRankOrder(start, sum);
                sum.CopyTo(new Span<float>(p + start, length));
            }
            _barrier.SignalAndWait();
            for (int q = 0; q < Size; q++)
            {
                if (q == rank) continue;
                var (s, n) = Part(data.Length, Size, q);
                new ReadOnlySpan<float>(_buffers[q] + s, n).CopyTo(data.Slice(s, n));
            }
            Interlocked.Add(ref _bytesMoved, 4L * (2L * (data.Length - length)));
            _barrier.SignalAndWait();
        }
        AddTime(rank, started);
    }

    /// <inheritdoc />
    public override void AllGather(int rank, ReadOnlySpan<float> mine, Span<float> all)
    {
        CheckRank(rank);
        if (all.Length != Size * mine.Length) throw new ArgumentException($"all has {all.Length} elements, expected {Size} × {mine.Length}", nameof(all));
        long start = Stopwatch.GetTimestamp();
        fixed (float* p = mine)
        {
            Publish(rank, p, mine.Length);
            CheckLengths(mine.Length);
            for (int q = 0; q < Size; q++) new ReadOnlySpan<float>(_buffers[q], mine.Length).CopyTo(all.Slice(q * mine.Length, mine.Length));
            Interlocked.Add(ref _bytesMoved, 4L * (Size - 1) * mine.Length);
            _barrier.SignalAndWait();
        }
        AddTime(rank, start);
    }

    /// <inheritdoc />
    public override void ReduceScatter(int rank, ReadOnlySpan<float> full, Span<float> mine)
    {
        CheckRank(rank);
        if (full.Length != Size * mine.Length) throw new ArgumentException($"full has {full.Length} elements, expected {Size} × {mine.Length}", nameof(full));
        long start = Stopwatch.GetTimestamp();
        fixed (float* p = full)
        {
            Publish(rank, p, full.Length);
            CheckLengths(full.Length);
            SumInRankOrder(rank * mine.Length, mine);
            Interlocked.Add(ref _bytesMoved, 4L * (Size - 1) * mine.Length);
            _barrier.SignalAndWait();
        }
        AddTime(rank, start);
    }

    /// <inheritdoc />
    public override void GatherColumns(int rank, int root, ReadOnlySpan<float> mine, int rows, Span<float> all)
    {
        CheckRank(rank);
        CheckRank(root, nameof(root));
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        long start = Stopwatch.GetTimestamp();
        fixed (float* p = mine)
        {
            if (rank == root) _rootLength = all.Length;
            Publish(rank, p, mine.Length);
            // NOTE: every rank checks every rank's length after the barrier, so all of them throw or none does.
            int total = 0;
            for (int q = 0; q < Size; q++)
            {
                if (rows == 0 ? _lengths[q] != 0 : _lengths[q] % rows != 0)
                    throw new ArgumentException($"rank {q} passed {_lengths[q]} elements, not a multiple of {rows} rows");
                total += rows == 0 ? 0 : _lengths[q] / rows;
            }
            if (_rootLength != rows * total) throw new ArgumentException($"the root's all has {_rootLength} elements, expected {rows} × {total}", nameof(all));
            if (rank == root)
            {
                int column = 0;
                for (int q = 0; q < Size; q++)
                {
                    int width = rows == 0 ? 0 : _lengths[q] / rows;
                    for (int row = 0; row < rows; row++)
                        new ReadOnlySpan<float>(_buffers[q] + (long)row * width, width).CopyTo(all.Slice(row * total + column, width));
                    column += width;
                    if (q != rank) Interlocked.Add(ref _bytesMoved, 4L * _lengths[q]);
                }
            }
            _barrier.SignalAndWait();
        }
        AddTime(rank, start);
    }

    /// <inheritdoc />
    public override void Send(int rank, int destination, ReadOnlySpan<float> data)
    {
        CheckRank(rank);
        CheckRank(destination, nameof(destination));
        if (destination == rank) throw new ArgumentException("a rank does not send to itself", nameof(destination));
        long start = Stopwatch.GetTimestamp();
        fixed (float* p = data) _mailboxes[rank * Size + destination].Put(p, data.Length);
        Interlocked.Add(ref _bytesMoved, 4L * data.Length);
        AddTime(rank, start);
    }

    /// <inheritdoc />
    public override void Receive(int rank, int source, Span<float> data)
    {
        CheckRank(rank);
        CheckRank(source, nameof(source));
        if (source == rank) throw new ArgumentException("a rank does not receive from itself", nameof(source));
        long start = Stopwatch.GetTimestamp();
        _mailboxes[source * Size + rank].Take(data);
        AddTime(rank, start);
    }

    /// <inheritdoc />
    /// <remarks>Each rank copies its parts straight out of the senders' buffers (its own part too, not counted as moved).</remarks>
    public override void AllToAll(int rank, ReadOnlySpan<float> send, ReadOnlySpan<int> sendCounts, Span<float> receive, ReadOnlySpan<int> receiveCounts)
    {
        CheckRank(rank);
        if (sendCounts.Length != Size || receiveCounts.Length != Size) throw new ArgumentException($"AllToAll needs {Size} send and receive counts");
        long start = Stopwatch.GetTimestamp();
        fixed (float* p = send)
        {
            sendCounts.CopyTo(_sendCounts.AsSpan(rank * Size, Size));
            receiveCounts.CopyTo(_receiveCounts.AsSpan(rank * Size, Size));
            _receiveLengths[rank] = receive.Length;
            Publish(rank, p, send.Length);
            // NOTE: every rank checks every rank's counts after the barrier, so all of them throw or none does.
            for (int q = 0; q < Size; q++)
            {
                long sent = 0, received = 0;
                for (int r = 0; r < Size; r++)
                {
                    int count = _sendCounts[q * Size + r], expected = _receiveCounts[r * Size + q];
                    if (count < 0 || count != expected)
                        throw new ArgumentException($"rank {q} sends {count} elements to rank {r}, which expects {expected}");
                    sent += count;
                    received += _receiveCounts[q * Size + r];
                }
                if (sent != _lengths[q] || received != _receiveLengths[q])
                    throw new ArgumentException($"rank {q}'s spans do not hold the sum of its counts");
            }
            int at = 0;
            for (int q = 0; q < Size; q++)
            {
                int offset = 0;
                for (int r = 0; r < rank; r++) offset += _sendCounts[q * Size + r];
                int count = _sendCounts[q * Size + rank];
                new ReadOnlySpan<float>(_buffers[q] + offset, count).CopyTo(receive.Slice(at, count));
                at += count;
                if (q != rank) Interlocked.Add(ref _bytesMoved, 4L * count);
            }
            _barrier.SignalAndWait();
        }
        AddTime(rank, start);
    }

    /// <inheritdoc />
    public override void AllGatherInPlace(int rank, Span<float> data, int start, int length)
    {
        CheckRank(rank);
        long started = Stopwatch.GetTimestamp();
        fixed (float* p = data)
        {
            _starts[rank] = start;
            _partLengths[rank] = length;
            Publish(rank, p, data.Length);
            CheckLengths(data.Length);
            for (int q = 0; q < Size; q++)
                if (_starts[q] < 0 || _partLengths[q] < 0 || (long)_starts[q] + _partLengths[q] > data.Length)
                    throw new ArgumentException($"rank {q}'s part [{_starts[q]}, +{_partLengths[q]}) is outside {data.Length} elements");
            for (int q = 0; q < Size; q++)
            {
                if (q == rank) continue;
                new ReadOnlySpan<float>(_buffers[q] + _starts[q], _partLengths[q]).CopyTo(data.Slice(_starts[q], _partLengths[q]));
                Interlocked.Add(ref _bytesMoved, 4L * _partLengths[q]);
            }
            _barrier.SignalAndWait();
        }
        AddTime(rank, started);
    }

    /// <inheritdoc />
    /// <remarks>The send is posted before the receive and waited for after it, so the ranks of a ring never all wait for a receiver.</remarks>
    public override void SendReceive(int rank, int destination, ReadOnlySpan<float> send, int source, Span<float> receive)
    {
        CheckRank(rank);
        CheckRank(destination, nameof(destination));
        CheckRank(source, nameof(source));
        if (destination == rank) throw new ArgumentException("a rank does not send to itself", nameof(destination));
        if (source == rank) throw new ArgumentException("a rank does not receive from itself", nameof(source));
        long start = Stopwatch.GetTimestamp();
        var outgoing = _mailboxes[rank * Size + destination];
        fixed (float* p = send)
        {
            outgoing.Post(p, send.Length);
            try
            {
                _mailboxes[source * Size + rank].Take(receive);
            }
            finally
            {
                // NOTE: the receiver reads straight out of `send`, so it stays pinned until the copy is taken.
                outgoing.WaitTaken();
            }
        }
        Interlocked.Add(ref _bytesMoved, 4L * send.Length);
        AddTime(rank, start);
    }

    /// <inheritdoc />
    public override void Abort()
    {
        _barrier.Abort();
        foreach (var m in _mailboxes) m.Abort();
    }

    /// <inheritdoc />
    public override void Reset()
    {
        _barrier.Reset();
        foreach (var m in _mailboxes) m.Reset();
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        foreach (var m in _mailboxes) m.Dispose();
        base.Dispose();
    }

    /// <summary>destination = Σ over ranks, in rank order, of the published buffers' elements [start, start + destination.Length).</summary>
    private void SumInRankOrder(int start, Span<float> destination)
    {
        new ReadOnlySpan<float>(_buffers[0] + start, destination.Length).CopyTo(destination);
        for (int q = 1; q < Size; q++) TensorPrimitives.Add(destination, new ReadOnlySpan<float>(_buffers[q] + start, destination.Length), destination);
    }

    /// <summary>A rank's scratch row of at least <paramref name="length"/> floats, grown on demand.</summary>
    private Span<float> Scratch(int rank, int length)
    {
        if (_scratch[rank].Length < length) _scratch[rank] = new float[Math.Max(length, 2 * _scratch[rank].Length)];
        return _scratch[rank].AsSpan(0, length);
    }

    /// <summary>Publishes a rank's buffer and waits until every rank has published its own.</summary>
    private void Publish(int rank, float* buffer, int length)
    {
        _buffers[rank] = buffer;
        _lengths[rank] = length;
        _barrier.SignalAndWait();
    }

    private void CheckLengths(int length)
    {
        // NOTE: every rank sees the same lengths after the barrier, so all of them throw or none does (and none waits
        // at a barrier the others skipped).
        for (int q = 0; q < Size; q++)
            if (_lengths[q] != length) throw new ArgumentException($"rank {q} passed {_lengths[q]} elements where rank 0 passed {_lengths[0]}");
    }

    /// <summary>A rendezvous from one sender to one receiver: the receiver copies straight out of the sender's span.</summary>
    /// <remarks>An abort cancels both waits (<see cref="RankAbortedException"/>); a reset starts over with fresh semaphores.</remarks>
    private sealed class Mailbox : IDisposable
    {
        private SemaphoreSlim _full = new(0, 1);
        private SemaphoreSlim _taken = new(0, 1);
        private CancellationTokenSource _abort = new();
        private float* _data;
        private int _length;

        public void Abort() => _abort.Cancel();

        public void Reset()
        {
            if (!_abort.IsCancellationRequested) return;
            Dispose();
            _full = new SemaphoreSlim(0, 1);
            _taken = new SemaphoreSlim(0, 1);
            _abort = new CancellationTokenSource();
        }

        private void Wait(SemaphoreSlim semaphore)
        {
            try
            {
                semaphore.Wait(_abort.Token);
            }
            catch (OperationCanceledException)
            {
                throw new RankAbortedException();
            }
        }

        public void Put(float* data, int length)
        {
            Post(data, length);
            WaitTaken();
        }

        /// <summary>Offers <paramref name="data"/> to the receiver; it must stay valid until <see cref="WaitTaken"/> returns.</summary>
        public void Post(float* data, int length)
        {
            if (_abort.IsCancellationRequested) throw new RankAbortedException();
            _data = data;
            _length = length;
            _full.Release();
        }

        public void WaitTaken() => Wait(_taken);

        public void Take(Span<float> destination)
        {
            Wait(_full);
            try
            {
                if (_length != destination.Length) throw new ArgumentException($"received {_length} elements into a span of {destination.Length}", nameof(destination));
                new ReadOnlySpan<float>(_data, _length).CopyTo(destination);
            }
            finally
            {
                _taken.Release();
            }
        }

        public void Dispose()
        {
            _full.Dispose();
            _taken.Dispose();
            _abort.Dispose();
        }
    }
}
