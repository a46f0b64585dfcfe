using Inference.Engine;
using Inference.KvCache;
using Inference.Scheduling;

namespace Inference.Tests.Scheduling;

public class SchedulerTests
{
    private static Scheduler Create(int blocks, int blockSize = 4, SchedulerOptions? options = null, PrefixCachingMode caching = PrefixCachingMode.Enabled) =>
        new(options ?? new SchedulerOptions(), new KvCacheManager(blocks, new KvCacheOptions { BlockSize = blockSize, PoolBytes = 1, PrefixCaching = caching }));

    private static int[] Tokens(int start, int count) => Enumerable.Range(start, count).ToArray();

    /// <summary>Plays the model: checks the step and samples a token (position-dependent, never a stop token unless asked).</summary>
    private static void Execute(Scheduler s, SchedulerOutput output, Func<SchedulerRequest, int>? sampler = null)
    {
        Assert.That(output.TotalTokenCount, Is.LessThanOrEqualTo(s.Options.MaxNumBatchedTokens));
        int sum = 0;
        foreach (var c in output.Chunks)
        {
            sum += c.TokenCount;
            if (c.Request.Status == RequestStatus.Finished) continue; // cancelled after Schedule
            Assert.That(c.TokenCount, Is.GreaterThan(0));
            // Computed tokens already include this chunk, and the KV cache has a slot for each of them.
            Assert.That(c.Request.ComputedTokenCount, Is.EqualTo(c.StartPosition + c.TokenCount));
            Assert.That(s.KvCache.GetTokenCount(c.RequestId), Is.EqualTo(c.Request.ComputedTokenCount));
            Assert.That(c.SamplesToken, Is.EqualTo(c.Request.ComputedTokenCount == c.Request.TokenCount));
        }
        Assert.That(sum, Is.EqualTo(output.TotalTokenCount));
        Assert.That(s.RunningCount, Is.LessThanOrEqualTo(s.Options.MaxNumSeqs));
        var chunks = output.Chunks.ToArray();
        foreach (var c in chunks)
            if (c.SamplesToken) s.Update(c.Request, sampler?.Invoke(c.Request) ?? 1000 + c.Request.TokenCount);
    }

    [Test]
    public void PromptThenDecodeThenFinishAtMaxTokens()
    {
        var s = Create(16);
        var r = new SchedulerRequest(1, Tokens(0, 10), maxNewTokenCount: 3);
        s.AddRequest(r);
        var o = s.Schedule();
        Assert.That(o.Chunks.ToArray(), Is.EqualTo(new[] { new ScheduledChunk(r, 0, 10, true) }));
        Assert.That(s.Update(r, 7), Is.Null);
        o = s.Schedule();
        Assert.That(o.Chunks.ToArray(), Is.EqualTo(new[] { new ScheduledChunk(r, 10, 1, true) }));
        Assert.That(o.Chunks[0].TokenIds.ToArray(), Is.EqualTo(new[] { 7 }));
        Assert.That(s.Update(r, 8), Is.Null);
        s.Schedule();
        Assert.That(s.Update(r, 9), Is.EqualTo(FinishReason.Length));
        Assert.That(r.OutputTokenIds.ToArray(), Is.EqualTo(new[] { 7, 8, 9 }));
        Assert.That(r.Status, Is.EqualTo(RequestStatus.Finished));
        Assert.That(s.KvCache.UsedBlockCount, Is.EqualTo(0));
        Assert.That(s.HasUnfinishedRequests, Is.False);
        Assert.That(s.Schedule().IsEmpty, Is.True);
    }

