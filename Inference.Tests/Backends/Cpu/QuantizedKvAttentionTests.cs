using System.Buffers.Binary;
using Inference.Backends.Cpu;
using Inference.Kernels.Reference;
using Inference.KvCache;
using static Inference.Tests.Backends.Cpu.PagedAttentionHarness;

namespace Inference.Tests.Backends.Cpu;

/// <summary>
/// <see cref="QuantizedKvAttention"/> (Q8_0 and FP8 E4M3 blocks read as stored) against the float64 reference over the
/// dequantized cache, the block formats themselves, and against attention over the unquantized values.
/// </summary>
public class QuantizedKvAttentionTests
{
    private static readonly KvCacheDataType[] Formats = [KvCacheDataType.Q8_0, KvCacheDataType.Fp8E4M3];

    [Test]
    public void MatchesReference(
        [ValueSource(nameof(Formats))] KvCacheDataType type, [Values(8, 2, 1)] int kvHeads, [Values(8, 16, 32)] int blockSize,
        [Values(32, 64, 128)] int headDim)
    {
        double worst = Compare(type, new PagedAttentionShape(8, kvHeads, headDim, blockSize), seed: kvHeads * 100 + blockSize + headDim, vectors: true);
        Assert.That(worst, Is.GreaterThan(0), "the kernel is not the reference");
    }

    [Test]
    public void ScalarPathMatchesReference([ValueSource(nameof(Formats))] KvCacheDataType type, [Values(8, 1)] int kvHeads)
        => Compare(type, new PagedAttentionShape(8, kvHeads, 64, 16), seed: kvHeads, vectors: false);

    [Test]
    public void SlidingWindowAndSoftCap_MatchReference_AndNeverReadBeforeTheWindow(
        [ValueSource(nameof(Formats))] KvCacheDataType type, [Values(8, 2, 1)] int kvHeads, [Values(1, 17, 100)] int window)
        => Compare(type, new PagedAttentionShape(8, kvHeads, 64, 16) { SlidingWindow = window, LogitSoftCap = 3f }, seed: window + kvHeads, vectors: true);

    [Test]
    public void PooledAndPerTokenGiveTheSameBits([ValueSource(nameof(Formats))] KvCacheDataType type, [Values(8, 2, 1)] int kvHeads)
    {
        var shape = new PagedAttentionShape(8, kvHeads, 64, 16);
        var rng = new Random(kvHeads);
        int start = 190, count = 21, context = start + count, blocks = (context + 15) / 16 + 2;
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((context + 15) / 16).ToArray();
        var keys = RandomCache(type, rng, blocks * 16 * shape.KvStride);
        var values = RandomCache(type, rng, blocks * 16 * shape.KvStride);
        AssertBatchInvariant(shape, new BlockCacheUnderTest(shape, type, keys, values), table, start, RandomArray(rng, count * shape.QueryStride, 2f));
    }

    [Test]
    public void EveryCodeComesOutExactly([ValueSource(nameof(Formats))] KvCacheDataType type, [Values(1, 2, 6)] int kvMul, [Values(true, false)] bool vectors)
    {
        // One position: the softmax weight is exactly 1 and each output is d · code. Every one of the 256 codes, with
        // scales of several sizes (an f16 subnormal among them), must come out as the exact product.
        const int headDim = 256;
        var shape = new PagedAttentionShape(kvMul, 1, headDim, 1);
        var rng = new Random(kvMul);
        var q = RandomArray(rng, shape.QueryStride);
        var keys = RandomCache(type, rng, headDim);
        foreach (float scale in new[] { 1f, 0.0123f, 3.5e-6f, 40f })
        {
            var values = new byte[KvBlockFormat.RowBytes(type, headDim)];
            for (int b = 0; b < headDim / 32; b++)
            {
                BinaryPrimitives.WriteHalfLittleEndian(values.AsSpan(b * 34), (Half)scale);
                for (int i = 0; i < 32; i++) values[b * 34 + 2 + i] = (byte)(b * 32 + i);
            }
            if (type == KvCacheDataType.Fp8E4M3) { values[CodeAt(0x7F)] = 0x7E; values[CodeAt(0xFF)] = 0xFE; } // no NaN codes (they are never written)
            var expected = new float[headDim];
            KvBlockFormat.Dequantize(type, values, expected);
            var output = Poisoned(shape.QueryStride);
            QuantizedKvAttention.Forward(shape, q, keys, values, type, [0], 0, output, new float[QuantizedKvAttention.GetScratchLength(shape, 1)], vectors);
            for (int m = 0; m < kvMul; m++)
                Assert.That(output.AsSpan(m * headDim, headDim).ToArray(), Is.EqualTo(expected), $"scale {scale}, head {m}");
        }
    }

    private static int CodeAt(int code) => code / 32 * KvBlockFormat.BlockBytes + 2 + code % 32;

