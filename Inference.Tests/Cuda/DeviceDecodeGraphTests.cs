using ILGPU.Runtime;
using Inference.Cuda;
using Inference.Cuda.Runner;
using Inference.Engine;
using Inference.Kernels.Reference;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;

namespace Inference.Tests.Cuda;

/// <summary>
/// The padded, graph-safe decode step (<see cref="DecodeGraphOptions"/>, EnforceEager = false) against the eager step:
/// two executors on ILGPU's CPU accelerator driven by ONE <see cref="KvCacheManager"/> through the same steps, batches
/// that fall inside buckets, sequences that join and leave (a row taken over by another sequence), block tables that
/// grow; the launch arguments of two steps of one bucket; the steps that must stay eager.
/// </summary>
public class DeviceDecodeGraphTests
{
    /// <summary>An eager and a padded executor over one KV cache manager, stepping the same sequences.</summary>
    internal sealed class DecodePair : IDisposable
    {
        private readonly GgufFile _gguf;
        private readonly Dictionary<long, List<int>> _history = [];   // tokens whose K/V are in the cache
        private readonly Dictionary<long, int> _next = [];            // the greedy token each sequence decodes next
        private readonly Random _rng;
        private readonly double _tolerance;

        public DecodePair(Accelerator accelerator, string model, int blockSize, int maxCaptureSize = 32, int maxSeqLenToCapture = 8192,
            CudaAttentionKernels attention = CudaAttentionKernels.Ilgpu, double tolerance = 0, int maxNumSeqs = 64)
        {
            _gguf = GgufFile.Open(model);
            var config = ModelConfig.FromGguf(_gguf);
            Vocab = config.VocabSize;
            var kvOptions = new KvCacheOptions { BlockSize = blockSize, DataType = KvCacheDataType.Float32, PoolBytes = 1, PrefixCaching = PrefixCachingMode.Disabled };
            const int blocks = 200, context = 96;
            Manager = new KvCacheManager(blocks, kvOptions);
            var ctx = new ForwardExecutorContext(new LlamaModel(_gguf, config), Manager, kvOptions, blocks, context, 512, maxNumSeqs, 2);
            Eager = new DeviceForwardExecutor(accelerator, ctx, attention, owner: null, tensorCoreMatMul: false);
            Padded = new DeviceForwardExecutor(accelerator, ctx, attention, owner: null, tensorCoreMatMul: false,
                decodeGraphs: new DecodeGraphOptions(EnforceEager: false, maxCaptureSize, maxSeqLenToCapture));
            _rng = new Random(blockSize * 31 + config.KvHeadCount);
            _tolerance = tolerance;
        }

        public KvCacheManager Manager { get; }
        public DeviceForwardExecutor Eager { get; }
        public DeviceForwardExecutor Padded { get; }
        public int Vocab { get; }
        public ModelBatch Batch { get; } = new();

        /// <summary>Prefills random prompts of the given lengths beside decode tokens of <paramref name="decoding"/> (one mixed step).</summary>
        public void Prefill((long Id, int Length)[] prompts, params long[] decoding)
        {
            Batch.Clear();
            foreach (long id in decoding) AddDecode(id);
            foreach (var (id, length) in prompts)
            {
                var prompt = Enumerable.Range(0, length).Select(_ => 1 + _rng.Next(Vocab - 1)).ToArray();
                Assert.That(Manager.TryAllocate(id, prompt, out _), Is.True);
                Batch.Add(id, prompt, 0, wantLogits: true);
                _history[id] = [.. prompt];
            }
            Step();
        }

        /// <summary>One decode step of <paramref name="ids"/>; returns the padded executor's logits.</summary>
        public float[] Decode(params long[] ids)
        {
            Batch.Clear();
            foreach (long id in ids) AddDecode(id);
            return Step();
        }

        /// <summary>Decodes sequence 1, then 1–3, then 1–5: the padded steps take buckets 1, 4 and 8.</summary>
        public void DecodeIntoBuckets1To8()
        {
            Decode(1);
            Assert.That(Padded.LastDecodeBucket, Is.EqualTo(1));
            Decode(1, 2, 3);
            Assert.That(Padded.LastDecodeBucket, Is.EqualTo(4));
            Decode(Ids(1, 5));
            Assert.That(Padded.LastDecodeBucket, Is.EqualTo(8));
        }

