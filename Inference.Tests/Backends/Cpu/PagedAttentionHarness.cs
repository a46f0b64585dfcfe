using Inference.Backends.Cpu;

namespace Inference.Tests.Backends.Cpu;

/// <summary>
/// One paged cache under test for <see cref="PagedAttentionHarness"/>: random keys and values in some storage type, the
/// kernel that reads them, the reference's view of them and a way to poison a row.
/// </summary>
internal abstract class PagedCacheUnderTest
{
    /// <summary>The f32 keys or values the reference sees at positions 0 … contextLength − 1 (<see cref="PagedAttentionReference.Gather{T}"/>).</summary>
    public abstract float[] Gather(bool ofValues, int[] table, int contextLength);

    /// <summary>Makes the row (every KV head) of physical slot <paramref name="slot"/> NaN in both caches.</summary>
    public abstract void PoisonRow(int slot);

    /// <summary>The kernel, single-threaded (<paramref name="pool"/> null, with scratch for the context) or pooled.</summary>
    public abstract void Forward(ReadOnlySpan<float> query, int[] table, int startPosition, Span<float> output, WorkerPool? pool);

    /// <summary>A copy whose poisoning leaves this one intact.</summary>
    public abstract PagedCacheUnderTest Clone();
}

/// <summary>
/// The checks every paged attention kernel of the CPU backend (<see cref="PagedAttention"/> over f32/f16,
/// <see cref="QuantizedKvAttention"/> over Q8_0/FP8) passes: chunks against the float64 reference with every row before
/// the window poisoned, and batch invariance (pooled, single-threaded and each token alone give the same bits).
/// </summary>
internal static class PagedAttentionHarness
{
    /// <summary>(start, tokenCount): decode (n = 1) and prefill chunks, from position 0 to past 1,000, crossing block boundaries.</summary>
    public static readonly (int Start, int Count)[] Chunks =
    [
        (0, 1), (0, 7), (0, 40), (5, 1), (15, 3), (31, 2), (33, 64), (100, 37), (990, 24), (1031, 1),
    ];

    /// <summary>The longest context of <see cref="Chunks"/>.</summary>
    public static int MaxContext { get; } = Chunks.Max(c => c.Start + c.Count);

    /// <summary>
    /// Every chunk of <see cref="Chunks"/> against the float64 reference, each output row within
    /// <paramref name="tolerance"/> of its largest value. The table maps the sequence's logical blocks to
    /// <paramref name="order"/>; every row before the first query's window is NaN and the table entries wholly before it
    /// point at <paramref name="nanBlock"/> (poisoned here), so a read outside the window shows. With
    /// <paramref name="pooled"/> the pooled call must give the single-threaded bits. Returns the largest scaled difference.
    /// </summary>
    public static double CompareChunks(PagedAttentionShape shape, Random rng, Func<PagedCacheUnderTest> create, int[] order, int nanBlock,
        bool pooled, double tolerance = 1e-5)
    {
        int bs = shape.BlockSize;
        using var pool = new WorkerPool(2);
        var cache = create();
        if (nanBlock >= 0)
            for (int p = 0; p < bs; p++) cache.PoisonRow(nanBlock * bs + p);
        double worst = 0;
        foreach (var (start, count) in Chunks)
        {
            var k = cache.Gather(false, order, start + count);
            var v = cache.Gather(true, order, start + count);
            int firstVisible = shape.FirstVisible(start + 1);
            var poisoned = cache;
            var table = (int[])order.Clone();
            if (firstVisible > 0)
            {
                poisoned = cache.Clone();
                for (int b = 0; b < firstVisible / bs; b++) table[b] = nanBlock;
                for (int p = firstVisible / bs * bs; p < firstVisible; p++) poisoned.PoisonRow(table[p / bs] * bs + p % bs);
            }

            var q = RandomArray(rng, count * shape.QueryStride, 2f);
            var expected = Poisoned(q.Length);
            PagedAttentionReference.Forward(shape, q, k, v, start, expected);
            var single = Poisoned(q.Length);
            poisoned.Forward(q, table, start, single, null);
            if (pooled)
            {
                var parallel = Poisoned(q.Length);
                poisoned.Forward(q, table, start, parallel, pool);
                Assert.That(parallel, Is.EqualTo(single), $"{shape}: start {start}, count {count}: pooled and single-threaded bits");
            }
            for (int r = 0; r < count * shape.HeadCount; r++)
            {
                float scale = 0;
                for (int d = 0; d < shape.HeadDim; d++) scale = Math.Max(scale, Math.Abs(expected[r * shape.HeadDim + d]));
                Assert.That(scale, Is.GreaterThan(0f));
                for (int d = 0; d < shape.HeadDim; d++)
                {
                    int i = r * shape.HeadDim + d;
                    double rel = Math.Abs(single[i] - expected[i]) / scale;
                    worst = Math.Max(worst, double.IsNaN(rel) ? double.PositiveInfinity : rel);
                    if (!(rel <= tolerance))
                        Assert.Fail($"{shape}: start {start}, count {count}, row {r}, dim {d}: kernel {single[i]} vs reference {expected[i]}");
                }
            }
        }
        return worst;
    }