    [Test]
    public void BatchUpdateAndStopSequence()
    {
        var s = Create(32, options: new SchedulerOptions { MaxNumBatchedTokens = 8 });
        var a = new SchedulerRequest(1, Tokens(0, 3), 10);
        var b = new SchedulerRequest(2, Tokens(10, 12), 10);
        s.AddRequest(a);
        s.AddRequest(b);
        var o = s.Schedule();
        Assert.That(o.Chunks.ToArray().Select(c => (c.RequestId, c.TokenCount, c.SamplesToken)), Is.EqualTo(new[] { (1L, 3, true), (2L, 5, false) }));
        s.Update(o, [40, 99]); // b's entry is ignored: its chunk does not sample
        Assert.That((a.OutputTokenCount, b.OutputTokenCount), Is.EqualTo((1, 0)));
        Assert.Throws<ArgumentException>(() => s.Update(o, [1]));
        Assert.Throws<InvalidOperationException>(() => s.Update(b, 5), "b has uncomputed prompt tokens");
        Assert.That(s.Finish(1, FinishReason.StopString), Is.True);
        Assert.That(a.FinishReason, Is.EqualTo(FinishReason.StopString));
        Assert.That(s.KvCache.Contains(1), Is.False);
        Assert.That(s.Find(1), Is.Null);
        Assert.That(s.Find(2), Is.SameAs(b));
    }

    [Test]
    public void StopTokenFinishes()
    {
        var s = Create(16);
        var r = new SchedulerRequest(1, Tokens(0, 3), 50) { StopTokenIds = [2] };
        s.AddRequest(r);
        s.Schedule();
        Assert.That(s.Update(r, 5), Is.Null);
        s.Schedule();
        Assert.That(s.Update(r, 2), Is.EqualTo(FinishReason.EndOfSequence));
        Assert.That(r.OutputTokenIds.ToArray(), Is.EqualTo(new[] { 5, 2 }));
        Assert.That(s.KvCache.UsedBlockCount, Is.EqualTo(0));
    }

    [Test]
    public void ChunkedPrefillDoesNotStallDecodes()
    {
        var s = Create(64, options: new SchedulerOptions { MaxNumBatchedTokens = 32 });
        var a = new SchedulerRequest(1, Tokens(0, 4), 50);
        s.AddRequest(a);
        Execute(s, s.Schedule());
        var b = new SchedulerRequest(2, Tokens(100, 100), 5);
        s.AddRequest(b);
        var bChunks = new List<(int, int, bool)>();
        for (int step = 0; step < 4; step++)
        {
            var o = s.Schedule();
            Assert.That(o.Chunks[0].Request, Is.SameAs(a), "the running decode comes first");
            Assert.That(o.Chunks[0].TokenCount, Is.EqualTo(1));
            Assert.That(o.Chunks[1].Request, Is.SameAs(b));
            bChunks.Add((o.Chunks[1].StartPosition, o.Chunks[1].TokenCount, o.Chunks[1].SamplesToken));
            Execute(s, o);
        }
        Assert.That(bChunks, Is.EqualTo(new[] { (0, 31, false), (31, 31, false), (62, 31, false), (93, 7, true) }));
        Assert.That(b.OutputTokenCount, Is.EqualTo(1));
    }

    [Test]
    public void WithoutChunkingAPromptWaitsUntilItFitsWhole()
    {
        var options = new SchedulerOptions { MaxNumBatchedTokens = 110, ChunkedPrefill = ChunkedPrefillMode.Disabled };
        var s = Create(64, options: options);
        Assert.Throws<ArgumentException>(() => s.AddRequest(new SchedulerRequest(9, Tokens(0, 100), 20)));
        var a = new SchedulerRequest(1, Tokens(0, 50), 10);
        var b = new SchedulerRequest(2, Tokens(100, 90), 10);
        s.AddRequest(a);
        s.AddRequest(b);
        var o = s.Schedule();
        Assert.That(o.Chunks.Length, Is.EqualTo(1), "b (90) does not fit next to a (50)");
        Execute(s, o);
        o = s.Schedule();
        Assert.That(o.Chunks.ToArray().Select(c => (c.RequestId, c.TokenCount)), Is.EqualTo(new[] { (1L, 1), (2L, 90) }));
    }

    [Test]
    public void LongPrefillThresholdLetsPromptsShareAStep()
    {
        var s = Create(64, options: new SchedulerOptions { MaxNumBatchedTokens = 64, LongPrefillTokenThreshold = 16 });
        s.AddRequest(new SchedulerRequest(1, Tokens(0, 40), 4));
        s.AddRequest(new SchedulerRequest(2, Tokens(100, 40), 4));
        var o = s.Schedule();
        Assert.That(o.Chunks.ToArray().Select(c => c.TokenCount), Is.EqualTo(new[] { 16, 16 }));
    }

