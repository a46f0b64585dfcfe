using ILGPU.Runtime;
using Inference.Kernels;
using Inference.Kernels.Attention;
using Inference.Kernels.Reference;

namespace Inference.Tests.Kernels;

/// <summary>
/// ILGPU paged attention on the CPU accelerator against <see cref="ReferenceAttention"/>.
/// The case matrix covers MHA/GQA/MQA, head dims 32, 64 and 128, block sizes 8/16/32, f32, f16, Q8_0 and FP8 KV,
/// contexts from 1 across block and tile boundaries to ≥ 1000, and several partitions per sequence. The block formats
/// are also checked for the same bits as the f32 kernel over their dequantized rows, and for batch invariance.
/// </summary>
public class PagedAttentionKernelTests
{
    // heads, kvHeads, headDim, blockSize, storage, partitionSize, contexts
    private static readonly object[] DecodeCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, 64, new[] { 1, 15, 16, 17, 130 } },
        new object[] { 8, 2, 128, 8, KvStorage.F16, 64, new[] { 1, 8, 9, 100 } },
        new object[] { 8, 1, 64, 32, KvStorage.F32, 256, new[] { 31, 32, 33, 1000 } },
        new object[] { 8, 2, 64, 32, KvStorage.F16, 512, new[] { 1029 } },
        new object[] { 8, 8, 128, 32, KvStorage.F16, 128, new[] { 1, 64, 65 } },
        new object[] { 8, 1, 128, 16, KvStorage.F16, 128, new[] { 300, 2 } },
        new object[] { 8, 8, 64, 16, KvStorage.Q8_0, 64, new[] { 1, 15, 16, 17, 130 } },
        new object[] { 8, 2, 128, 8, KvStorage.Fp8, 64, new[] { 1, 8, 9, 100 } },
        new object[] { 8, 1, 64, 32, KvStorage.Q8_0, 256, new[] { 31, 32, 33, 1000 } },
        new object[] { 8, 2, 64, 16, KvStorage.Fp8, 512, new[] { 1029 } },
        new object[] { 8, 1, 128, 16, KvStorage.Fp8, 128, new[] { 300, 2 } },
        new object[] { 8, 8, 32, 8, KvStorage.Q8_0, 64, new[] { 40, 7 } },
    ];

    // heads, kvHeads, headDim, blockSize, storage, contexts, chunk lengths
    private static readonly object[] PrefillCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, new[] { 20, 37 }, new[] { 20, 5 } },
        new object[] { 8, 2, 128, 8, KvStorage.F16, new[] { 9, 70 }, new[] { 9, 33 } },
        new object[] { 8, 1, 64, 32, KvStorage.F32, new[] { 1, 1000 }, new[] { 1, 17 } },
        new object[] { 8, 2, 64, 16, KvStorage.F16, new[] { 130 }, new[] { 66 } },
        new object[] { 8, 8, 64, 16, KvStorage.Q8_0, new[] { 20, 37 }, new[] { 20, 5 } },
        new object[] { 8, 2, 128, 8, KvStorage.Fp8, new[] { 9, 70 }, new[] { 9, 33 } },
        new object[] { 8, 1, 64, 32, KvStorage.Q8_0, new[] { 1, 1000 }, new[] { 1, 17 } },
        new object[] { 8, 2, 32, 16, KvStorage.Fp8, new[] { 130 }, new[] { 66 } },
    ];

    // heads, kvHeads, headDim, blockSize, storage, partitionSize, contexts, window
    private static readonly object[] WindowedDecodeCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, 64, new[] { 1, 15, 16, 17, 130 }, 1 },
        new object[] { 8, 2, 128, 8, KvStorage.F16, 64, new[] { 1, 8, 9, 100 }, 9 },
        new object[] { 8, 1, 64, 32, KvStorage.F32, 256, new[] { 31, 32, 33, 1000 }, 300 },
        new object[] { 8, 2, 64, 16, KvStorage.F16, 128, new[] { 1029, 5 }, 129 },
        new object[] { 8, 2, 64, 16, KvStorage.Q8_0, 128, new[] { 1029, 5 }, 129 },
        new object[] { 8, 1, 128, 8, KvStorage.Fp8, 64, new[] { 100, 3 }, 9 },
    ];

    // heads, kvHeads, headDim, blockSize, storage, contexts, chunk lengths, window
    private static readonly object[] WindowedPrefillCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, new[] { 20, 37 }, new[] { 20, 5 }, 1 },
        new object[] { 8, 2, 128, 8, KvStorage.F16, new[] { 9, 70 }, new[] { 9, 33 }, 17 },
        new object[] { 8, 1, 64, 32, KvStorage.F32, new[] { 1, 1000 }, new[] { 1, 100 }, 64 },
        new object[] { 8, 2, 64, 16, KvStorage.F16, new[] { 130 }, new[] { 66 }, 100 },
        new object[] { 8, 2, 64, 16, KvStorage.Fp8, new[] { 130 }, new[] { 66 }, 100 },
        new object[] { 8, 1, 64, 8, KvStorage.Q8_0, new[] { 9, 70 }, new[] { 9, 33 }, 17 },
    ];

    // heads, kvHeads, headDim, blockSize, storage, partitionSize, contexts, window, soft cap (gemma2's attention logit soft-capping;
    // small caps, so that they bend these random scores)
    private static readonly object[] SoftCappedDecodeCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, 64, new[] { 1, 17, 130 }, 0, 0.3f },
        new object[] { 8, 2, 128, 8, KvStorage.F16, 64, new[] { 9, 100 }, 9, 0.5f },
        new object[] { 8, 1, 64, 32, KvStorage.F32, 256, new[] { 33, 1000 }, 0, 0.2f },
    ];

    // heads, kvHeads, headDim, blockSize, storage, contexts, chunk lengths, window, soft cap
    private static readonly object[] SoftCappedPrefillCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, new[] { 20, 37 }, new[] { 20, 5 }, 0, 0.3f },
        new object[] { 8, 2, 128, 8, KvStorage.F16, new[] { 9, 70 }, new[] { 9, 33 }, 17, 0.5f },
        new object[] { 8, 1, 64, 32, KvStorage.F32, new[] { 1, 300 }, new[] { 1, 40 }, 0, 0.2f },
    ];

    [TestCaseSource(nameof(DecodeCases))]
    public void DecodeMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int partitionSize, int[] contexts) =>
        DecodeMatchesReference(heads, kvHeads, headDim, blockSize, storage, partitionSize, contexts, 0);

    [TestCaseSource(nameof(WindowedDecodeCases))]
    public void DecodeMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int partitionSize, int[] contexts, int window) =>
        DecodeMatchesReference(heads, kvHeads, headDim, blockSize, storage, partitionSize, contexts, window, 0f);

    [TestCaseSource(nameof(SoftCappedDecodeCases))]
    public void DecodeMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int partitionSize, int[] contexts, int window, float softCap)
    {
        var c = PagedAttentionCase.Create(heads, kvHeads, headDim, blockSize, contexts, storage, seed: heads * 7 + kvHeads + headDim + blockSize);
        var s = c.Shape;
        var q = PagedAttentionCase.Random(new Random(11), c.SeqCount * s.HeadCount * s.HeadDim);
        var expected = new float[q.Length];
        ReferenceAttention.Decode(s, q, c.K, c.V, c.BlockTables, c.ContextLens, expected, window, softCap);
        if (softCap > 0)
        {
            var uncapped = new float[q.Length];
            ReferenceAttention.Decode(s, q, c.K, c.V, c.BlockTables, c.ContextLens, uncapped, window);
            Assert.That(ReferenceCompare.RelativeL2(uncapped, expected), Is.GreaterThan(1e-3), "the cap bends these scores");
        }
        // Rows before each window become NaN: a kernel that reads one puts a NaN in the output.
        for (int seq = 0; seq < c.SeqCount; seq++) c.PoisonBefore(seq, window > 0 ? Math.Max(0, c.ContextLens[seq] - window) : 0);

        var actual = Decode(c, storage, q, c.BlockTables, c.ContextLens, partitionSize, window, softCap);
        PagedAttentionCase.AssertClose(expected, actual, 2e-5f, 1e-4f, "decode");
        if (PagedAttentionCase.BlockType(storage) is not null)
            AssertReadsBlocksExactly(actual, Decode(c, KvStorage.F32, q, c.BlockTables, c.ContextLens, partitionSize, window));
    }

    [TestCaseSource(nameof(PrefillCases))]
    public void PrefillMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int[] contexts, int[] chunks) =>
        PrefillMatchesReference(heads, kvHeads, headDim, blockSize, storage, contexts, chunks, 0);

    [TestCaseSource(nameof(WindowedPrefillCases))]
    public void PrefillMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int[] contexts, int[] chunks, int window) =>
        PrefillMatchesReference(heads, kvHeads, headDim, blockSize, storage, contexts, chunks, window, 0f);

    [TestCaseSource(nameof(SoftCappedPrefillCases))]
    public void PrefillMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int[] contexts, int[] chunks, int window, float softCap)
    {
        var c = PagedAttentionCase.Create(heads, kvHeads, headDim, blockSize, contexts, storage, seed: heads * 5 + kvHeads + headDim + blockSize);
        var s = c.Shape;
        var starts = new int[chunks.Length + 1];
        for (int i = 0; i < chunks.Length; i++) starts[i + 1] = starts[i] + chunks[i];
        var q = PagedAttentionCase.Random(new Random(13), starts[^1] * s.HeadCount * s.HeadDim);
        var expected = new float[q.Length];
        ReferenceAttention.Prefill(s, q, c.K, c.V, c.BlockTables, starts, c.ContextLens, expected, window, softCap);
        for (int seq = 0; seq < c.SeqCount; seq++)
            c.PoisonBefore(seq, window > 0 ? Math.Max(0, c.ContextLens[seq] - chunks[seq] + 1 - window) : 0);

        var actual = Prefill(c, storage, q, c.BlockTables, starts, c.ContextLens, window, softCap);
        PagedAttentionCase.AssertClose(expected, actual, 2e-5f, 1e-4f, "prefill");
        if (PagedAttentionCase.BlockType(storage) is not null)
            AssertReadsBlocksExactly(actual, Prefill(c, KvStorage.F32, q, c.BlockTables, starts, c.ContextLens, window));
    }

    /// <summary>
    /// The block formats, batched and each sequence alone: a sequence's output bits do not depend on its batch
    /// (decode and prefill).
    /// </summary>
    [TestCase(KvStorage.Q8_0, 8, 2)]
    [TestCase(KvStorage.Fp8, 8, 1)]
    [TestCase(KvStorage.Fp8, 4, 4)]
    public void BlockFormats_AreBatchInvariant(KvStorage storage, int heads, int kvHeads)
    {
        int[] contexts = [70, 1, 33, 130];
        int[] chunks = [5, 1, 33, 17];
        var c = PagedAttentionCase.Create(heads, kvHeads, 64, 16, contexts, storage, seed: 21 + heads + kvHeads);
        var s = c.Shape;
        var q = PagedAttentionCase.Random(new Random(17), chunks.Sum() * s.HeadCount * s.HeadDim);
        var starts = new int[chunks.Length + 1];
        for (int i = 0; i < chunks.Length; i++) starts[i + 1] = starts[i] + chunks[i];
        int rowFloats = s.HeadCount * s.HeadDim;
        var decodeQ = q.AsSpan(0, contexts.Length * rowFloats).ToArray();
        var decoded = Decode(c, storage, decodeQ, c.BlockTables, contexts, 64, 0);
        var prefilled = Prefill(c, storage, q, c.BlockTables, starts, contexts, 0);
        for (int seq = 0; seq < contexts.Length; seq++)
        {
            var table = c.BlockTables.AsSpan(seq * s.MaxBlocksPerSeq, s.MaxBlocksPerSeq).ToArray();
            var alone = Decode(c, storage, decodeQ.AsSpan(seq * rowFloats, rowFloats).ToArray(), table, [contexts[seq]], 64, 0);
            AssertReadsBlocksExactly(decoded.AsSpan(seq * rowFloats, rowFloats).ToArray(), alone);
            var chunkQ = q.AsSpan(starts[seq] * rowFloats, chunks[seq] * rowFloats).ToArray();
            var aloneChunk = Prefill(c, storage, chunkQ, table, [0, chunks[seq]], [contexts[seq]], 0);
            AssertReadsBlocksExactly(prefilled.AsSpan(starts[seq] * rowFloats, chunks[seq] * rowFloats).ToArray(), aloneChunk);
        }
    }

    /// <summary>
    /// What the padded decode steps do: reserve every bucket at the capture length, then run each; no run allocates (a
    /// captured CUDA graph keeps the partial buffers' addresses), and each output matches the reference. A run past the
    /// reserve grows the buffers (the count sees allocations).
    /// </summary>
    [TestCase(8, 2, 64, 16, 64, 130)]
    [TestCase(8, 1, 128, 8, 128, 300)]
    [TestCase(8, 8, 64, 32, 512, 1029)]
    public void RunAfterReserveOfItsCounts_AllocatesNothing(int heads, int kvHeads, int headDim, int blockSize, int partitionSize, int captureLength)
    {
        int[] contexts = [captureLength - 3, 1, captureLength, 17];
        int[] buckets = [1, 2, 4];
        var c = PagedAttentionCase.Create(heads, kvHeads, headDim, blockSize, contexts, KvStorage.F32, seed: 31 + heads + kvHeads + headDim);
        var s = c.Shape;
        int rowFloats = s.HeadCount * s.HeadDim;
        var q = PagedAttentionCase.Random(new Random(19), contexts.Length * rowFloats);
        var expected = new float[q.Length];
        ReferenceAttention.Decode(s, q, c.K, c.V, c.BlockTables, c.ContextLens, expected);
        var acc = KernelTestAccelerator.Cpu;
        using var qBuf = acc.Allocate1D(q);
        using var tableBuf = acc.Allocate1D(c.BlockTables);
        using var lenBuf = acc.Allocate1D(c.ContextLens);
        using var k = acc.Allocate1D(c.K);
        using var v = acc.Allocate1D(c.V);
        using var kernel = new PagedDecodeAttention<float, F32Element>(acc, s, partitionSize);
        foreach (int b in buckets) kernel.Reserve(b, captureLength);
        int reserved = kernel.ScratchAllocations;
        Assert.That(reserved, Is.GreaterThan(0));
        foreach (int b in buckets)
        {
            using var outBuf = acc.Allocate1D(PagedAttentionCase.Poisoned(b * rowFloats));
            kernel.Run(qBuf.View, k.View, v.View, tableBuf.View, lenBuf.View, b, captureLength, outBuf.View);
            acc.Synchronize();
            Assert.That(kernel.ScratchAllocations, Is.EqualTo(reserved), $"bucket {b}");
            PagedAttentionCase.AssertClose(expected.AsSpan(0, b * rowFloats).ToArray(), outBuf.GetAsArray1D(), 2e-5f, 1e-4f, $"bucket {b}");
        }
        kernel.Reserve(8, captureLength);
        Assert.That(kernel.ScratchAllocations, Is.GreaterThan(reserved), "a larger reserve grows the buffers");
    }

    [Test]
    public void BlockFormats_RefuseAHeadSizeThatIsNotWholeBlocks()
    {
        var shape = new AttentionShape(4, 2, 48, 16, 4);
        var e = Assert.Throws<ArgumentException>(() => _ = new PagedDecodeAttention<byte, Q8_0Kv>(KernelTestAccelerator.Cpu, shape));
        Assert.That(e!.Message, Does.Contain("multiple of 32"));
        Assert.Throws<ArgumentException>(() => _ = new PagedPrefillAttention<byte, Fp8E4M3Kv>(KernelTestAccelerator.Cpu, shape));
    }

    /// <summary>Same bits: a kernel reading the blocks computes what it computes over the dequantized f32 rows.</summary>
    private static void AssertReadsBlocksExactly(float[] actual, float[] expected)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length));
        for (int i = 0; i < actual.Length; i++)
            if (BitConverter.SingleToInt32Bits(actual[i]) != BitConverter.SingleToInt32Bits(expected[i]))
                Assert.Fail($"element {i}: {actual[i]:R} against {expected[i]:R}");
    }

    /// <summary>The decode kernel over the case's cache stored as <paramref name="storage"/> (output poisoned first).</summary>
    internal static float[] Decode(PagedAttentionCase c, KvStorage storage, float[] q, int[] tables, int[] lens, int partitionSize, int window, float softCap = 0f) =>
        storage switch
        {
            KvStorage.F32 => Decode<float, F32Element>(c, c.K, c.V, q, tables, lens, partitionSize, window, softCap),
            KvStorage.F16 => Decode<ILGPU.Half, F16Element>(c, ToIlgpuHalf(c.KHalf), ToIlgpuHalf(c.VHalf), q, tables, lens, partitionSize, window, softCap),
            KvStorage.Q8_0 => Decode<byte, Q8_0Kv>(c, c.KBytes, c.VBytes, q, tables, lens, partitionSize, window, softCap),
            _ => Decode<byte, Fp8E4M3Kv>(c, c.KBytes, c.VBytes, q, tables, lens, partitionSize, window, softCap),
        };

    private static float[] Decode<TKv, TConv>(PagedAttentionCase c, TKv[] kCache, TKv[] vCache, float[] q, int[] tables, int[] lens, int partitionSize, int window, float softCap)
        where TKv : unmanaged
        where TConv : struct, IKvRowFormat<TKv>
    {
        var acc = KernelTestAccelerator.Cpu;
        using var qBuf = acc.Allocate1D(q);
        using var tableBuf = acc.Allocate1D(tables);
        using var lenBuf = acc.Allocate1D(lens);
        using var outBuf = acc.Allocate1D(PagedAttentionCase.Poisoned(q.Length));
        using var k = acc.Allocate1D(kCache);
        using var v = acc.Allocate1D(vCache);
        using var kernel = new PagedDecodeAttention<TKv, TConv>(acc, c.Shape, partitionSize);
        kernel.Run(qBuf.View, k.View, v.View, tableBuf.View, lenBuf.View, lens.Length, lens.Max(), outBuf.View, window, softCap);
        acc.Synchronize();
        return outBuf.GetAsArray1D();
    }

    /// <summary>The prefill kernel over the case's cache stored as <paramref name="storage"/> (output poisoned first).</summary>
    internal static float[] Prefill(PagedAttentionCase c, KvStorage storage, float[] q, int[] tables, int[] starts, int[] lens, int window, float softCap = 0f) =>
        storage switch
        {
            KvStorage.F32 => Prefill<float, F32Element>(c, c.K, c.V, q, tables, starts, lens, window, softCap),
            KvStorage.F16 => Prefill<ILGPU.Half, F16Element>(c, ToIlgpuHalf(c.KHalf), ToIlgpuHalf(c.VHalf), q, tables, starts, lens, window, softCap),
            KvStorage.Q8_0 => Prefill<byte, Q8_0Kv>(c, c.KBytes, c.VBytes, q, tables, starts, lens, window, softCap),
            _ => Prefill<byte, Fp8E4M3Kv>(c, c.KBytes, c.VBytes, q, tables, starts, lens, window, softCap),
        };

    private static float[] Prefill<TKv, TConv>(PagedAttentionCase c, TKv[] kCache, TKv[] vCache, float[] q, int[] tables, int[] starts, int[] lens, int window, float softCap)
        where TKv : unmanaged
        where TConv : struct, IKvRowFormat<TKv>
    {
        var acc = KernelTestAccelerator.Cpu;
        using var qBuf = acc.Allocate1D(q);
        using var tableBuf = acc.Allocate1D(tables);
        using var startBuf = acc.Allocate1D(starts);
        using var lenBuf = acc.Allocate1D(lens);
        using var outBuf = acc.Allocate1D(PagedAttentionCase.Poisoned(q.Length));
        using var k = acc.Allocate1D(kCache);
        using var v = acc.Allocate1D(vCache);
        int maxChunk = 0;
        for (int i = 0; i < lens.Length; i++) maxChunk = Math.Max(maxChunk, starts[i + 1] - starts[i]);
        new PagedPrefillAttention<TKv, TConv>(acc, c.Shape)
            .Run(qBuf.View, k.View, v.View, tableBuf.View, startBuf.View, lenBuf.View, lens.Length, maxChunk, outBuf.View, window, softCap);
        acc.Synchronize();
        return outBuf.GetAsArray1D();
    }

    [Test]
    public void ShapeRejectsBadHeadSplit()
    {
        Assert.Throws<ArgumentException>(() => _ = new AttentionShape(8, 3, 64, 16, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new AttentionShape(8, 2, 0, 16, 4));
    }

    internal static ILGPU.Half[] ToIlgpuHalf(Half[] values)
    {
        var r = new ILGPU.Half[values.Length];
        System.Runtime.InteropServices.MemoryMarshal.Cast<Half, ILGPU.Half>(values).CopyTo(r);
        return r;
    }
}
