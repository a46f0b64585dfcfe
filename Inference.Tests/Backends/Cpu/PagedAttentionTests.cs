using Inference.Backends.Cpu;
using Inference.KvCache;
using static Inference.Tests.Backends.Cpu.PagedAttentionHarness;

namespace Inference.Tests.Backends.Cpu;

public class PagedAttentionTests
{

    [Test]
    public void MatchesReference_F32(
        [Values(8)] int heads, [Values(8, 2, 1)] int kvHeads, [Values(8, 16, 32)] int blockSize, [Values(40, 64, 128)] int headDim)
        => CompareWithReference<float>(new PagedAttentionShape(heads, kvHeads, headDim, blockSize), seed: heads * 1000 + kvHeads * 100 + blockSize + headDim);

    [Test]
    public void MatchesReference_F16(
        [Values(8)] int heads, [Values(8, 2, 1)] int kvHeads, [Values(8, 16, 32)] int blockSize, [Values(40, 64, 128)] int headDim)
        => CompareWithReference<Half>(new PagedAttentionShape(heads, kvHeads, headDim, blockSize), seed: 7 + heads * 1000 + kvHeads * 100 + blockSize + headDim);

    [Test]
    public void MaxDifferenceIsSmallButFastPathIsNotTheReference()
    {
        // Guards against a test that compares the reference with itself: both paths must run and disagree only by rounding.
        var shape = new PagedAttentionShape(8, 2, 64, 16);
        double maxRel = CompareWithReference<float>(shape, seed: 99);
        Assert.That(maxRel, Is.LessThan(1e-5));
    }

    [Test]
    public void ParallelIsBitIdenticalToSingleThreaded([Values(8, 2, 1)] int kvHeads, [Values(1, 3, 50)] int tokenCount)
    {
        var shape = new PagedAttentionShape(8, kvHeads, 32, 16);
        var rng = new Random(kvHeads * 100 + tokenCount);
        int start = 200, context = start + tokenCount, blocks = (context + 15) / 16 + 3;
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((context + 15) / 16).ToArray();
        var keys = RandomCache<Half>(rng, blocks * 16 * shape.KvStride);
        var values = RandomCache<Half>(rng, blocks * 16 * shape.KvStride);
        AssertBatchInvariant(shape, new FloatCacheUnderTest<Half>(shape, keys, values), table, start, RandomArray(rng, tokenCount * shape.QueryStride));
    }

    [Test]
    public void ScratchAtAnyOffsetGivesTheSameBitsAndStaysInside([Values(1, 2)] int kvHeads, [Values(1, 5)] int tokenCount)
    {
        // The fast path moves its rows to a 64-byte boundary inside the scratch: wherever the scratch starts, the result
        // must be the same and nothing past the scratch may be written.
        var shape = new PagedAttentionShape(8, kvHeads, 64, 16);
        var rng = new Random(kvHeads * 10 + tokenCount);
        int start = 37, context = start + tokenCount, blocks = (context + 15) / 16;
        var table = Enumerable.Range(0, blocks).Reverse().ToArray();
        var keys = RandomCache<Half>(rng, blocks * 16 * shape.KvStride);
        var values = RandomCache<Half>(rng, blocks * 16 * shape.KvStride);
        var q = RandomArray(rng, tokenCount * shape.QueryStride);
        int length = PagedAttention.GetScratchLength(shape, context);
        float[]? first = null;
        for (int offset = 0; offset < 16; offset++)
        {
            var backing = Poisoned(offset + length + 32);
            var output = Poisoned(q.Length);
            PagedAttention.Forward<Half>(shape, q, keys, values, table, start, output, backing.AsSpan(offset, length));
            Assert.That(backing.Skip(offset + length).All(float.IsNaN), Is.True, $"offset {offset}: written past the scratch");
            Assert.That(backing.Take(offset).All(float.IsNaN), Is.True, $"offset {offset}: written before the scratch");
            first ??= output;
            Assert.That(output, Is.EqualTo(first), $"offset {offset}");
        }
        Assert.That(first!.All(float.IsFinite), Is.True);
    }