    [Test]
    public void MaxNumSeqsLimitsRunningRequests()
    {
        var s = Create(64, options: new SchedulerOptions { MaxNumSeqs = 2 });
        for (int i = 1; i <= 5; i++) s.AddRequest(new SchedulerRequest(i, Tokens(10 * i, 5), 2));
        var o = s.Schedule();
        Assert.That(o.Chunks.ToArray().Select(c => c.RequestId), Is.EqualTo(new[] { 1L, 2L }));
        Assert.That((s.RunningCount, s.WaitingCount), Is.EqualTo((2, 3)));
    }

    [Test]
    public void PreemptsMostRecentlyAdmittedAndResumesItFirstWithPrefixHits()
    {
        // 6 blocks of 4. a and b start with 8 tokens each (4 blocks); growing needs more blocks than there are.
        var s = Create(6);
        var a = new SchedulerRequest(1, Tokens(0, 8), 12);
        var b = new SchedulerRequest(2, Tokens(100, 8), 12);
        var c = new SchedulerRequest(3, Tokens(200, 3), 2);
        s.AddRequest(a);
        s.AddRequest(b);
        Execute(s, s.Schedule());
        s.AddRequest(c); // arrives later: must wait behind the preempted b
        long preemptedAt = -1;
        for (int step = 0; step < 40 && s.HasUnfinishedRequests; step++)
        {
            var o = s.Schedule();
            if (o.PreemptedRequestIds.Length > 0 && preemptedAt < 0)
            {
                preemptedAt = step;
                Assert.That(o.PreemptedRequestIds.ToArray(), Is.EqualTo(new[] { 2L }));
                Assert.That(b.Status, Is.EqualTo(RequestStatus.Preempted));
                Assert.That(o.Chunks.ToArray().Select(x => x.RequestId), Does.Not.Contain(2L));
                Assert.That(s.KvCache.Contains(2), Is.False);
            }
            if (b.Status == RequestStatus.Preempted)
                Assert.That(c.Status, Is.EqualTo(RequestStatus.Waiting), "c arrived later and must not overtake the preempted b");
            Execute(s, o);
        }
        Assert.That(preemptedAt, Is.GreaterThanOrEqualTo(0), "memory pressure should have preempted b");
        Assert.That(a.PreemptionCount, Is.Zero);
        Assert.That(b.PreemptionCount, Is.GreaterThan(0));
        Assert.That(b.CachedTokenCount, Is.GreaterThan(0), "b's full prompt blocks were still cached when it resumed");
        Assert.That(a.FinishReason, Is.EqualTo(FinishReason.Length));
        Assert.That(b.FinishReason, Is.EqualTo(FinishReason.Length));
        Assert.That(c.FinishReason, Is.EqualTo(FinishReason.Length));
        Assert.That(b.OutputTokenCount, Is.EqualTo(12));
        Assert.That(s.KvCache.UsedBlockCount, Is.Zero);
    }

    [Test]
    public void PreemptedRequestIsAdmittedBeforeLaterArrivals()
    {
        var s = Create(6);
        var a = new SchedulerRequest(1, Tokens(0, 8), 12);
        var b = new SchedulerRequest(2, Tokens(100, 8), 12);
        s.AddRequest(a);
        s.AddRequest(b);
        Execute(s, s.Schedule());
        SchedulerOutput o;
        do
        {
            o = s.Schedule();
            Execute(s, o);
        } while (o.PreemptedRequestIds.Length == 0);
        var c = new SchedulerRequest(3, Tokens(200, 3), 2);
        s.AddRequest(c);
        while (b.Status != RequestStatus.Running)
        {
            Assert.That(c.Status, Is.EqualTo(RequestStatus.Waiting), "c must not overtake the preempted b");
            Execute(s, s.Schedule());
        }
    }