    [Test]
    public void E4M3_RoundsToNearestEven_Saturates_AndDecodes()
    {
        var all = Enumerable.Range(0, 256).Where(c => (c & 0x7F) != 0x7F).Select(c => (Code: (byte)c, Value: KvBlockFormat.FromE4M3((byte)c))).ToArray();
        Assert.That(KvBlockFormat.FromE4M3(0x7E), Is.EqualTo(448f));
        Assert.That(KvBlockFormat.FromE4M3(0x01), Is.EqualTo(MathF.ScaleB(1, -9)));
        Assert.That(KvBlockFormat.FromE4M3(0x08), Is.EqualTo(MathF.ScaleB(1, -6)));
        Assert.That(float.IsNaN(KvBlockFormat.FromE4M3(0x7F)) && float.IsNaN(KvBlockFormat.FromE4M3(0xFF)), Is.True);
        foreach (var (code, value) in all)
            if (code != 0x80) Assert.That(KvBlockFormat.ToE4M3(value), Is.EqualTo(code), $"code {code:X2} round trip");
        Assert.That(KvBlockFormat.ToE4M3(1e6f), Is.EqualTo(0x7E));
        Assert.That(KvBlockFormat.ToE4M3(-449f), Is.EqualTo(0xFE));
        // Any float: the nearest code by brute force, ties to the even code.
        var rng = new Random(5);
        for (int t = 0; t < 20000; t++)
        {
            float x = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-12, 10)));
            if (t < 256) x = (all[t % all.Length].Value + all[(t + 1) % all.Length].Value) / 2; // midpoints
            if (Math.Abs(x) > 448) continue;
            byte got = KvBlockFormat.ToE4M3(x);
            double err = Math.Abs(KvBlockFormat.FromE4M3(got) - (double)x);
            foreach (var (code, value) in all)
            {
                double other = Math.Abs(value - (double)x);
                Assert.That(err, Is.LessThanOrEqualTo(other), $"{x}: code {got:X2} is not the nearest ({code:X2} is)");
                if (other == err && value != KvBlockFormat.FromE4M3(got))
                    Assert.That(got & 1, Is.EqualTo(0), $"{x}: tie not broken to even");
            }
        }
    }

    [Test]
    public void QuantizationError_AgainstAttentionOverTheUnquantizedValues([ValueSource(nameof(Formats))] KvCacheDataType type)
    {
        // The attention output from quantized K/V against the float64 attention over the values before quantization:
        // the cost of the format itself. Measured (relative L2 over all outputs, 8/2 heads, head size 128, 1,000
        // positions of normal(0, 1)-like K/V and queries of size 2): Q8_0 ≈ 4e-3, FP8 E4M3 ≈ 3e-2.
        var shape = new PagedAttentionShape(8, 2, 128, 16);
        var rng = new Random(21);
        int context = 1000, blocks = context / 16 + 3;
        var table = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).Take((context + 15) / 16).ToArray();
        var k = RandomArray(rng, blocks * 16 * shape.KvStride);
        var v = RandomArray(rng, blocks * 16 * shape.KvStride);
        var kq = new byte[KvBlockFormat.ByteCount(type, k.Length)];
        var vq = new byte[kq.Length];
        KvBlockFormat.Quantize(type, k, kq);
        KvBlockFormat.Quantize(type, v, vq);
        int count = 8, start = context - count;
        var q = RandomArray(rng, count * shape.QueryStride, 2f);
        var exact = Poisoned(q.Length);
        PagedAttentionReference.Forward(shape, q, PagedAttentionReference.Gather<float>(shape, k, table, context), PagedAttentionReference.Gather<float>(shape, v, table, context), start, exact);
        var quantized = Poisoned(q.Length);
        using var pool = new WorkerPool(2);
        QuantizedKvAttention.Forward(shape, q, kq, vq, type, table, start, quantized, pool);
        double err = ReferenceCompare.RelativeL2(quantized, exact);
        TestContext.Out.WriteLine($"{type}: relative L2 against attention over the unquantized K/V {err:E2}");
        Assert.That(err, Is.LessThan(type == KvCacheDataType.Q8_0 ? 1e-2 : 6e-2));
        Assert.That(err, Is.GreaterThan(1e-4), "the values were quantized");
    }

    [Test]
    public void StorageWritesBlocksAndTheStorageOverloadReadsThem([ValueSource(nameof(Formats))] KvCacheDataType type)
    {
        var shape = new PagedAttentionShape(4, 2, 64, 4);
        using var storage = new KvCacheStorage(2, 6, 4, 2, 64, type);
        Assert.That(storage.ByteCount, Is.EqualTo(2L * 2 * 6 * 4 * 2 * 2 * 34));
        Assert.That(KvCacheStorage.GetTokenByteCount(2, 2, 64, type), Is.EqualTo(2L * 2 * 2 * 2 * 34));
        var rng = new Random(8);
        int[] table = [4, 1, 3];
        var written = new float[2][];
        for (int layer = 0; layer < 2; layer++)
        {
            written[layer] = RandomArray(rng, 12 * shape.KvStride);
            for (int p = 0; p < 12; p++)
                storage.Write(layer, table[p / 4], p % 4, written[layer].AsSpan(p * shape.KvStride, shape.KvStride), RandomArray(rng, shape.KvStride));
        }
        var q = RandomArray(rng, 3 * shape.QueryStride);
        using var pool = new WorkerPool(2);
        for (int layer = 0; layer < 2; layer++)
        {
            // The stored bytes are the format's quantization of what was written.
            var expectedRow = new byte[KvBlockFormat.ByteCount(type, shape.KvStride)];
            KvBlockFormat.Quantize(type, written[layer].AsSpan(5 * shape.KvStride, shape.KvStride), expectedRow);
            int at = (table[1] * 4 + 1) * expectedRow.Length;
            Assert.That(storage.GetKeyBytes(layer).Slice(at, expectedRow.Length).ToArray(), Is.EqualTo(expectedRow));

            var viaStorage = Poisoned(q.Length);
            var direct = Poisoned(q.Length);
            PagedAttention.Forward(shape, q, storage, layer, table, 9, viaStorage, pool);
            QuantizedKvAttention.Forward(shape, q, storage.GetKeyBytes(layer), storage.GetValueBytes(layer), type, table, 9, direct, new float[QuantizedKvAttention.GetScratchLength(shape, 12)]);
            Assert.That(viaStorage, Is.EqualTo(direct));
            Assert.That(direct.All(float.IsFinite), Is.True);
        }
        Assert.Throws<InvalidOperationException>(() => storage.GetKeys<Half>(0));
    }

    [Test]
    public void HeadSizeNotAMultipleOf32_IsRefused([ValueSource(nameof(Formats))] KvCacheDataType type)
    {
        var e = Assert.Throws<NotSupportedException>(() => new KvCacheStorage(1, 4, 16, 2, 40, type).Dispose());
        Assert.That(e!.Message, Does.Contain("multiple of 32"));
        var shape = new PagedAttentionShape(2, 2, 40, 16);
        Assert.Throws<NotSupportedException>(() => QuantizedKvAttention.Forward(shape, new float[80], new byte[16 * 2 * 40], new byte[16 * 2 * 40], type, [0], 0, new float[80], new float[200]));
        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedKvAttention.Forward(new PagedAttentionShape(2, 2, 32, 16), new float[64], new byte[16 * 2 * 34], new byte[16 * 2 * 34], KvCacheDataType.Float16, [0], 0, new float[64], new float[200]));
    }

    [Test]
    public void RejectsShortBlockTableAndOutOfRangeBlocks()
    {
        var shape = new PagedAttentionShape(2, 1, 32, 4);
        var cache = new byte[4 * 4 * 34];
        var q = new float[2 * shape.QueryStride];
        var o = new float[q.Length];
        var type = KvCacheDataType.Q8_0;
        Assert.Throws<ArgumentException>(() => QuantizedKvAttention.Forward(shape, q, cache, cache, type, [0], 3, o, new float[200]));
        Assert.Throws<ArgumentException>(() => QuantizedKvAttention.Forward(shape, q, cache, cache, type, [0, 1], 3, o, new float[2]));
        Assert.Throws<ArgumentException>(() => QuantizedKvAttention.Forward(shape, q, cache, cache, type, [0, 9], 3, o, new float[200]));
        Assert.Throws<ArgumentException>(() => QuantizedKvAttention.Forward(shape, q, cache, cache.AsSpan(1), type, [0, 1], 3, o, new float[200]));
    }

    /// <summary>
    /// Every chunk of <see cref="PagedAttentionHarness.Chunks"/>, single-threaded and (on the vector path) pooled, against
    /// the float64 reference over the dequantized cache, rows before the window with NaN scales
    /// (<see cref="PagedAttentionHarness.CompareChunks"/>). Returns the largest scaled difference.
    /// </summary>
    private static double Compare(KvCacheDataType type, PagedAttentionShape shape, int seed, bool vectors)
    {
        var rng = new Random(seed);
        int bs = shape.BlockSize, logicalBlocks = (MaxContext + bs - 1) / bs, blockCount = logicalBlocks + 3, nanBlock = blockCount - 1;
        var order = Enumerable.Range(0, blockCount - 1).OrderBy(_ => rng.Next()).Take(logicalBlocks).ToArray();
        var keys = RandomCache(type, rng, blockCount * bs * shape.KvStride);
        var values = RandomCache(type, rng, blockCount * bs * shape.KvStride);
        double worst = CompareChunks(shape, rng, () => new BlockCacheUnderTest(shape, type, keys, values, vectors), order, nanBlock, pooled: vectors);
        TestContext.Out.WriteLine($"{type} {shape}: largest difference {worst:E2} of the row's largest value");
        return worst;
    }

    private static byte[] RandomCache(KvCacheDataType type, Random rng, int values)
    {
        // Rows of different sizes, so the blocks' scales differ by orders of magnitude.
        var f = new float[values];
        for (int r = 0; r < values / 32; r++)
        {
            float size = MathF.Pow(10, (float)rng.NextDouble() * 3 - 2);
            for (int i = 0; i < 32; i++) f[r * 32 + i] = (float)(rng.NextDouble() * 2 - 1) * size;
        }
        var bytes = new byte[KvBlockFormat.ByteCount(type, values)];
        KvBlockFormat.Quantize(type, f, bytes);
        return bytes;
    }
}
