using ILGPU.Runtime;
using Inference.Kernels;
using Inference.Kernels.Attention;
using Inference.Kernels.Reference;

namespace Inference.Tests.Kernels;

/// <summary>
/// ILGPU paged attention on the CPU accelerator against <see cref="ReferenceAttention"/>.
/// The case matrix covers MHA/GQA/MQA, head dims 64 and 128, block sizes 8/16/32, f32 and f16 KV, contexts from 1
/// across block and tile boundaries to ≥ 1000, and several partitions per sequence.
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
    ];

    // heads, kvHeads, headDim, blockSize, storage, contexts, chunk lengths
    private static readonly object[] PrefillCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, new[] { 20, 37 }, new[] { 20, 5 } },
        new object[] { 8, 2, 128, 8, KvStorage.F16, new[] { 9, 70 }, new[] { 9, 33 } },
        new object[] { 8, 1, 64, 32, KvStorage.F32, new[] { 1, 1000 }, new[] { 1, 17 } },
        new object[] { 8, 2, 64, 16, KvStorage.F16, new[] { 130 }, new[] { 66 } },
    ];

    // heads, kvHeads, headDim, blockSize, storage, partitionSize, contexts, window
    private static readonly object[] WindowedDecodeCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, 64, new[] { 1, 15, 16, 17, 130 }, 1 },
        new object[] { 8, 2, 128, 8, KvStorage.F16, 64, new[] { 1, 8, 9, 100 }, 9 },
        new object[] { 8, 1, 64, 32, KvStorage.F32, 256, new[] { 31, 32, 33, 1000 }, 300 },
        new object[] { 8, 2, 64, 16, KvStorage.F16, 128, new[] { 1029, 5 }, 129 },
    ];

    // heads, kvHeads, headDim, blockSize, storage, contexts, chunk lengths, window
    private static readonly object[] WindowedPrefillCases =
    [
        new object[] { 8, 8, 64, 16, KvStorage.F32, new[] { 20, 37 }, new[] { 20, 5 }, 1 },
        new object[] { 8, 2, 128, 8, KvStorage.F16, new[] { 9, 70 }, new[] { 9, 33 }, 17 },
        new object[] { 8, 1, 64, 32, KvStorage.F32, new[] { 1, 1000 }, new[] { 1, 100 }, 64 },
        new object[] { 8, 2, 64, 16, KvStorage.F16, new[] { 130 }, new[] { 66 }, 100 },
    ];

    [TestCaseSource(nameof(DecodeCases))]
    public void DecodeMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int partitionSize, int[] contexts) =>
        DecodeMatchesReference(heads, kvHeads, headDim, blockSize, storage, partitionSize, contexts, 0);

    [TestCaseSource(nameof(WindowedDecodeCases))]
    public void DecodeMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int partitionSize, int[] contexts, int window)
    {
        var c = PagedAttentionCase.Create(heads, kvHeads, headDim, blockSize, contexts, storage, seed: heads * 7 + kvHeads + headDim + blockSize);
        var s = c.Shape;
        var q = PagedAttentionCase.Random(new Random(11), c.SeqCount * s.HeadCount * s.HeadDim);
        var expected = new float[q.Length];
        ReferenceAttention.Decode(s, q, c.K, c.V, c.BlockTables, c.ContextLens, expected, window);
        // Rows before each window become NaN: a kernel that reads one puts a NaN in the output.
        for (int seq = 0; seq < c.SeqCount; seq++) c.PoisonBefore(seq, window > 0 ? Math.Max(0, c.ContextLens[seq] - window) : 0);

        var acc = KernelTestAccelerator.Cpu;
        using var qBuf = acc.Allocate1D(q);
        using var tables = acc.Allocate1D(c.BlockTables);
        using var lens = acc.Allocate1D(c.ContextLens);
        using var outBuf = acc.Allocate1D(PagedAttentionCase.Poisoned(q.Length));
        if (storage == KvStorage.F32)
        {
            using var k = acc.Allocate1D(c.K);
            using var v = acc.Allocate1D(c.V);
            using var kernel = new PagedDecodeAttention<float, F32Element>(acc, s, partitionSize);
            kernel.Run(qBuf.View, k.View, v.View, tables.View, lens.View, c.SeqCount, c.MaxContext, outBuf.View, window);
        }
        else
        {
            using var k = acc.Allocate1D(ToIlgpuHalf(c.KHalf));
            using var v = acc.Allocate1D(ToIlgpuHalf(c.VHalf));
            using var kernel = new PagedDecodeAttention<ILGPU.Half, F16Element>(acc, s, partitionSize);
            kernel.Run(qBuf.View, k.View, v.View, tables.View, lens.View, c.SeqCount, c.MaxContext, outBuf.View, window);
        }
        acc.Synchronize();
        PagedAttentionCase.AssertClose(expected, outBuf.GetAsArray1D(), 2e-5f, 1e-4f, "decode");
    }

    [TestCaseSource(nameof(PrefillCases))]
    public void PrefillMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int[] contexts, int[] chunks) =>
        PrefillMatchesReference(heads, kvHeads, headDim, blockSize, storage, contexts, chunks, 0);

    [TestCaseSource(nameof(WindowedPrefillCases))]
    public void PrefillMatchesReference(int heads, int kvHeads, int headDim, int blockSize, KvStorage storage, int[] contexts, int[] chunks, int window)
    {
        var c = PagedAttentionCase.Create(heads, kvHeads, headDim, blockSize, contexts, storage, seed: heads * 5 + kvHeads + headDim + blockSize);
        var s = c.Shape;
        var starts = new int[chunks.Length + 1];
        for (int i = 0; i < chunks.Length; i++) starts[i + 1] = starts[i] + chunks[i];
        var q = PagedAttentionCase.Random(new Random(13), starts[^1] * s.HeadCount * s.HeadDim);
        var expected = new float[q.Length];
        ReferenceAttention.Prefill(s, q, c.K, c.V, c.BlockTables, starts, c.ContextLens, expected, window);
        for (int seq = 0; seq < c.SeqCount; seq++)
            c.PoisonBefore(seq, window > 0 ? Math.Max(0, c.ContextLens[seq] - chunks[seq] + 1 - window) : 0);

        var acc = KernelTestAccelerator.Cpu;
        using var qBuf = acc.Allocate1D(q);
        using var tables = acc.Allocate1D(c.BlockTables);
        using var startBuf = acc.Allocate1D(starts);
        using var lens = acc.Allocate1D(c.ContextLens);
        using var outBuf = acc.Allocate1D(PagedAttentionCase.Poisoned(q.Length));
        if (storage == KvStorage.F32)
        {
            using var k = acc.Allocate1D(c.K);
            using var v = acc.Allocate1D(c.V);
            new PagedPrefillAttention<float, F32Element>(acc, s)
                .Run(qBuf.View, k.View, v.View, tables.View, startBuf.View, lens.View, c.SeqCount, chunks.Max(), outBuf.View, window);
        }
        else
        {
            using var k = acc.Allocate1D(ToIlgpuHalf(c.KHalf));
            using var v = acc.Allocate1D(ToIlgpuHalf(c.VHalf));
            new PagedPrefillAttention<ILGPU.Half, F16Element>(acc, s)
                .Run(qBuf.View, k.View, v.View, tables.View, startBuf.View, lens.View, c.SeqCount, chunks.Max(), outBuf.View, window);
        }
        acc.Synchronize();
        PagedAttentionCase.AssertClose(expected, outBuf.GetAsArray1D(), 2e-5f, 1e-4f, "prefill");
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