        public void Free(long id)
        {
            Manager.Free(id);
            _history.Remove(id);
            _next.Remove(id);
        }

        /// <summary>Position of the token <paramref name="id"/> decodes next.</summary>
        public int NextPosition(long id) => _history[id].Count;

        private void AddDecode(long id)
        {
            int token = _next[id], position = _history[id].Count;
            Assert.That(Manager.TryAppendSlots(id, [token]), Is.True);
            Batch.Add(id, [token], position, wantLogits: true);
            _history[id].Add(token);
        }

        private float[] Step()
        {
            var expected = new float[Batch.LogitCount * Vocab];
            var actual = new float[expected.Length];
            Array.Fill(expected, float.NaN);
            Array.Fill(actual, float.NaN);
            Eager.Storage.CopyBlocks(Manager.PendingCopies);
            Padded.Storage.CopyBlocks(Manager.PendingCopies);
            Manager.ClearPendingCopies();
            Eager.Forward(Batch, expected);
            Padded.Forward(Batch, actual);
            Assert.That(actual, Has.None.NaN, "every wanted logit is written");
            if (_tolerance == 0)
            {
                Assert.That(actual, Is.EqualTo(expected), "the padded step's logits are the eager step's, bit for bit");
            }
            else
            {
                for (int r = 0; r < Batch.LogitCount; r++)
                    Assert.That(ReferenceCompare.RelativeL2(actual.AsSpan(r * Vocab, Vocab), expected.AsSpan(r * Vocab, Vocab)), Is.LessThan(_tolerance));
            }
            foreach (var seg in Batch.Segments)
                _next[seg.SequenceId] = ArgMax(expected.AsSpan((seg.LogitIndex + seg.LogitRowCount - 1) * Vocab, Vocab));
            return actual;
        }

        private static int ArgMax(ReadOnlySpan<float> row)
        {
            int best = 0;
            for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
            return best;
        }

        public void Dispose()
        {
            Padded.Dispose();
            Eager.Dispose();
            _gguf.Dispose();
        }
    }

    private static long[] Ids(int from, int count) => Enumerable.Range(from, count).Select(i => (long)i).ToArray();

    /// <summary>
    /// Decode batches of 1, 3, 5 and 17 sequences (buckets 1, 4, 8, 32) with contexts from 4 to 60 give the eager
    /// step's logits bit for bit, step after step while the tables grow across block boundaries; then three sequences
    /// leave, a new one is prefilled beside the others' decode tokens (a mixed step: eager) and the survivors move up
    /// into other rows, so rows are taken over by other sequences; every block comes back at the end.
    /// </summary>
    [TestCase(4, 4, 8)]
    [TestCase(8, 2, 16)]
    public void PaddedDecode_EqualsEagerDecode_AsSequencesJoinAndLeave(int heads, int kvHeads, int blockSize)
    {
        using var pair = new DecodePair(DeviceTestAccelerator.Cpu, DeviceForwardExecutorTests.Model(heads, kvHeads, GgmlType.F32), blockSize);
        var padded = pair.Padded;
        Assert.That(padded.DeviceName, Does.Contain("padded to graph-safe batch sizes up to 32"));
        Assert.That(pair.Eager.DeviceName, Does.Contain("decode eager (EnforceEager)"));

        pair.Prefill(Ids(1, 9).Select(id => (id, 3 + (int)(id * 5 % 29))).ToArray());
        pair.Prefill(Ids(10, 8).Select(id => (id, 3 + (int)(id * 7 % 31))).ToArray());
        Assert.That(padded.LastDecodeBucket, Is.Zero, "prefill runs eagerly");

        pair.DecodeIntoBuckets1To8();

        var all = Ids(1, 17);
        pair.Decode(all);
        Assert.That(padded.LastDecodeBucket, Is.EqualTo(32));
        Assert.That(padded.LastTableEntriesUploaded, Is.GreaterThan(17), "rows 5 to 16 take their sequences' tables");
        for (int step = 0; step < 6; step++)
        {
            int crossing = all.Count(id => pair.NextPosition(id) % blockSize == 0);
            pair.Decode(all);
            // the same sequences in the same rows: only a row that starts a new block uploads an entry
            if (crossing == 0) Assert.That(padded.LastTableEntriesUploaded, Is.Zero, $"step {step}: no table changed");
            else if (crossing == 1) Assert.That(padded.LastTableEntriesUploaded, Is.EqualTo(1), $"step {step}: one new block");
            else Assert.That(padded.LastTableEntriesUploaded, Is.GreaterThanOrEqualTo(crossing), $"step {step}");
        }

        foreach (long id in new long[] { 2, 5, 9 }) pair.Free(id);
        var survivors = all.Where(id => id is not (2 or 5 or 9)).ToArray();
        pair.Prefill([(18, 11)], survivors);
        Assert.That(padded.LastDecodeBucket, Is.Zero, "a mixed step runs eagerly");
        var next = survivors.Append(18).ToArray();   // 15 sequences: bucket 16, rows 1.. now hold other sequences
        for (int step = 0; step < 3; step++)
        {
            pair.Decode(next);
            Assert.That(padded.LastDecodeBucket, Is.EqualTo(16));
        }
        Assert.That(padded.LastTableEntriesUploaded, Is.LessThanOrEqualTo(16 * (96 / blockSize)));
        pair.Decode(18, 1);   // sequence 18 in row 0, which sequence 1 held
        Assert.That(padded.LastDecodeBucket, Is.EqualTo(2));

        foreach (long id in next) pair.Free(id);
        Assert.That(pair.Manager.FreeBlockCount, Is.EqualTo(pair.Manager.TotalBlockCount), "no KV block leaked");
    }

