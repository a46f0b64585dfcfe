using Inference.Parallelism;

namespace Inference.Tests.Parallelism;

/// <summary>The CPU ranks' collectives against a plain float64 reference, every rank on its own thread.</summary>
public class SharedMemoryRankGroupTests
{
    /// <summary>Runs <paramref name="body"/> on <paramref name="size"/> threads, one per rank, and rethrows the first failure.</summary>
    private static void OnRanks(int size, Action<int> body)
    {
        var failures = new Exception?[size];
        var threads = new Thread[size];
        for (int r = 0; r < size; r++)
        {
            int rank = r;
            threads[r] = new Thread(() =>
            {
                try { body(rank); }
                catch (Exception e) { failures[rank] = e; }
            });
            threads[r].Start();
        }
        foreach (var t in threads) t.Join();
        foreach (var f in failures) if (f is not null) throw new AggregateException(f);
    }

    private static float[][] RandomInputs(int size, int length, int seed)
    {
        var random = new Random(seed);
        var inputs = new float[size][];
        for (int r = 0; r < size; r++)
        {
            inputs[r] = new float[length];
            for (int i = 0; i < length; i++) inputs[r][i] = (float)(random.NextDouble() * 2 - 1) * (1 + r);
        }
        return inputs;
    }

    [Test]
    public void AllReduce_SumsInRankOrder_AndGivesEveryRankTheSameBits(
        [Values(1, 2, 3, 4)] int size, [Values(1, 7, 64, 1001)] int length)
    {
        var inputs = RandomInputs(size, length, 1000 * size + length);
        var data = inputs.Select(a => (float[])a.Clone()).ToArray();
        using var group = new SharedMemoryRankGroup(size);
        for (int round = 0; round < 3; round++)
        {
            for (int r = 0; r < size; r++) inputs[r].CopyTo(data[r], 0);
            OnRanks(size, r => group.AllReduce(r, data[r]));
            for (int i = 0; i < length; i++)
            {
                // The float sum in rank order is what every rank must hold, bit for bit.
                float expected = inputs[0][i];
                double exact = inputs[0][i];
                for (int q = 1; q < size; q++) { expected += inputs[q][i]; exact += inputs[q][i]; }
                for (int r = 0; r < size; r++)
                    Assert.That(data[r][i], Is.EqualTo(expected), $"rank {r}, element {i}");
                Assert.That(data[0][i], Is.EqualTo(exact).Within(1e-5 * (1 + Math.Abs(exact))));
            }
        }
    }

    [Test]
    public void AllGather_ConcatenatesInRankOrder([Values(1, 2, 4)] int size, [Values(1, 33)] int length)
    {
        var inputs = RandomInputs(size, length, 7 + size);
        var all = new float[size][];
        for (int r = 0; r < size; r++) all[r] = Enumerable.Repeat(float.NaN, size * length).ToArray();
        using var group = new SharedMemoryRankGroup(size);
        OnRanks(size, r => group.AllGather(r, inputs[r], all[r]));
        for (int r = 0; r < size; r++)
            Assert.That(all[r], Is.EqualTo(inputs.SelectMany(a => a).ToArray()));
    }

    [Test]
    public void ReduceScatter_GivesEachRankItsPartOfTheSum([Values(1, 2, 3, 4)] int size, [Values(1, 16)] int part)
    {
        var inputs = RandomInputs(size, size * part, 99 + size);
        var mine = new float[size][];
        for (int r = 0; r < size; r++) mine[r] = Enumerable.Repeat(float.NaN, part).ToArray();
        using var group = new SharedMemoryRankGroup(size);
        OnRanks(size, r => group.ReduceScatter(r, inputs[r], mine[r]));
        for (int r = 0; r < size; r++)
        {
            for (int i = 0; i < part; i++)
            {
                float expected = inputs[0][r * part + i];
                for (int q = 1; q < size; q++) expected += inputs[q][r * part + i];
                Assert.That(mine[r][i], Is.EqualTo(expected));
            }
        }
    }