    [Test]
    public void ConsumerNotReadingIsSkippedAndPreemptedFirst()
    {
        var s = Create(6);
        var a = new SchedulerRequest(1, Tokens(0, 8), 12);
        var b = new SchedulerRequest(2, Tokens(100, 8), 12);
        s.AddRequest(a);
        s.AddRequest(b);
        Execute(s, s.Schedule());
        a.ConsumerState = ConsumerState.NotReading;
        var o = s.Schedule();
        Assert.That(o.Chunks.ToArray().Select(x => x.RequestId), Is.EqualTo(new[] { 2L }), "a is not decoded while unread");
        Execute(s, o);
        // b grows until blocks run out: a (not reading) is preempted, not b (most recently admitted).
        while (b.Status != RequestStatus.Finished)
        {
            o = s.Schedule();
            Assert.That(o.PreemptedRequestIds.ToArray(), Has.No.Member(2L));
            Execute(s, o);
        }
        Assert.That(a.PreemptionCount, Is.EqualTo(1));
        Assert.That(a.Status, Is.EqualTo(RequestStatus.Preempted));
        Assert.That(s.Schedule().IsEmpty, Is.True, "a stays parked while its consumer is not reading");
        a.ConsumerState = ConsumerState.Reading;
        while (a.Status != RequestStatus.Finished) Execute(s, s.Schedule());
        Assert.That(a.OutputTokenCount, Is.EqualTo(12));
    }

    [Test]
    public void ConsumerNotReading_YieldsItsSequenceSlotToAWaitingRequest()
    {
        // Blocks to spare: only the sequence limit keeps the third request out.
        var s = Create(64, options: new SchedulerOptions { MaxNumSeqs = 2 });
        var a = new SchedulerRequest(1, Tokens(0, 8), 12);
        var b = new SchedulerRequest(2, Tokens(100, 8), 12);
        s.AddRequest(a);
        s.AddRequest(b);
        Execute(s, s.Schedule());
        a.ConsumerState = ConsumerState.NotReading;
        b.ConsumerState = ConsumerState.NotReading;
        var c = new SchedulerRequest(3, Tokens(200, 8), 4);
        s.AddRequest(c);
        var o = s.Schedule();
        Assert.That(o.Chunks.ToArray().Select(x => x.RequestId), Is.EqualTo(new[] { 3L }), "the waiting request runs at once");
        Assert.That(o.PreemptedRequestIds.ToArray(), Has.Length.EqualTo(1), "one paused request gives up its slot");
        Assert.That(s.RunningCount, Is.EqualTo(2));
        Execute(s, o);
        while (c.Status != RequestStatus.Finished) Execute(s, s.Schedule());
        Assert.That(s.Schedule().IsEmpty, Is.True, "paused requests stay parked while nobody reads");
        a.ConsumerState = ConsumerState.Reading;
        b.ConsumerState = ConsumerState.Reading;
        while (a.Status != RequestStatus.Finished || b.Status != RequestStatus.Finished) Execute(s, s.Schedule());
        Assert.That(a.OutputTokenCount + b.OutputTokenCount, Is.EqualTo(24));
        Assert.That(s.KvCache.SequenceCount, Is.Zero);
    }

