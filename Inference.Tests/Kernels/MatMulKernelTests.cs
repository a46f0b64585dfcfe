using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;
using static Inference.Tests.Kernels.LayerKernelTests;

namespace Inference.Tests.Kernels;

/// <summary>
/// The matrix row kernels (warp per row, 16-byte loads, batch tiles) on the CPU accelerator against the reference:
/// batch sizes around the tile of 4 and the chunk of 16, row counts that leave a group partly empty, the narrowest and
/// model-sized rows, every thread layout the launcher picks, and the fallback to the simple kernels.
/// </summary>
public partial class MatMulKernelTests
{
    /// <summary>Thread layouts of the row kernels.</summary>
    public enum Layout
    {
        /// <summary>The GPU layout: 128-thread groups, a 32-lane warp per row, 4 rows per group.</summary>
        Warp32Rows4,

        /// <summary>64-thread groups, a 32-lane warp per row, 2 rows per group (the shared kernel-test device).</summary>
        Warp32Rows2,

        /// <summary>16-thread groups below the warp size: one thread per row, 16 rows per group.</summary>
        Thread16Rows,

        /// <summary>One-thread groups (the GPU engine's layout on the CPU accelerator).</summary>
        Thread1Row,
    }

    private static readonly Lazy<(Context Context, Accelerator Accelerator)> GpuShaped = new(() =>
    {
        // NOTE: the GPU geometry (32-lane warps, 128-thread groups) simulated; costs a second context and kernel set.
        var context = Context.Create(b => b.CPU(new CPUDevice(32, 4, 1)).EnableAlgorithms());
        return (context, context.CreateCPUAccelerator(0));
    });

    internal static readonly Dictionary<Layout, Lazy<LayerKernels>> Kernel = new()
    {
        [Layout.Warp32Rows4] = new(() => new LayerKernels(GpuShaped.Value.Accelerator)),
        [Layout.Warp32Rows2] = LayerKernelTests.Kernels,
        [Layout.Thread16Rows] = new(() => new LayerKernels(KernelTestAccelerator.Cpu, 16)),
        [Layout.Thread1Row] = new(() => new LayerKernels(KernelTestAccelerator.Cpu, 1)),
    };

    private static readonly int[] Batches = [1, 3, 4, 5, 9];

    /// <summary>
    /// (rows, cols): rows never a multiple of 4 or 16; cols 32 (one Q8_0 block), 96, 2048, and 1056, whose rows end
    /// part-way through a four-load step of the warp (the remainder loop after the unrolled one).
    /// </summary>
    private static readonly (int Rows, int Cols)[] Shapes = [(5, 32), (7, 96), (3, 2048), (9, 1056)];

    private static IEnumerable<TestCaseData> GpuLayoutCases()
    {
        foreach (var type in new[] { WeightType.F32, WeightType.F16, WeightType.Q8_0 })
            foreach (var (rows, cols) in Shapes)
                foreach (var batch in Batches)
                    yield return new TestCaseData(type, rows, cols, batch);
    }

    [TestCaseSource(nameof(GpuLayoutCases))]
    public void GpuLayoutMatchesReference(WeightType type, int rows, int cols, int batch) =>
        Check(Layout.Warp32Rows4, type, rows, cols, batch);

    [TestCase(Layout.Warp32Rows2, WeightType.F32, 13, 96, 9)]
    [TestCase(Layout.Warp32Rows2, WeightType.F16, 13, 2048, 5)]
    [TestCase(Layout.Warp32Rows2, WeightType.Q8_0, 13, 32, 3)]
    [TestCase(Layout.Thread16Rows, WeightType.F32, 17, 96, 5)]
    [TestCase(Layout.Thread16Rows, WeightType.F16, 33, 32, 9)]
    [TestCase(Layout.Thread16Rows, WeightType.Q8_0, 17, 2048, 4)]
    [TestCase(Layout.Thread1Row, WeightType.F32, 3, 2048, 3)]
    [TestCase(Layout.Thread1Row, WeightType.F16, 7, 96, 4)]
    [TestCase(Layout.Thread1Row, WeightType.Q8_0, 5, 96, 9)]
    [TestCase(Layout.Thread1Row, WeightType.F32, 5, 36, 3)]      // 9 loads per row: the remainder loop of one thread
    [TestCase(Layout.Thread1Row, WeightType.F16, 5, 40, 5)]      // 5 loads per row
    public void OtherLayoutsMatchReference(Layout layout, WeightType type, int rows, int cols, int batch) =>
        Check(layout, type, rows, cols, batch);