    [Test]
    public void StorageOverloadReadsTheRightLayer([Values(KvCacheDataType.Float32, KvCacheDataType.Float16)] KvCacheDataType dataType)
    {
        var shape = new PagedAttentionShape(4, 2, 8, 4);
        using var storage = new KvCacheStorage(2, 6, 4, 2, 8, dataType);
        var rng = new Random(8);
        int[] table = [4, 1, 3];
        for (int layer = 0; layer < 2; layer++)
            for (int p = 0; p < 12; p++)
                storage.Write(layer, table[p / 4], p % 4, RandomArray(rng, 16), RandomArray(rng, 16));
        var q = RandomArray(rng, 3 * shape.QueryStride);
        using var pool = new WorkerPool(2);
        for (int layer = 0; layer < 2; layer++)
        {
            var viaStorage = Poisoned(q.Length);
            var direct = Poisoned(q.Length);
            PagedAttention.Forward(shape, q, storage, layer, table, 9, viaStorage, pool);
            var scratch = new float[PagedAttention.GetScratchLength(shape, 12)];
            if (dataType == KvCacheDataType.Float32)
                PagedAttention.Forward<float>(shape, q, storage.GetKeys<float>(layer), storage.GetValues<float>(layer), table, 9, direct, scratch);
            else
                PagedAttention.Forward<Half>(shape, q, storage.GetKeys<Half>(layer), storage.GetValues<Half>(layer), table, 9, direct, scratch);
            Assert.That(viaStorage, Is.EqualTo(direct));
        }
        Assert.Throws<ArgumentException>(() => PagedAttention.Forward(new PagedAttentionShape(4, 2, 8, 8), q, storage, 0, table, 9, new float[q.Length], pool));
    }

    [Test]
    public void SinglePositionReturnsItsValue()
    {
        // With one position the softmax weight is exactly 1: output = v for every head of the group.
        var shape = new PagedAttentionShape(4, 2, 8, 4);
        var rng = new Random(3);
        var k = RandomArray(rng, 2 * 4 * shape.KvStride);
        var v = RandomArray(rng, 2 * 4 * shape.KvStride);
        var q = RandomArray(rng, shape.QueryStride);
        var output = Poisoned(shape.QueryStride);
        int[] table = [1];
        PagedAttention.Forward<float>(shape, q, k, v, table, 0, output, new float[PagedAttention.GetScratchLength(shape, 1)]);
        for (int h = 0; h < 4; h++)
            for (int d = 0; d < 8; d++)
                Assert.That(output[h * 8 + d], Is.EqualTo(v[(1 * 4 * 2 + h / 2) * 8 + d]).Within(1e-6));
    }

    [Test]
    public void EveryHalfValueComesOutExactly([Values(1, 2, 6)] int kvMul)
    {
        // One position: the softmax weight is exactly 1, so each output is the cached value widened. All 65,536 f16 bit
        // patterns go through, 64 per KV head and call: finite ones must come out as the exact float, infinities as
        // infinities of their sign, NaNs as NaNs. kvMul 6 runs a block of four query heads and one of two.
        const int headDim = 64;
        var shape = new PagedAttentionShape(2 * kvMul, 2, headDim, 4);
        var rng = new Random(kvMul);
        var q = RandomArray(rng, shape.QueryStride);
        var keys = RandomCache<Half>(rng, 4 * shape.KvStride);
        var values = new Half[4 * shape.KvStride];
        var output = new float[shape.QueryStride];
        var scratch = new float[PagedAttention.GetScratchLength(shape, 1)];
        for (int first = 0; first < 65536; first += shape.KvStride)
        {
            for (int i = 0; i < shape.KvStride; i++) values[i] = BitConverter.UInt16BitsToHalf((ushort)(first + i));
            Array.Fill(output, float.NaN);
            PagedAttention.Forward<Half>(shape, q, keys, values, [0], 0, output, scratch);
            for (int h = 0; h < shape.HeadCount; h++)
                for (int d = 0; d < headDim; d++)
                {
                    var half = values[(h / kvMul) * headDim + d];
                    float expected = (float)half, actual = output[h * headDim + d];
                    // NOTE: equality as floats: the sum starts from +0, so −0 comes out as +0.
                    if (Half.IsNaN(half)) Assert.That(float.IsNaN(actual), $"0x{BitConverter.HalfToUInt16Bits(half):X4}: {actual}");
                    else Assert.That(actual, Is.EqualTo(expected), $"0x{BitConverter.HalfToUInt16Bits(half):X4}");
                }
        }
    }