    [Test]
    public void CancellationFreesBlocksInTheSameStep()
    {
        var s = Create(16);
        var a = new SchedulerRequest(1, Tokens(0, 9), 5);
        var w = new SchedulerRequest(2, Tokens(50, 9), 5);
        s.AddRequest(a);
        var o = s.Schedule();
        s.AddRequest(w);
        Assert.That(s.KvCache.UsedBlockCount, Is.EqualTo(3));
        Assert.That(s.Cancel(1), Is.True);
        Assert.That(s.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(s.KvCache.Contains(1), Is.False);
        Assert.That(s.Update(o.Chunks[0].Request, 3), Is.EqualTo(FinishReason.Cancelled), "a token sampled for a cancelled request is dropped");
        Assert.That(a.OutputTokenCount, Is.Zero);
        Assert.That(s.Cancel(2), Is.True, "a waiting request can be cancelled too");
        Assert.That(s.Cancel(2), Is.False);
        Assert.That(s.Schedule().IsEmpty, Is.True);
        Assert.That(s.HasUnfinishedRequests, Is.False);
    }

    [Test]
    public void PriorityPolicyAdmitsLowerValuesFirst()
    {
        var s = Create(64, options: new SchedulerOptions { Policy = SchedulingPolicy.Priority, MaxNumSeqs = 1 });
        s.AddRequest(new SchedulerRequest(1, Tokens(0, 4), 1) { Priority = 5 });
        s.AddRequest(new SchedulerRequest(2, Tokens(10, 4), 1) { Priority = 0 });
        s.AddRequest(new SchedulerRequest(3, Tokens(20, 4), 1) { Priority = 5 });
        var order = new List<long>();
        while (s.HasUnfinishedRequests)
        {
            var o = s.Schedule();
            foreach (var c in o.Chunks) order.Add(c.RequestId);
            Execute(s, o);
        }
        Assert.That(order, Is.EqualTo(new[] { 2L, 1L, 3L }));
    }

    [Test]
    public void VictimScheduledEarlierInTheStepLeavesNoUnwrittenBlockInThePrefixCache()
    {
        // Priority policy, 7 blocks of 4, prefill chunks of 8. b (low priority) runs first; a (high priority) comes
        // later. In step 3 b's chunk 16..24 fills two blocks, then a needs a block, the pool is empty and b is the
        // victim: its dropped chunk was never computed, so those two blocks must not be hittable afterwards.
        var options = new SchedulerOptions { Policy = SchedulingPolicy.Priority, LongPrefillTokenThreshold = 8 };
        var s = Create(7, options: options);
        var b = new SchedulerRequest(2, Tokens(100, 24), 4) { Priority = 5 };
        var a = new SchedulerRequest(1, Tokens(0, 4), 4) { Priority = 0 };
        s.AddRequest(b);
        Execute(s, s.Schedule());
        s.AddRequest(a);
        Execute(s, s.Schedule());
        int written = b.ComputedTokenCount;
        Assert.That(written, Is.EqualTo(16));

        var o = s.Schedule();
        Assert.That(o.PreemptedRequestIds.ToArray(), Is.EqualTo(new[] { 2L }));
        Assert.That(o.Chunks.ToArray().Select(c => c.RequestId), Is.EqualTo(new[] { 1L }));
        Assert.That(s.KvCache.GetCachedPrefixTokenCount([.. b.TokenIds, 0]), Is.EqualTo(written));
        s.KvCache.CheckInvariants();
    }

    [Test]
    public void RejectsRequestsThatCanNeverRun()
    {
        var s = Create(4);
        Assert.Throws<ArgumentException>(() => s.AddRequest(new SchedulerRequest(1, Tokens(0, 10), 7))); // 17 tokens > 16 slots
        s.AddRequest(new SchedulerRequest(1, Tokens(0, 10), 6));
        Assert.Throws<ArgumentException>(() => s.AddRequest(new SchedulerRequest(1, Tokens(0, 2), 1)));
        Assert.Throws<ArgumentException>(() => new SchedulerRequest(2, [], 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SchedulerRequest(2, [1], 0));
    }

    [Test]
    public void OptionsAreValidated()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SchedulerOptions { MaxNumSeqs = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SchedulerOptions { MaxNumBatchedTokens = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SchedulerOptions { LongPrefillTokenThreshold = -1 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SchedulerOptions { ChunkedPrefill = (ChunkedPrefillMode)7 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SchedulerOptions { Policy = (SchedulingPolicy)7 });
    }

    [TestCase(1, SchedulingPolicy.FirstComeFirstServed, ChunkedPrefillMode.Enabled, PrefixCachingMode.Enabled)]
    [TestCase(2, SchedulingPolicy.Priority, ChunkedPrefillMode.Enabled, PrefixCachingMode.Enabled)]
    [TestCase(3, SchedulingPolicy.FirstComeFirstServed, ChunkedPrefillMode.Disabled, PrefixCachingMode.Enabled)]
    [TestCase(4, SchedulingPolicy.FirstComeFirstServed, ChunkedPrefillMode.Enabled, PrefixCachingMode.Disabled)]
    public void ThousandRandomRequestsWithCancellationsEndWithNoBlocks(int seed, SchedulingPolicy policy, ChunkedPrefillMode chunking, PrefixCachingMode caching)
    {
        var rng = new Random(seed);
        var options = new SchedulerOptions
        {
            MaxNumSeqs = 16,
            MaxNumBatchedTokens = chunking == ChunkedPrefillMode.Enabled ? 64 : 200,
            ChunkedPrefill = chunking,
            LongPrefillTokenThreshold = seed % 2 == 0 ? 24 : 0,
            Policy = policy,
        };
        var s = Create(40, blockSize: 8, options, caching); // 320 slots: tight for 16 sequences
        var systemPrompts = Enumerable.Range(0, 3).Select(i => Tokens(10_000 * (i + 1), 16 + 8 * i)).ToArray();
        var all = new List<SchedulerRequest>();
        int added = 0, cancelled = 0, steps = 0;
        while (added < 1000 || s.HasUnfinishedRequests)
        {
            for (int k = rng.Next(4); k > 0 && added < 1000; k--)
            {
                var prompt = systemPrompts[rng.Next(3)].Concat(Tokens(rng.Next(100_000), rng.Next(1, 60))).ToArray();
                var r = new SchedulerRequest(++added, prompt, rng.Next(1, 80))
                {
                    Priority = rng.Next(3),
                    StopTokenIds = [7],
                };
                s.AddRequest(r);
                all.Add(r);
            }
            // Consumers sometimes stop reading for a while.
            foreach (var r in all)
                if (r.Status != RequestStatus.Finished && rng.Next(50) == 0)
                    r.ConsumerState = r.ConsumerState == ConsumerState.Reading ? ConsumerState.NotReading : ConsumerState.Reading;

            var o = s.Schedule();
            steps++;
            if (rng.Next(20) == 0 && all.Count > 0)
            {
                var victim = all[rng.Next(all.Count)];
                if (s.Cancel(victim.RequestId)) cancelled++;
            }
            Execute(s, o, r => rng.Next(200) == 0 ? 7 : 100 + rng.Next(1000));
            s.KvCache.CheckInvariants();
            Assert.That(s.KvCache.SequenceCount, Is.EqualTo(s.RunningCount));
            if (steps > 200_000) Assert.Fail("the scheduler stopped making progress");
            // Unblock parked requests once nothing else can run.
            if (o.IsEmpty && s.HasUnfinishedRequests)
                foreach (var r in all) r.ConsumerState = ConsumerState.Reading;
        }
        Assert.That(s.KvCache.UsedBlockCount, Is.Zero);
        Assert.That(s.KvCache.SequenceCount, Is.Zero);
        Assert.That(cancelled, Is.GreaterThan(0));
        Assert.That(s.PreemptionCount, Is.GreaterThan(0), "the pool is small enough to force preemptions");
        foreach (var r in all)
        {
            Assert.That(r.Status, Is.EqualTo(RequestStatus.Finished));
            switch (r.FinishReason)
            {
                case FinishReason.Length: Assert.That(r.OutputTokenCount, Is.EqualTo(r.MaxNewTokenCount)); break;
                case FinishReason.EndOfSequence: Assert.That(r.OutputTokenIds[^1], Is.EqualTo(7)); break;
                case FinishReason.Cancelled: Assert.That(r.OutputTokenCount, Is.LessThanOrEqualTo(r.MaxNewTokenCount)); break;
                default: Assert.Fail($"unexpected finish reason {r.FinishReason}"); break;
            }
        }
        var stats = s.KvCache.GetStats();
        TestContext.Out.WriteLine($"seed {seed}: {steps} steps, {cancelled} cancelled, {s.PreemptionCount} preemptions, prefix hit rate {stats.PrefixHitRate:P1}");
        if (caching == PrefixCachingMode.Enabled) Assert.That(stats.PrefixHitTokenCount, Is.GreaterThan(0));
    }
}
