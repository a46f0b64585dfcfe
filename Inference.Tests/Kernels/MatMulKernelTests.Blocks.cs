using ILGPU;
using ILGPU.Runtime;
using Inference.Backends.Cpu;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;
using Inference.Loading;

namespace Inference.Tests.Kernels;

/// <summary>
/// The block row kernels (weights kept in their GGUF type, dequantized in registers) against the float64 product of the
/// host dequantizer's weights (<see cref="Dequantize.Row"/>) and the activations: every kept type; random block bytes
/// (every code and bit pattern) with random non-zero f16 scales; one block, several blocks, rows that end part-way through
/// a warp's step; batches 1..8 and beyond one chunk; batch invariance; NaN-poisoned outputs.
/// </summary>
public partial class MatMulKernelTests
{
    /// <summary>
    /// Relative L2 bound of the f32 kernels against the float64 reference. NOTE: f32 accumulation of a few hundred
    /// products of O(1) values gives ≈ 1e-7; 1e-5 leaves room yet fails on any misread code, scale or min.
    /// </summary>
    private const double BlockRelativeL2 = 1e-5;

    private static IEnumerable<TestCaseData> BlockCases()
    {
        foreach (var type in LayerKernels.KeptBlockTypes.ToArray())
        {
            GgmlTypeInfo.TryGetBlock(type, out int qk, out _);
            // one block; several blocks, whose slots (8 weights) do not fill the warp's last step (32 lanes)
            foreach (var (rows, cols) in new[] { (5, qk), (9, qk == 32 ? 32 * 9 : 256 * 3) })
                yield return new TestCaseData(type, rows, cols, cols == qk);
        }
    }

    /// <summary>Batch 8 against the float64 reference; smaller batches and single items give the same bits.</summary>
    /// <param name="type">The block type.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    /// <param name="everyBatch">Also run every batch 1..7 and each item alone (else the last item alone): the same bits.</param>
    [TestCaseSource(nameof(BlockCases))]
    public void BlockKernels_MatchTheFloat64Reference_AndAreBatchInvariant(GgmlType type, int rows, int cols, bool everyBatch)
    {
        const int maxBatch = 8;
        var kernels = Kernel[Layout.Warp32Rows4].Value;
        var rng = new Random(HashCode.Combine(type, rows, cols));
        var blocks = RandomBlocks(rng, type, rows, cols);
        var x = PagedAttentionCase.Random(rng, maxBatch * cols);
        var expected = Float64Product(type, blocks, x, rows, cols, maxBatch);

        var acc = kernels.Accelerator;
        using var wb = acc.Allocate1D(blocks);
        using var xb = acc.Allocate1D(x);
        float[] full = Run(kernels, type, wb.View, xb.View, rows, cols, maxBatch);
        double l2 = ReferenceCompare.RelativeL2(full, expected);
        Assert.That(l2, Is.LessThan(BlockRelativeL2), $"{type} {rows}x{cols} batch {maxBatch}: relative L2");
        // every smaller batch (the items 0..batch-1), and each item alone at its offset: the same bits
        for (int batch = everyBatch ? 1 : maxBatch; batch < maxBatch; batch++)
        {
            var part = Run(kernels, type, wb.View, xb.View, rows, cols, batch);
            Assert.That(part, Is.EqualTo(full[..(batch * rows)]), $"{type}: batch {batch} against the first items of batch {maxBatch}");
        }
        for (int item = everyBatch ? 0 : maxBatch - 1; item < maxBatch; item++)
        {
            var alone = Run(kernels, type, wb.View, Skip<float>(xb.View, item * cols), rows, cols, 1);
            Assert.That(alone, Is.EqualTo(full.AsSpan(item * rows, rows).ToArray()), $"{type}: item {item} alone");
        }
    }

    /// <summary>The other thread layouts, and batches beyond one chunk of 16 (the second grid dimension).</summary>
    [TestCase(Layout.Warp32Rows2, GgmlType.Q4_K, 7, 512, 19)]
    [TestCase(Layout.Thread16Rows, GgmlType.Q6_K, 17, 256, 5)]
    [TestCase(Layout.Thread1Row, GgmlType.Q4_0, 5, 96, 3)]
    [TestCase(Layout.Thread1Row, GgmlType.Q5_K, 3, 512, 4)]
    [TestCase(Layout.Warp32Rows4, GgmlType.Q5_0, 6, 64, 33)]
    public void BlockKernels_OtherLayoutsAndLongBatches_MatchTheReference(Layout layout, GgmlType type, int rows, int cols, int batch)
    {
        var kernels = Kernel[layout].Value;
        var rng = new Random(HashCode.Combine(layout, type, rows, cols, batch));
        var blocks = RandomBlocks(rng, type, rows, cols);
        var x = PagedAttentionCase.Random(rng, batch * cols);
        using var wb = kernels.Accelerator.Allocate1D(blocks);
        using var xb = kernels.Accelerator.Allocate1D(x);
        var actual = Run(kernels, type, wb.View, xb.View, rows, cols, batch);
        Assert.That(ReferenceCompare.RelativeL2(actual, Float64Product(type, blocks, x, rows, cols, batch)), Is.LessThan(BlockRelativeL2));
    }