    [Test]
    public void QueriesOfAnySizeGiveTheSameBitsFromF16AndWidenedRows([Values(1f, 3e4f, 2e5f)] float scale)
    {
        // f16 keys can be read without their re-bias when the queries carry it, which needs queries under 2^16 in size;
        // larger ones take the other way. Either way a token's bits must not depend on whether its rows were widened
        // first (a prefill run, on the pool) or read as f16 (a lone token), and must match the reference.
        var shape = new PagedAttentionShape(8, 2, 64, 16);
        var rng = new Random((int)scale);
        int start = 40, tokenCount = 3, context = start + tokenCount, blocks = (context + 15) / 16;
        var table = Enumerable.Range(0, blocks).Reverse().ToArray();
        var keys = RandomCache<Half>(rng, blocks * 16 * shape.KvStride);
        var values = RandomCache<Half>(rng, blocks * 16 * shape.KvStride);
        var q = RandomArray(rng, tokenCount * shape.QueryStride, scale: 1f / 64);
        q[5] = scale; // one large query value in head 0
        var single = Poisoned(q.Length);
        PagedAttention.Forward<Half>(shape, q, keys, values, table, start, single, new float[PagedAttention.GetScratchLength(shape, context)]);
        var widened = Poisoned(q.Length);
        using (var pool = new WorkerPool(2)) PagedAttention.Forward<Half>(shape, q, keys, values, table, start, widened, pool);
        Assert.That(widened, Is.EqualTo(single));
        var expected = Poisoned(q.Length);
        PagedAttentionReference.Forward(shape, q, PagedAttentionReference.Gather<Half>(shape, keys, table, context),
            PagedAttentionReference.Gather<Half>(shape, values, table, context), start, expected);
        for (int i = 0; i < q.Length; i++) Assert.That(single[i], Is.EqualTo(expected[i]).Within(1e-5), $"element {i}");
    }

    [Test]
    public void NonFiniteKeyReachesTheOutput([Values(1, 2)] int kvHeads, [Values(0x7C00, 0xFC00, 0x7E00)] int bits)
    {
        // An infinite or NaN key makes that position's score non-finite: NaN, or +∞ (then ∞ − ∞ in the softmax), gives NaN
        // for the head; −∞ gives the position weight 0 and a finite output. Heads of the other KV head are untouched.
        var shape = new PagedAttentionShape(4, kvHeads, 64, 8);
        var rng = new Random(bits);
        var q = RandomArray(rng, shape.QueryStride);
        var keys = RandomCache<Half>(rng, 2 * 8 * shape.KvStride);
        var values = RandomCache<Half>(rng, 2 * 8 * shape.KvStride);
        keys[(8 + 3) * shape.KvStride + 17] = BitConverter.UInt16BitsToHalf((ushort)bits); // block 1, position 3, KV head 0
        var output = new float[shape.QueryStride];
        PagedAttention.Forward<Half>(shape, q, keys, values, [0, 1], 11, output, new float[PagedAttention.GetScratchLength(shape, 12)]);
        var key = BitConverter.UInt16BitsToHalf((ushort)bits);
        for (int h = 0; h < shape.HeadCount; h++)
        {
            var head = output.AsSpan(h * 64, 64).ToArray();
            bool nan = h < shape.KvMul && (Half.IsNaN(key) || q[h * 64 + 17] * (float)key > 0);
            Assert.That(nan ? head.All(float.IsNaN) : head.All(float.IsFinite), Is.True, $"head {h}");
        }
        Assert.That(output.Take(shape.KvMul * 64).Any(float.IsNaN), Is.True);
    }

    [Test]
    public void RejectsShortBlockTableAndScratch()
    {
        var shape = new PagedAttentionShape(2, 1, 4, 4);
        var cache = new float[4 * 4 * 4];
        var q = new float[2 * shape.QueryStride];
        var o = new float[q.Length];
        Assert.Throws<ArgumentException>(() => PagedAttention.Forward<float>(shape, q, cache, cache, [0], 3, o, new float[100]));
        Assert.Throws<ArgumentException>(() => PagedAttention.Forward<float>(shape, q, cache, cache, [0, 1], 3, o, new float[2]));
        Assert.Throws<ArgumentException>(() => PagedAttention.Forward<float>(shape, q, cache, cache, [0, 9], 3, o, new float[100]));
        Assert.Throws<ArgumentException>(() => new PagedAttentionShape(8, 3, 4, 4));
    }