    /// <summary>
    /// What makes replay correct: two consecutive steps of one bucket (3 then 4 sequences in bucket 4, 5 then 8 in
    /// bucket 8, at other contexts) enqueue every operation with the same buffers, counts and attention metadata; the
    /// eager steps, for contrast, do not. Then the incremental block-table upload of one sequence, block by block.
    /// </summary>
    [Test]
    public void StepsOfOneBucket_LaunchWithTheSameArguments()
    {
        using var pair = new DecodePair(DeviceTestAccelerator.Cpu, DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32), 8);
        pair.Prefill(Ids(1, 8).Select(id => (id, 4 + (int)(id * 3))).ToArray());
        pair.Decode(Ids(1, 8));   // every bucket's first use allocates the static buffers; not compared

        (List<string> Padded, List<string> Eager) Logged(params long[] ids)
        {
            pair.Padded.LaunchLog = [];
            pair.Eager.LaunchLog = [];
            pair.Decode(ids);
            var logs = (pair.Padded.LaunchLog, pair.Eager.LaunchLog);
            pair.Padded.LaunchLog = pair.Eager.LaunchLog = null;
            return logs;
        }
        var three = Logged(1, 2, 3);
        var four = Logged(Ids(1, 4));
        var five = Logged(Ids(1, 5));
        var eight = Logged(Ids(1, 8));
        Assert.That(three.Padded, Has.Count.GreaterThan(10));
        Assert.That(four.Padded, Is.EqualTo(three.Padded), "bucket 4: 3 and 4 sequences");
        Assert.That(eight.Padded, Is.EqualTo(five.Padded), "bucket 8: 5 and 8 sequences");
        Assert.That(five.Padded, Is.Not.EqualTo(four.Padded), "another bucket, other arguments");
        Assert.That(four.Eager, Is.Not.EqualTo(three.Eager), "eager steps pass the batch's own sizes");
        Assert.That(three.Padded.Any(l => l.Contains("Attention") && l.Contains("maxContext=96")), Is.True, "attention split over the captured context");