    /// <summary>More items than one group walks: the second grid dimension and a partial last chunk.</summary>
    [TestCase(WeightType.F32, 37)]
    [TestCase(WeightType.F16, 17)]
    [TestCase(WeightType.Q8_0, 33)]
    public void BatchesBeyondOneChunkMatchReference(WeightType type, int batch) =>
        Check(Layout.Warp32Rows4, type, 6, 96, batch);

    /// <summary>Offsets or widths the wide loads cannot serve take the simple kernels, with the same results.</summary>
    [TestCase(WeightType.F32, 96, 1)]     // weights 4 bytes past alignment
    [TestCase(WeightType.F32, 34, 0)]     // cols not a multiple of 4
    [TestCase(WeightType.F16, 96, 4)]     // weights 8 bytes past alignment
    [TestCase(WeightType.F16, 36, 0)]     // cols not a multiple of 8
    [TestCase(WeightType.F32, 96, 0, 1)]  // input 4 bytes past alignment
    [TestCase(WeightType.F16, 96, 0, 2)]  // input 8 bytes past alignment
    [TestCase(WeightType.Q8_0, 96, 0, 3)] // input 12 bytes past alignment
    public void UnalignedInputsFallBackAndMatchReference(WeightType type, int cols, int weightOffset, int xOffset = 0) =>
        Check(Layout.Warp32Rows4, type, 7, cols, 5, weightOffset, xOffset);

    /// <summary>The simple kernels called directly (the benchmark's baseline) on aligned views.</summary>
    [TestCase(WeightType.F32)]
    [TestCase(WeightType.F16)]
    [TestCase(WeightType.Q8_0)]
    public void SimpleKernelsMatchReference(WeightType type) =>
        Check(Layout.Warp32Rows2, type, 7, 96, 5, simple: true);

    [Test]
    public void Q8_0WeightsAtAnOddByteAreRejected()
    {
        var kernels = Kernel[Layout.Warp32Rows4].Value;
        using var wb = kernels.Accelerator.Allocate1D<byte>(1 + 34);
        using var xb = kernels.Accelerator.Allocate1D<float>(32);
        Assert.Throws<ArgumentException>(() => kernels.MatMulQ8_0(Skip<byte>(wb.View, 1), xb.View, xb.View, 1, 32, 1));
        Assert.Throws<ArgumentException>(() => kernels.MatMulQ8_0Simple(Skip<byte>(wb.View, 1), xb.View, xb.View, 1, 32, 1));
    }

    [Test]
    public void LaunchersPickTheLayoutsAndPaths()
    {
        Assert.Multiple(() =>
        {
            Assert.That((Kernel[Layout.Warp32Rows4].Value.RowGroupSize, Kernel[Layout.Warp32Rows4].Value.LanesPerRow), Is.EqualTo((128, 32)));
            Assert.That((Kernel[Layout.Warp32Rows2].Value.RowGroupSize, Kernel[Layout.Warp32Rows2].Value.LanesPerRow), Is.EqualTo((64, 32)));
            Assert.That((Kernel[Layout.Thread16Rows].Value.RowGroupSize, Kernel[Layout.Thread16Rows].Value.LanesPerRow), Is.EqualTo((16, 1)));
            Assert.That((Kernel[Layout.Thread1Row].Value.RowGroupSize, Kernel[Layout.Thread1Row].Value.LanesPerRow), Is.EqualTo((1, 1)));
        });
        var acc = KernelTestAccelerator.Cpu;
        using var fb = acc.Allocate1D<float>(4096);
        using var bb = acc.Allocate1D<byte>(4096);
        ArrayView<float> f = fb.View;
        ArrayView<byte> b = bb.View;
        var h = f.Cast<ILGPU.Half>();
        Assert.Multiple(() =>
        {
            Assert.That(LayerKernels.IsWide(96, 4, f, 16, f), Is.True, "f32");
            Assert.That(LayerKernels.IsWide(96, 4, f.SubView(1), 16, f), Is.False, "f32 weights offset");
            Assert.That(LayerKernels.IsWide(96, 4, f, 16, f.SubView(2)), Is.False, "f32 input offset");
            Assert.That(LayerKernels.IsWide(34, 4, f, 16, f), Is.False, "f32 narrow cols");
            Assert.That(LayerKernels.IsWide(96, 8, h, 16, f), Is.True, "f16");
            Assert.That(LayerKernels.IsWide(96, 8, h.SubView(8), 16, f), Is.True, "f16 offset by 16 bytes");
            Assert.That(LayerKernels.IsWide(36, 8, h, 16, f), Is.False, "f16 narrow cols");
            Assert.That(LayerKernels.IsWide(96, 32, b.SubView(34), 2, f), Is.True, "q8_0 from a block");
            Assert.That(LayerKernels.IsWide(96, 32, b.SubView(1), 2, f), Is.False, "q8_0 odd byte");
        });
    }