    [Test]
    public void SlidingWindow_MatchesReference_AndNeverReadsBeforeTheWindow(
        [Values(8, 2, 1)] int kvHeads, [Values(8, 16)] int blockSize, [Values(1, 5, 16, 17, 100)] int window,
        [Values(false, true)] bool f16)
    {
        foreach (int headDim in new[] { 40, 64 })
        {
            var shape = new PagedAttentionShape(8, kvHeads, headDim, blockSize) { SlidingWindow = window };
            int seed = kvHeads * 1000 + blockSize * 10 + window + headDim;
            if (f16) CompareWindowed<Half>(shape, seed);
            else CompareWindowed<float>(shape, seed);
        }
    }

    [Test]
    public void WindowCoveringTheContext_GivesTheSameBitsAsNoWindow([Values(8, 1)] int kvHeads)
    {
        var shape = new PagedAttentionShape(8, kvHeads, 64, 16);
        var rng = new Random(kvHeads);
        int start = 70, count = 9, context = start + count, blocks = (context + 15) / 16;
        var table = Enumerable.Range(0, blocks).Reverse().ToArray();
        var keys = RandomCache<Half>(rng, blocks * 16 * shape.KvStride);
        var values = RandomCache<Half>(rng, blocks * 16 * shape.KvStride);
        var q = RandomArray(rng, count * shape.QueryStride);
        using var pool = new WorkerPool(2);
        var all = Poisoned(q.Length);
        var windowed = Poisoned(q.Length);
        PagedAttention.Forward<Half>(shape, q, keys, values, table, start, all, pool);
        PagedAttention.Forward<Half>(shape with { SlidingWindow = context }, q, keys, values, table, start, windowed, pool);
        Assert.That(windowed, Is.EqualTo(all));
        PagedAttention.Forward<Half>(shape with { SlidingWindow = context - 1 }, q, keys, values, table, start, windowed, pool);
        Assert.That(windowed, Is.Not.EqualTo(all), "a window one short of the context drops position 0 for the last token");
    }

    [Test]
    public void NegativeWindowIsRejected() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new PagedAttentionShape(8, 2, 64, 16) { SlidingWindow = -1 });

    /// <summary>
    /// Every chunk of <see cref="PagedAttentionHarness.Chunks"/> through the single-threaded and the pooled (row-widening)
    /// paths against the float64 reference, rows before the window poisoned (<see cref="PagedAttentionHarness.CompareChunks"/>).
    /// </summary>
    private static void CompareWindowed<T>(PagedAttentionShape shape, int seed) where T : unmanaged =>
        Compare<T>(shape, seed, pooled: true);

    /// <summary>Runs every chunk single-threaded against the reference; returns the largest scaled difference seen.</summary>
    private static double CompareWithReference<T>(PagedAttentionShape shape, int seed) where T : unmanaged =>
        Compare<T>(shape, seed, pooled: false);

    private static double Compare<T>(PagedAttentionShape shape, int seed, bool pooled) where T : unmanaged
    {
        var rng = new Random(seed);
        int bs = shape.BlockSize, logicalBlocks = (MaxContext + bs - 1) / bs, blockCount = logicalBlocks + 3, nanBlock = blockCount - 1;
        // physical blocks in shuffled order, so logical ≠ physical, and blocks the sequence does not own
        var order = Enumerable.Range(0, blockCount - 1).OrderBy(_ => rng.Next()).Take(logicalBlocks).ToArray();
        var keys = RandomCache<T>(rng, blockCount * bs * shape.KvStride);   // [blockCount, blockSize, kvHeads, headDim]
        var values = RandomCache<T>(rng, blockCount * bs * shape.KvStride);
        return CompareChunks(shape, rng, () => new FloatCacheUnderTest<T>(shape, keys, values), order, nanBlock, pooled);
    }

    private static T[] RandomCache<T>(Random rng, int length) where T : unmanaged
    {
        var f = RandomArray(rng, length);
        if (typeof(T) == typeof(float)) return (T[])(object)f;
        var h = new Half[length];
        for (int i = 0; i < length; i++) h[i] = (Half)f[i];
        return (T[])(object)h;
    }
}