        // sequence 1 stays in row 0: a step uploads its one new table entry when it starts a block, else nothing
        for (int step = 0; step < 9; step++)
        {
            bool newBlock = pair.NextPosition(1) % 8 == 0;
            pair.Decode(1);
            Assert.That(pair.Padded.LastTableEntriesUploaded, Is.EqualTo(newBlock ? 1 : 0), $"position {pair.NextPosition(1) - 1}");
        }
    }

    /// <summary>
    /// Steps that stay eager beside padded ones: a context past MaxSeqLenToCapture and a batch past MaxCaptureSize, both
    /// still giving the eager logits bit for bit.
    /// </summary>
    [Test]
    public void LongContextsAndLargeBatches_StayEager()
    {
        using (var pair = new DecodePair(DeviceTestAccelerator.Cpu, DeviceForwardExecutorTests.Model(4, 2, GgmlType.F32), 8, maxCaptureSize: 4, maxSeqLenToCapture: 24))
        {
            pair.Prefill([(1, 20), (2, 5), (3, 6), (4, 7), (5, 8)]);
            pair.Decode(1, 2);
            Assert.That(pair.Padded.LastDecodeBucket, Is.EqualTo(2));
            pair.Decode(Ids(1, 5));
            Assert.That(pair.Padded.LastDecodeBucket, Is.Zero, "5 sequences > MaxCaptureSize 4");
            pair.Decode(Ids(1, 3));
            Assert.That(pair.Padded.LastDecodeBucket, Is.EqualTo(4), "3 sequences: the capped bucket");
            while (pair.NextPosition(1) < 24) pair.Decode(1, 2);
            pair.Decode(1, 2);
            Assert.That(pair.Padded.LastDecodeBucket, Is.Zero, "a context of 25 > MaxSeqLenToCapture 24");
            pair.Decode(2, 3);
            Assert.That(pair.Padded.LastDecodeBucket, Is.EqualTo(2));
            foreach (long id in Ids(1, 5)) pair.Free(id);
            Assert.That(pair.Manager.FreeBlockCount, Is.EqualTo(pair.Manager.TotalBlockCount), "no KV block leaked");
        }
    }

    /// <summary>
    /// Mixture-of-experts models (qwen2moe with its gated shared expert, qwen3moe without) decode padded like the dense
    /// ones: batches of 1, 3, 5 and 6 sequences (buckets 1, 4, 8) give the eager step's logits bit for bit, the padding
    /// rows routed beside the real ones changing nothing; two steps of one bucket launch every operation, the experts'
    /// scratch included, with the same arguments; a prefill between them (eager, larger) leaves the captured steps'
    /// scratch where it was.
    /// </summary>
    [TestCase("qwen2moe")]
    [TestCase("qwen3moe")]
    public void MixtureOfExperts_DecodesPadded_AsTheEagerStep(string architecture)
    {
        using var pair = new DecodePair(DeviceTestAccelerator.Cpu, DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32, architecture: architecture, experts: 6), 8);
        var padded = pair.Padded;
        Assert.That(padded.DeviceName, Does.Contain("padded to graph-safe batch sizes up to 32"));
        pair.Prefill(Ids(1, 6).Select(id => (id, 3 + (int)(id * 5 % 13))).ToArray());
        pair.DecodeIntoBuckets1To8();

        List<string> Logged(params long[] ids)
        {
            padded.LaunchLog = [];
            pair.Decode(ids);
            var log = padded.LaunchLog;
            padded.LaunchLog = null;
            return log;
        }
        var five = Logged(Ids(1, 5));
        pair.Prefill([(7, 40)], Ids(1, 6));   // a larger eager step: the eager buffers grow
        Assert.That(padded.LastDecodeBucket, Is.Zero);
        var six = Logged(Ids(1, 6));
        Assert.That(padded.LastDecodeBucket, Is.EqualTo(8));
        Assert.That(five.Where(l => l.Contains("MixtureOfExperts")).ToList(), Has.Count.EqualTo(2));
        Assert.That(five.All(l => !l.Contains("MixtureOfExperts") || l.Contains("expertFloats@")), Is.True, "the experts' scratch is described");
        Assert.That(six, Is.EqualTo(five), "bucket 8: 5 and 6 sequences, before and after a larger eager step");
        for (int step = 0; step < 4; step++) pair.Decode(Ids(1, 7));

        foreach (long id in Ids(1, 7)) pair.Free(id);
        Assert.That(pair.Manager.FreeBlockCount, Is.EqualTo(pair.Manager.TotalBlockCount), "no KV block leaked");
    }

    /// <summary>A batch pads to the smallest of 1, 2, 4, … that holds it, MaxCaptureSize (a power of two or not) the cap.</summary>
    [TestCase(64, 1, 1)]
    [TestCase(64, 3, 4)]
    [TestCase(64, 16, 16)]
    [TestCase(64, 17, 32)]
    [TestCase(64, 256, 64)]
    [TestCase(6, 3, 4)]
    [TestCase(6, 5, 6)]
    [TestCase(6, 7, 6)]
    public void DecodeBucketFor_IsTheSmallestBucketThatHoldsTheBatch(int maxCaptureSize, int sequenceCount, int bucket) =>
        Assert.That(DeviceForwardExecutor.DecodeBucketFor(maxCaptureSize, sequenceCount), Is.EqualTo(bucket));

    /// <summary>
    /// The largest bucket follows the engine's sequence limit (MaxNumSeqs rounded up to a bucket) when it is below
    /// MaxCaptureSize: with a limit of 3 the buckets are 1, 2, 4 and the static buffers hold 4 rows (about an eighth of
    /// those of a 32-sequence capture), the padded steps still give the eager logits bit for bit, and a batch larger
    /// than the largest bucket runs eagerly.
    /// </summary>
    [Test]
    public void LargestBucket_FollowsTheEngineSequenceLimit()
    {
        var model = DeviceForwardExecutorTests.Model(4, 2, GgmlType.F32);
        long largeBytes;
        using (var large = new DecodePair(DeviceTestAccelerator.Cpu, model, 8, maxCaptureSize: 32, maxNumSeqs: 64))
        {
            Assert.That(large.Padded.DecodeBuckets, Is.Null, "nothing allocated before the first padded step");
            large.Prefill([(1, 5)]);
            large.Decode(1);
            Assert.That(large.Padded.DecodeBuckets, Is.EqualTo(new[] { 1, 2, 4, 8, 16, 32 }));
            largeBytes = large.Padded.DecodeBufferBytes;
            large.Free(1);
        }

        using var pair = new DecodePair(DeviceTestAccelerator.Cpu, model, 8, maxCaptureSize: 32, maxNumSeqs: 3);
        var padded = pair.Padded;
        Assert.That(padded.DeviceName, Does.Contain("padded to graph-safe batch sizes up to 4"));
        pair.Prefill([(1, 7), (2, 12), (3, 3), (4, 9), (5, 15)]);
        pair.Decode(1);
        Assert.That(padded.LastDecodeBucket, Is.EqualTo(1));
        Assert.That(padded.DecodeBuckets, Is.EqualTo(new[] { 1, 2, 4 }));
        long bytes = padded.DecodeBufferBytes;
        Assert.That(bytes, Is.GreaterThan(0));
        Assert.That(bytes, Is.LessThan(largeBytes / 7), "buffers for 4 rows, not 32");
        for (int step = 0; step < 10; step++)
        {
            pair.Decode(1, 2, 3);
            Assert.That(padded.LastDecodeBucket, Is.EqualTo(4));
            pair.Decode(2, 4);
            Assert.That(padded.LastDecodeBucket, Is.EqualTo(2));
        }
        pair.Decode(Ids(1, 5));
        Assert.That(padded.LastDecodeBucket, Is.Zero, "5 sequences > the largest bucket 4: eager");
        Assert.That(padded.DecodeBufferBytes, Is.EqualTo(bytes), "the static buffers never grow");
        foreach (long id in Ids(1, 5)) pair.Free(id);
        Assert.That(pair.Manager.FreeBlockCount, Is.EqualTo(pair.Manager.TotalBlockCount), "no KV block leaked");
    }

    [Test]
    public void CudaOptions_ValidateTheCaptureLimits()
    {
        Assert.That(new CudaOptions().EnforceEager, Is.True, "eager until replay is checked on a device");
        Assert.That(new CudaOptions().MaxCaptureSize, Is.EqualTo(64));
        Assert.That(new CudaOptions().MaxSeqLenToCapture, Is.EqualTo(8192));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new CudaOptions { MaxCaptureSize = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new CudaOptions { MaxCaptureSize = 513 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new CudaOptions { MaxSeqLenToCapture = 0 });
    }
}