    [Test]
    public void GatherColumns_PutsEachRanksColumnsSideBySideOnTheRoot(
        [Values(1, 2, 3, 4)] int size, [Values(0, 1, 3)] int rows, [Values(0, 2)] int root)
    {
        if (root >= size) root = size - 1;
        // Ragged widths (a vocabulary of 512 over 3 ranks is 171, 171, 170).
        var widths = Enumerable.Range(0, size).Select(r => RankGroup.Part(13, size, r).Length).ToArray();
        int total = widths.Sum();
        var random = new Random(size * 31 + rows);
        var mine = widths.Select(w => Enumerable.Range(0, rows * w).Select(_ => random.NextSingle() - 0.5f).ToArray()).ToArray();
        var all = Enumerable.Range(0, size).Select(r => r == root ? Enumerable.Repeat(float.NaN, rows * total).ToArray() : []).ToArray();
        using var group = new SharedMemoryRankGroup(size);
        OnRanks(size, r => group.GatherColumns(r, root, mine[r], rows, all[r]));
        // Plain reference: row i of the whole = row i of rank 0's part, then rank 1's, ...
        var expected = new float[rows * total];
        for (int i = 0; i < rows; i++)
        {
            int column = 0;
            for (int q = 0; q < size; q++)
            {
                for (int j = 0; j < widths[q]; j++) expected[i * total + column + j] = mine[q][i * widths[q] + j];
                column += widths[q];
            }
        }
        Assert.That(all[root], Is.EqualTo(expected));
        Assert.That(group.BytesMoved, Is.EqualTo(4L * rows * (total - widths[root])));
    }

    [Test]
    public void GatherColumns_WrongRootLength_ThrowsOnEveryRank_WithoutHanging()
    {
        using var group = new SharedMemoryRankGroup(3);
        var errors = new Exception?[3];
        OnRanks(3, r =>
        {
            try { group.GatherColumns(r, 0, new float[4], 2, r == 0 ? new float[11] : []); }
            catch (ArgumentException e) { errors[r] = e; }
        });
        Assert.That(errors, Has.All.InstanceOf<ArgumentException>());
    }

    [Test]
    public void SendAndReceive_PassValuesAroundARing([Values(2, 3, 4)] int size)
    {
        var inputs = RandomInputs(size, 50, size);
        var received = new float[size][];
        using var group = new SharedMemoryRankGroup(size);
        OnRanks(size, r =>
        {
            received[r] = new float[50];
            // Even ranks send first and odd ranks receive first, so a ring of any size makes progress.
            int next = (r + 1) % size, previous = (r + size - 1) % size;
            if (r % 2 == 0)
            {
                group.Send(r, next, inputs[r]);
                group.Receive(r, previous, received[r]);
            }
            else
            {
                group.Receive(r, previous, received[r]);
                group.Send(r, next, inputs[r]);
            }
        });
        for (int r = 0; r < size; r++) Assert.That(received[r], Is.EqualTo(inputs[(r + size - 1) % size]));
    }

    [Test]
    public void SendReceive_ShiftsRaggedBlocksRoundARing_InAnyArrivalOrder([Values(2, 3, 4)] int size)
    {
        // Ring attention's pattern: every rank sends the block it holds to the next and receives the previous one's, all
        // at once; blocks of different lengths, passed on for size − 1 hops, so every rank sees every block once.
        var lengths = Enumerable.Range(0, size).Select(r => 3 + 5 * r).ToArray();
        var inputs = Enumerable.Range(0, size).Select(r => RandomInputs(1, lengths[r], 40 + r)[0]).ToArray();
        var seen = new List<float[]>[size];
        using var group = new SharedMemoryRankGroup(size);
        for (int round = 0; round < 2; round++)
        {
            OnRanks(size, r =>
            {
                seen[r] = [inputs[r]];
                var held = (float[])inputs[r].Clone();
                for (int hop = 1; hop < size; hop++)
                {
                    // Reference: after hop h, rank r holds rank (r − h)'s block.
                    int from = (r - hop + size) % size;
                    var incoming = Enumerable.Repeat(float.NaN, lengths[from]).ToArray();
                    group.SendReceive(r, (r + 1) % size, held, (r + size - 1) % size, incoming);
                    held = incoming;
                    seen[r].Add(incoming);
                }
            });
            for (int r = 0; r < size; r++)
                for (int hop = 0; hop < size; hop++)
                    Assert.That(seen[r][hop], Is.EqualTo(inputs[(r - hop + size) % size]), $"rank {r}, hop {hop}");
        }
        // Each block crossed size − 1 links, in both rounds.
        Assert.That(group.BytesMoved, Is.EqualTo(2L * 4 * (size - 1) * lengths.Sum()));
    }

    [Test]
    public void SendReceive_BetweenTwoRanks_SwapsTheirBuffers()
    {
        var inputs = RandomInputs(2, 17, 5);
        var received = new float[2][];
        using var group = new SharedMemoryRankGroup(2);
        OnRanks(2, r =>
        {
            received[r] = Enumerable.Repeat(float.NaN, 17).ToArray();
            group.SendReceive(r, 1 - r, inputs[r], 1 - r, received[r]);
        });
        Assert.That(received[0], Is.EqualTo(inputs[1]));
        Assert.That(received[1], Is.EqualTo(inputs[0]));
        Assert.Throws<ArgumentException>(() => group.SendReceive(0, 0, new float[1], 1, new float[1]));
    }