    /// <summary>
    /// Batch invariance: the chunk <paramref name="q"/> at <paramref name="start"/> on one thread, on four, and each of
    /// its tokens decoded alone give the same bits (all finite).
    /// </summary>
    public static void AssertBatchInvariant(PagedAttentionShape shape, PagedCacheUnderTest cache, int[] table, int start, float[] q)
    {
        int count = q.Length / shape.QueryStride;
        var single = Poisoned(q.Length);
        cache.Forward(q, table, start, single, null);
        using var pool = new WorkerPool(4);
        var pooled = Poisoned(q.Length);
        cache.Forward(q, table, start, pooled, pool);
        Assert.That(pooled, Is.EqualTo(single), "pooled against single-threaded");
        Assert.That(single.All(float.IsFinite), Is.True);
        for (int i = 0; i < count; i++)
        {
            var alone = Poisoned(shape.QueryStride);
            cache.Forward(q.AsSpan(i * shape.QueryStride, shape.QueryStride), table, start + i, alone, pool);
            Assert.That(alone, Is.EqualTo(single.AsSpan(i * shape.QueryStride, shape.QueryStride).ToArray()), $"token {i} decoded alone");
        }
    }

    /// <summary>Uniform in [−scale, scale).</summary>
    public static float[] RandomArray(Random rng, int length, float scale = 1f)
    {
        var a = new float[length];
        for (int i = 0; i < length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return a;
    }

    /// <summary>NaN everywhere: an output element the kernel does not write stays NaN.</summary>
    public static float[] Poisoned(int length)
    {
        var a = new float[length];
        Array.Fill(a, float.NaN);
        return a;
    }
}

/// <summary>f32 or f16 rows read by <see cref="PagedAttention"/>.</summary>
internal sealed class FloatCacheUnderTest<T>(PagedAttentionShape shape, T[] keys, T[] values) : PagedCacheUnderTest where T : unmanaged
{
    public override float[] Gather(bool ofValues, int[] table, int contextLength) =>
        PagedAttentionReference.Gather<T>(shape, ofValues ? values : keys, table, contextLength);

    public override void PoisonRow(int slot)
    {
        var nan = typeof(T) == typeof(float) ? (T)(object)float.NaN : (T)(object)Half.NaN;
        Array.Fill(keys, nan, slot * shape.KvStride, shape.KvStride);
        Array.Fill(values, nan, slot * shape.KvStride, shape.KvStride);
    }

    public override void Forward(ReadOnlySpan<float> query, int[] table, int startPosition, Span<float> output, WorkerPool? pool)
    {
        if (pool is not null) PagedAttention.Forward<T>(shape, query, keys, values, table, startPosition, output, pool);
        else PagedAttention.Forward<T>(shape, query, keys, values, table, startPosition, output,
            new float[PagedAttention.GetScratchLength(shape, startPosition + query.Length / shape.QueryStride)]);
    }

    public override PagedCacheUnderTest Clone() => new FloatCacheUnderTest<T>(shape, (T[])keys.Clone(), (T[])values.Clone());
}

/// <summary>Q8_0 or FP8 blocks read by <see cref="QuantizedKvAttention"/>, on its 256-bit or its scalar path.</summary>
internal sealed class BlockCacheUnderTest(PagedAttentionShape shape, Inference.KvCache.KvCacheDataType type, byte[] keys, byte[] values, bool vectors = true)
    : PagedCacheUnderTest
{
    public override float[] Gather(bool ofValues, int[] table, int contextLength) =>
        PagedAttentionReference.Gather(shape, ofValues ? values : keys, type, table, contextLength);

    /// <summary>NaN scales in every block of the row: any read of it makes NaNs.</summary>
    public override void PoisonRow(int slot)
    {
        int rowBytes = (int)Inference.KvCache.KvBlockFormat.ByteCount(type, shape.KvStride);
        for (int b = slot * rowBytes; b < (slot + 1) * rowBytes; b += Inference.KvCache.KvBlockFormat.BlockBytes)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteHalfLittleEndian(keys.AsSpan(b), Half.NaN);
            System.Buffers.Binary.BinaryPrimitives.WriteHalfLittleEndian(values.AsSpan(b), Half.NaN);
        }
    }

    public override void Forward(ReadOnlySpan<float> query, int[] table, int startPosition, Span<float> output, WorkerPool? pool)
    {
        if (pool is not null) QuantizedKvAttention.Forward(shape, query, keys, values, type, table, startPosition, output, pool);
        else QuantizedKvAttention.Forward(shape, query, keys, values, type, table, startPosition, output,
            new float[QuantizedKvAttention.GetScratchLength(shape, startPosition + query.Length / shape.QueryStride)], vectors);
    }

    public override PagedCacheUnderTest Clone() => new BlockCacheUnderTest(shape, type, (byte[])keys.Clone(), (byte[])values.Clone(), vectors);
}