    /// <summary>The embedding gather of block rows: the host dequantizer's values (up to the rounding of one fused
    /// multiply-add), rows picked out of order and repeated.</summary>
    [TestCaseSource(nameof(KeptTypes))]
    public void BlockEmbedding_MatchesTheHostDequantizer(GgmlType type)
    {
        GgmlTypeInfo.TryGetBlock(type, out int qk, out int blockBytes);
        int vocab = 6, dim = 2 * qk;
        var kernels = Kernel[Layout.Thread1Row].Value;
        var rng = new Random((int)type);
        var table = RandomBlocks(rng, type, vocab, dim);
        int[] ids = [4, 0, 5, 4];
        using var tb = kernels.Accelerator.Allocate1D(table);
        using var ib = kernels.Accelerator.Allocate1D(ids);
        using var ob = kernels.Accelerator.Allocate1D(PagedAttentionCase.Poisoned(ids.Length * dim + 1));
        kernels.EmbeddingBlocks(type, tb.View, ib.View, ob.View.SubView(0, (long)ids.Length * dim), ids.Length, dim);
        kernels.Accelerator.Synchronize();
        var actual = ob.GetAsArray1D();
        Assert.That(actual[^1], Is.NaN, "the element past the output was written");
        int rowBytes = dim / qk * blockBytes;
        var expected = new float[ids.Length * dim];
        for (int t = 0; t < ids.Length; t++) Dequantize.Row(type, table.AsSpan(ids[t] * rowBytes, rowBytes), expected.AsSpan(t * dim, dim));
        PagedAttentionCase.AssertClose(expected, actual[..^1], 1e-6f, 1e-6f, $"{type} embedding");
    }

    [Test]
    public void BlockKernels_RejectBadShapesAndOddOffsets()
    {
        var kernels = Kernel[Layout.Thread1Row].Value;
        using var wb = kernels.Accelerator.Allocate1D<byte>(1 + 2 * 144);
        using var xb = kernels.Accelerator.Allocate1D<float>(512);
        var w = wb.View;
        Assert.Multiple(() =>
        {
            Assert.Throws<ArgumentException>(() => kernels.MatMulBlocks(GgmlType.Q4_K, Skip<byte>(w, 1), xb.View, xb.View, 1, 256, 1), "odd byte");
            Assert.Throws<ArgumentException>(() => kernels.MatMulBlocks(GgmlType.Q4_K, w, xb.View, xb.View, 1, 128, 1), "half a block");
            Assert.Throws<ArgumentException>(() => kernels.MatMulBlocks(GgmlType.Q4_K, w, xb.View, xb.View, 3, 256, 1), "too few bytes");
            Assert.Throws<ArgumentException>(() => kernels.MatMulBlocks(GgmlType.Q8_0, w, xb.View, xb.View, 1, 32, 1), "Q8_0 has its own kernels");
        });
    }

    [Test]
    public void IQ4Value_IsGgmlsTable()
    {
        for (int code = 0; code < 16; code++) Assert.That(BlockLayout.IQ4Value(code), Is.EqualTo(Dequantize.IQ4Values[code]), $"code {code}");
    }

    private static IEnumerable<GgmlType> KeptTypes() => LayerKernels.KeptBlockTypes.ToArray();

    private static float[] Run(LayerKernels kernels, GgmlType type, ArrayView<byte> w, ArrayView<float> x, int rows, int cols, int batch)
    {
        using var yb = kernels.Accelerator.Allocate1D(PagedAttentionCase.Poisoned(batch * rows + 1));
        kernels.MatMulBlocks(type, w, x, yb.View.SubView(0, (long)batch * rows), rows, cols, batch);
        kernels.Accelerator.Synchronize();
        var y = yb.GetAsArray1D();
        Assert.That(y[^1], Is.NaN, "the element past the output was written");
        Assert.That(y[..^1], Has.None.NaN, "an output was left unwritten");
        return y[..^1];
    }

    /// <summary>y[b, r] = Σ_c W[r, c]·x[b, c] in float64 over <see cref="Dequantize.Row"/>'s weights.</summary>
    private static float[] Float64Product(GgmlType type, byte[] blocks, float[] x, int rows, int cols, int batch)
    {
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var w = new float[cols];
        var y = new float[batch * rows];
        for (int r = 0; r < rows; r++)
        {
            Dequantize.Row(type, blocks.AsSpan(r * rowBytes, rowBytes), w);
            for (int b = 0; b < batch; b++)
            {
                double s = 0;
                for (int c = 0; c < cols; c++) s += (double)w[c] * x[b * cols + c];
                y[b * rows + r] = (float)s;
            }
        }
        return y;
    }

    /// <summary>Byte offsets of the f16 scale (and min) in one block of <paramref name="type"/>.</summary>
    internal static int[] ScaleOffsets(GgmlType type) => type switch
    {
        GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q5_K => [0, 2],
        GgmlType.Q2_K => [80, 82],
        GgmlType.Q3_K => [108],
        GgmlType.Q6_K => [208],
        _ => [0],
    };

    /// <summary>Random block bytes (every code, sign and scale bit pattern) with each f16 scale and min a random finite
    /// value of magnitude 0.01..0.1 and random sign.</summary>
    internal static byte[] RandomBlocks(Random rng, GgmlType type, int rows, int cols)
    {
        GgmlTypeInfo.TryGetBlock(type, out int qk, out int blockBytes);
        int[] halves = ScaleOffsets(type);
        var bytes = new byte[rows * (cols / qk) * blockBytes];
        rng.NextBytes(bytes);
        for (int block = 0; block < bytes.Length; block += blockBytes)
        {
            foreach (int o in halves)
            {
                var h = (System.Half)((rng.NextSingle() * 0.09f + 0.01f) * (rng.Next(2) == 0 ? -1 : 1));
                BitConverter.TryWriteBytes(bytes.AsSpan(block + o, 2), h);
            }
        }
        return bytes;
    }
}