    [Test]
    public void AllToAll_GivesEachRankItsPartOfEveryRanksSend([Values(1, 2, 3, 4)] int size)
    {
        // Ragged parts, some empty: rank p sends (p + 2q) mod 4 elements to rank q.
        int Count(int p, int q) => (p + 2 * q) % 4;
        var random = new Random(size);
        var send = Enumerable.Range(0, size).Select(p => Enumerable.Range(0, Enumerable.Range(0, size).Sum(q => Count(p, q))).Select(_ => random.NextSingle() - 0.5f).ToArray()).ToArray();
        var receive = Enumerable.Range(0, size).Select(r => Enumerable.Repeat(float.NaN, Enumerable.Range(0, size).Sum(p => Count(p, r))).ToArray()).ToArray();
        using var group = new SharedMemoryRankGroup(size);
        OnRanks(size, r => group.AllToAll(r, send[r], Enumerable.Range(0, size).Select(q => Count(r, q)).ToArray(), receive[r],
            Enumerable.Range(0, size).Select(p => Count(p, r)).ToArray()));
        // Plain reference: rank r's receive is, for p = 0 … size − 1, the part of send[p] after its parts for ranks < r.
        long moved = 0;
        for (int r = 0; r < size; r++)
        {
            var expected = new List<float>();
            for (int p = 0; p < size; p++)
            {
                int offset = Enumerable.Range(0, r).Sum(q => Count(p, q));
                expected.AddRange(send[p].Skip(offset).Take(Count(p, r)));
                if (p != r) moved += 4L * Count(p, r);
            }
            Assert.That(receive[r], Is.EqualTo(expected.ToArray()), $"rank {r}");
        }
        Assert.That(group.BytesMoved, Is.EqualTo(moved));
    }

    [Test]
    public void AllToAll_MismatchedCounts_ThrowOnEveryRank_WithoutHanging()
    {
        using var group = new SharedMemoryRankGroup(2);
        var errors = new Exception?[2];
        OnRanks(2, r =>
        {
            // Rank 0 sends 2 elements to rank 1, which expects 3.
            try { group.AllToAll(r, new float[r == 0 ? 3 : 4], r == 0 ? [1, 2] : [2, 2], new float[r == 0 ? 3 : 4], r == 0 ? [1, 2] : [3, 1]); }
            catch (ArgumentException e) { errors[r] = e; }
        });
        Assert.That(errors, Has.All.InstanceOf<ArgumentException>());
    }

    [Test]
    public void AllGatherInPlace_CopiesEveryRanksRaggedPart([Values(1, 2, 3, 4)] int size)
    {
        const int length = 23;
        var data = Enumerable.Range(0, size).Select(_ => Enumerable.Repeat(float.NaN, length).ToArray()).ToArray();
        var expected = RandomInputs(1, length, 3)[0];
        for (int r = 0; r < size; r++)
        {
            var (start, n) = RankGroup.Part(length, size, r);
            Array.Copy(expected, start, data[r], start, n);
        }
        using var group = new SharedMemoryRankGroup(size);
        OnRanks(size, r =>
        {
            var (start, n) = RankGroup.Part(length, size, r);
            group.AllGatherInPlace(r, data[r], start, n);
        });
        for (int r = 0; r < size; r++) Assert.That(data[r], Is.EqualTo(expected), $"rank {r}");
        Assert.That(group.BytesMoved, Is.EqualTo(4L * (size - 1) * length));
    }

    [Test]
    public void MismatchedLengths_ThrowOnEveryRank_WithoutHanging()
    {
        using var group = new SharedMemoryRankGroup(2);
        var errors = new Exception?[2];
        OnRanks(2, r =>
        {
            try { group.AllReduce(r, new float[r == 0 ? 8 : 9]); }
            catch (ArgumentException e) { errors[r] = e; }
        });
        Assert.That(errors, Has.All.InstanceOf<ArgumentException>());
    }

    [Test]
    public void Part_CoversTheWholeRangeOnce([Values(1, 2, 3, 4, 7)] int size, [Values(0, 1, 5, 64, 1001)] int length)
    {
        int next = 0;
        for (int r = 0; r < size; r++)
        {
            var (start, n) = RankGroup.Part(length, size, r);
            Assert.That(start, Is.EqualTo(next));
            next += n;
        }
        Assert.That(next, Is.EqualTo(length));
    }
}