    /// <summary>
    /// Runs one case: weights placed <paramref name="weightOffset"/> elements (bytes for Q8_0) and the input
    /// <paramref name="xOffset"/> elements into their buffers after NaN padding, output poisoned with NaN and one poisoned element past the end that must stay untouched.
    /// </summary>
    private static void Check(Layout layout, WeightType type, int rows, int cols, int batch, int weightOffset = 0, int xOffset = 0,
        bool simple = false)
    {
        var kernels = Kernel[layout].Value;
        var acc = kernels.Accelerator;
        var rng = new Random(HashCode.Combine(layout, type, rows, cols, batch, weightOffset, xOffset));
        var w = PagedAttentionCase.Random(rng, rows * cols);
        var x = PagedAttentionCase.Random(rng, batch * cols);
        using var xBuffer = acc.Allocate1D(Enumerable.Repeat(float.NaN, xOffset).Concat(x).ToArray());
        var xv = Skip<float>(xBuffer.View, xOffset);
        using var yb = acc.Allocate1D(PagedAttentionCase.Poisoned(batch * rows + 1));
        var y = yb.View.SubView(0, (long)batch * rows);
        float[] effective;
        switch (type)
        {
            case WeightType.F32:
            {
                effective = w;
                using var wb = acc.Allocate1D(Enumerable.Repeat(float.NaN, weightOffset).Concat(w).ToArray());
                if (simple) kernels.MatMulSimple(Skip<float>(wb.View, weightOffset), xv, y, rows, cols, batch);
                else kernels.MatMul(Skip<float>(wb.View, weightOffset), xv, y, rows, cols, batch);
                acc.Synchronize();
                break;
            }
            case WeightType.F16:
            {
                var half = w.Select(v => (System.Half)v).ToArray();
                effective = half.Select(v => (float)v).ToArray();
                using var wb = acc.Allocate1D(PagedAttentionKernelTests.ToIlgpuHalf(Enumerable.Repeat(System.Half.NaN, weightOffset).Concat(half).ToArray()));
                if (simple) kernels.MatMulSimple(Skip<ILGPU.Half>(wb.View, weightOffset), xv, y, rows, cols, batch);
                else kernels.MatMul(Skip<ILGPU.Half>(wb.View, weightOffset), xv, y, rows, cols, batch);
                acc.Synchronize();
                break;
            }
            default:
            {
                var q = ReferenceMatMul.QuantizeQ8_0(w);
                effective = ReferenceMatMul.DequantizeQ8_0(q);
                using var wb = acc.Allocate1D(new byte[weightOffset].Concat(q).ToArray());
                if (simple) kernels.MatMulQ8_0Simple(Skip<byte>(wb.View, weightOffset), xv, y, rows, cols, batch);
                else kernels.MatMulQ8_0(Skip<byte>(wb.View, weightOffset), xv, y, rows, cols, batch);
                acc.Synchronize();
                break;
            }
        }
        var expected = new float[batch * rows];
        ReferenceMatMul.MatMul(effective, x, expected, rows, cols);
        var actual = yb.GetAsArray1D();
        Assert.That(actual[^1], Is.NaN, "the element past the output was written");
        PagedAttentionCase.AssertClose(expected, actual[..^1], 1e-4f, 1e-4f, $"matmul {type} {layout} {rows}x{cols} batch {batch}");
    }

    private static ArrayView<T> Skip<T>(ArrayView<T> view, int count) where T : unmanaged => view.SubView(count);
}
