using System.Runtime.CompilerServices;
using Inference.Backends.Cpu;

namespace Inference.Tests.Backends.Cpu;

public class WorkerPoolTests
{
    private readonly struct CountJob(int[] hits) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            for (int i = start; i < end; i++) Interlocked.Increment(ref hits[i]);
        }
    }

    private readonly struct ThreadJob(int[] threadIds) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            for (int i = start; i < end; i++) threadIds[i] = Environment.CurrentManagedThreadId;
        }
    }

    private readonly struct FailingJob(int failAt) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            if (start <= failAt && failAt < end) throw new InvalidOperationException($"item {failAt}");
        }
    }

    /// <summary>Runs <paramref name="body"/> on another thread and fails (instead of hanging the run) if it does not
    /// finish in time, e.g. after a lost wake-up.</summary>
    private static void Within(Action body, int seconds = 20)
    {
        var task = Task.Factory.StartNew(body, TaskCreationOptions.LongRunning);
        Assert.That(task.Wait(TimeSpan.FromSeconds(seconds)), Is.True, "the pool did not finish in time");
    }

    [TestCase(1, 10)]
    [TestCase(2, 1)]
    [TestCase(2, 2)]
    [TestCase(3, 2)]
    [TestCase(3, 1001)]
    [TestCase(4, 17)]
    public void Every_item_runs_exactly_once(int threads, int items)
    {
        using var pool = new WorkerPool(threads);
        var hits = new int[items];
        pool.Run(items, new CountJob(hits));
        Assert.That(hits, Is.All.EqualTo(1));
    }

    [Test]
    public void Small_work_stays_on_the_calling_thread_and_still_covers_every_item()
    {
        using var pool = new WorkerPool(3);
        var ids = new int[1000];
        var hits = new int[1000];
        int caller = 0;
        Within(() =>
        {
            caller = Environment.CurrentManagedThreadId;
            for (int call = 0; call < 200; call++) pool.Run(ids.Length, new ThreadJob(ids), WorkerPool.SerialBytes - 1);
            pool.Run(hits.Length, new CountJob(hits), WorkerPool.SerialBytes - 1);
            pool.Run(hits.Length, new CountJob(hits), WorkerPool.SerialBytes);
        });
        Assert.That(ids, Is.All.EqualTo(caller));
        Assert.That(hits, Is.All.EqualTo(2));
    }

    [Test]
    public void Many_consecutive_calls_each_cover_the_range()
    {
        using var pool = new WorkerPool(3);
        var hits = new int[257];
        Within(() =>
        {
            for (int call = 0; call < 5000; call++) pool.Run(call % 257 + 1, new CountJob(hits));
        });
        // Item i is covered by every call whose item count exceeds i.
        for (int i = 0; i < hits.Length; i++)
        {
            int expected = 0;
            for (int call = 0; call < 5000; call++) if (call % 257 + 1 > i) expected++;
            Assert.That(hits[i], Is.EqualTo(expected), $"item {i}");
        }
    }

    [Test]
    public void Chunks_are_contiguous_and_only_pool_threads_run_them()
    {
        using var pool = new WorkerPool(2);
        var ids = new int[100];
        int caller = 0, worker = 0;
        Within(() =>
        {
            caller = Environment.CurrentManagedThreadId;
            // Give the worker time to fall asleep so the wake-up path runs too.
            Thread.Sleep(50);
            pool.Run(ids.Length, new ThreadJob(ids));
        });
        int chunk = ids.Length / (2 * WorkerPool.ChunksPerThread);
        for (int start = 0; start < ids.Length; start += chunk)
        {
            var run = ids[start..Math.Min(ids.Length, start + chunk)];
            Assert.That(run, Is.All.EqualTo(run[0]), $"chunk at {start}");
            if (run[0] != caller) worker = worker == 0 ? run[0] : worker;
            Assert.That(run[0], Is.EqualTo(caller).Or.EqualTo(worker), $"chunk at {start} ran on a third thread");
        }
    }

    /// <summary>
    /// Stalls the first chunk a non-caller thread takes until every other item is done (ten seconds at most, so that a pool
    /// that hands out fixed shares fails instead of hanging).
    /// </summary>
    private readonly struct StallingJob(int[] threadIds, int caller, StrongBox<int> stalled, StrongBox<int> done) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int id = Environment.CurrentManagedThreadId;
            if (id != caller && Interlocked.Exchange(ref stalled.Value, 1) == 0)
            {
                var box = done;
                int others = threadIds.Length - (end - start);
                SpinWait.SpinUntil(() => Volatile.Read(ref box.Value) >= others, TimeSpan.FromSeconds(10));
            }
            for (int i = start; i < end; i++) threadIds[i] = id;
            Interlocked.Add(ref done.Value, end - start);
        }
    }

    [Test]
    public void A_stalled_worker_holds_up_only_its_own_chunk()
    {
        using var pool = new WorkerPool(2);
        var ids = new int[400];
        int caller = 0;
        Within(() =>
        {
            caller = Environment.CurrentManagedThreadId;
            pool.Run(ids.Length, new StallingJob(ids, caller, new StrongBox<int>(), new StrongBox<int>()));
        });
        int chunk = ids.Length / (2 * WorkerPool.ChunksPerThread);
        // With fixed halves the caller would have done 200 items; here it takes every chunk but the stalled one.
        Assert.That(ids.Count(id => id == caller), Is.EqualTo(ids.Length - chunk).Or.EqualTo(ids.Length));
    }

    [Test]
    public void Workers_wake_up_after_blocking_between_calls()
    {
        using var pool = new WorkerPool(3);
        var hits = new int[90];
        Within(() =>
        {
            for (int call = 0; call < 20; call++)
            {
                // Alternate gaps shorter and longer than the spin window so both the spinning and the blocked hand-off run.
                if (call % 2 == 1) Thread.Sleep(2);
                pool.Run(hits.Length, new CountJob(hits));
            }
        });
        Assert.That(hits, Is.All.EqualTo(20));
    }

    [Test]
    public void Nothing_to_do_returns_at_once()
    {
        using var pool = new WorkerPool(2);
        var hits = new int[1];
        pool.Run(0, new CountJob(hits));
        pool.Run(-3, new CountJob(hits));
        Assert.That(hits[0], Is.EqualTo(0));
    }

    [TestCase(0)]
    [TestCase(99)]
    public void A_failing_slice_rethrows_on_the_caller_and_the_pool_stays_usable(int failAt)
    {
        using var pool = new WorkerPool(2);
        var e = Assert.Throws<InvalidOperationException>(() => pool.Run(100, new FailingJob(failAt)));
        Assert.That(e!.Message, Is.EqualTo($"item {failAt}"));
        var hits = new int[100];
        pool.Run(100, new CountJob(hits));
        Assert.That(hits, Is.All.EqualTo(1));
    }

    [Test]
    public void Dispose_stops_the_workers_and_later_runs_throw()
    {
        var pool = new WorkerPool(4);
        var hits = new int[8];
        pool.Run(8, new CountJob(hits));
        Assert.That(hits, Is.All.EqualTo(1));
        // Dispose joins the workers, so it returns only once every worker thread has left its loop.
        var dispose = Task.Run(pool.Dispose);
        Assert.That(dispose.Wait(TimeSpan.FromSeconds(30)), Is.True, "workers did not stop");
        pool.Dispose(); // idempotent
        Assert.Throws<ObjectDisposedException>(() => pool.Run(8, new CountJob(new int[8])));
    }

    [Test]
    public void Rejects_fewer_than_one_thread()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new WorkerPool(0));
    }
}
