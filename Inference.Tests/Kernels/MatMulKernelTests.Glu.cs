using ILGPU;
using ILGPU.Runtime;
using Inference.Backends.Cpu;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;
using Inference.Loading;

namespace Inference.Tests.Kernels;

/// <summary>
/// The gate/up row kernels with SwiGLU/GeGLU in their epilogue (<see cref="LayerKernels.TryMatMulGlu(GluActivation, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, int, int, int)"/>)
/// against the unfused kernels (two products then the activation: the same bits) and a float64 reference, F32, F16,
/// Q8_0 and block types, the GPU thread layout and the one-thread layout, batches around the tile of 4 and past the chunk
/// of 16, batch invariance, NaN-poisoned outputs with a sentinel past the end.
/// </summary>
public partial class MatMulKernelTests
{
    private static IEnumerable<TestCaseData> GluCases()
    {
        foreach (var type in new[] { GgmlType.F32, GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q6_K })
        {
            int cols = type is GgmlType.Q4_K or GgmlType.Q6_K ? 512 : 96;
            yield return new TestCaseData(Layout.Warp32Rows4, type, GluActivation.Silu, 7, cols, 6);
            yield return new TestCaseData(Layout.Warp32Rows4, type, GluActivation.GeluTanh, 5, cols, 1);
        }
        yield return new TestCaseData(Layout.Warp32Rows4, GgmlType.F16, GluActivation.Silu, 6, 2048, 17);
        yield return new TestCaseData(Layout.Thread1Row, GgmlType.F32, GluActivation.GeluTanh, 9, 96, 5);
        yield return new TestCaseData(Layout.Thread1Row, GgmlType.F16, GluActivation.Silu, 9, 96, 5);
        yield return new TestCaseData(Layout.Thread1Row, GgmlType.Q8_0, GluActivation.Silu, 5, 64, 3);
        yield return new TestCaseData(Layout.Thread16Rows, GgmlType.Q4_K, GluActivation.Silu, 17, 256, 2);
    }

    [TestCaseSource(nameof(GluCases))]
    public void GluKernels_EqualTheUnfusedKernels_MatchFloat64_AndAreBatchInvariant(Layout layout, GgmlType type, GluActivation activation, int rows, int cols, int batch)
    {
        var kernels = Kernel[layout].Value;
        var acc = kernels.Accelerator;
        var rng = new Random(HashCode.Combine(layout, type, activation, rows, cols, batch));
        var (gateBytes, gateWeights) = GluWeights(rng, type, rows, cols);
        var (upBytes, upWeights) = GluWeights(rng, type, rows, cols);
        var x = PagedAttentionCase.Random(rng, batch * cols, 2f);
        using var gb = acc.Allocate1D(gateBytes);
        using var ub = acc.Allocate1D(upBytes);
        using var xb = acc.Allocate1D(x);

        var fused = RunGlu(kernels, type, activation, gb.View, ub.View, xb.View, rows, cols, batch);

        // unfused: the two products, then the activation in place
        using var g = acc.Allocate1D(PagedAttentionCase.Poisoned(batch * rows));
        using var u = acc.Allocate1D(PagedAttentionCase.Poisoned(batch * rows));
        Product(kernels, type, gb.View, xb.View, g.View, rows, cols, batch);
        Product(kernels, type, ub.View, xb.View, u.View, rows, cols, batch);
        if (activation == GluActivation.Silu) kernels.SwiGlu(g.View, u.View, g.View, batch * rows);
        else kernels.GeGlu(g.View, u.View, g.View, batch * rows);
        acc.Synchronize();
        Assert.That(fused, Is.EqualTo(g.GetAsArray1D()), "fused against the two products and the activation: the same bits");

        var expected = new float[batch * rows];
        for (int b = 0; b < batch; b++)
        {
            for (int r = 0; r < rows; r++)
            {
                double gs = 0, us = 0;
                for (int c = 0; c < cols; c++)
                {
                    gs += (double)gateWeights[r * cols + c] * x[b * cols + c];
                    us += (double)upWeights[r * cols + c] * x[b * cols + c];
                }
                double act = activation == GluActivation.Silu
                    ? gs / (1 + Math.Exp(-gs))
                    : 0.5 * gs * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (gs + 0.044715 * gs * gs * gs)));
                expected[b * rows + r] = (float)(act * us);
            }
        }
        Assert.That(ReferenceCompare.RelativeL2(fused, expected), Is.LessThan(1e-5), "against float64");

        // the first items alone, and the last item alone at its offset: the same bits
        for (int part = 1; part < batch; part += Math.Max(1, batch / 3))
            Assert.That(RunGlu(kernels, type, activation, gb.View, ub.View, xb.View, rows, cols, part), Is.EqualTo(fused[..(part * rows)]), $"batch {part}");
        var last = RunGlu(kernels, type, activation, gb.View, ub.View, ((ArrayView<float>)xb.View).SubView((long)(batch - 1) * cols), rows, cols, 1);
        Assert.That(last, Is.EqualTo(fused[((batch - 1) * rows)..]), "the last item alone");
    }

    /// <summary>Shapes the row kernels do not take launch nothing and say so (the executor then runs the unfused kernels).</summary>
    [Test]
    public void GluKernels_RefuseUnalignedInputs()
    {
        var kernels = Kernel[Layout.Warp32Rows4].Value;
        var acc = kernels.Accelerator;
        using var wb = acc.Allocate1D(new float[4 * 96 + 1]);
        using var xb = acc.Allocate1D(PagedAttentionCase.Random(new Random(1), 96 + 1));
        using var yb = acc.Allocate1D(PagedAttentionCase.Poisoned(4));
        ArrayView<float> w = wb.View;
        Assert.That(kernels.TryMatMulGlu(GluActivation.Silu, w.SubView(0, 4 * 96), w.SubView(0, 4 * 96), xb.View.SubView(1, 96), yb.View, 4, 96, 1), Is.False, "input off 16 bytes");
        Assert.That(kernels.TryMatMulGlu(GluActivation.Silu, w.SubView(1, 4 * 96), w.SubView(0, 4 * 96), xb.View.SubView(0, 96), yb.View, 4, 96, 1), Is.False, "gate off 16 bytes");
        acc.Synchronize();
        Assert.That(yb.GetAsArray1D(), Is.All.NaN, "nothing written");
    }

    /// <summary>Random weights of <paramref name="type"/>: the bytes the kernels read and the values they stand for.</summary>
    private static (byte[] Bytes, float[] Values) GluWeights(Random rng, GgmlType type, int rows, int cols)
    {
        var w = PagedAttentionCase.Random(rng, rows * cols, 0.5f);
        switch (type)
        {
            case GgmlType.F32:
                return (System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.AsSpan()).ToArray(), w);
            case GgmlType.F16:
            {
                var h = w.Select(v => (System.Half)v).ToArray();
                return (System.Runtime.InteropServices.MemoryMarshal.AsBytes(h.AsSpan()).ToArray(), h.Select(v => (float)v).ToArray());
            }
            case GgmlType.Q8_0:
            {
                var q = ReferenceMatMul.QuantizeQ8_0(w);
                return (q, ReferenceMatMul.DequantizeQ8_0(q));
            }
            default:
            {
                var blocks = RandomBlocks(rng, type, rows, cols);
                int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
                var values = new float[rows * cols];
                for (int r = 0; r < rows; r++) Dequantize.Row(type, blocks.AsSpan(r * rowBytes, rowBytes), values.AsSpan(r * cols, cols));
                return (blocks, values);
            }
        }
    }

    private static float[] RunGlu(LayerKernels kernels, GgmlType type, GluActivation activation, ArrayView<byte> gate, ArrayView<byte> up, ArrayView<float> x,
        int rows, int cols, int batch)
    {
        using var yb = kernels.Accelerator.Allocate1D(PagedAttentionCase.Poisoned(batch * rows + 1));
        var y = yb.View.SubView(0, (long)batch * rows);
        bool ran = type switch
        {
            GgmlType.F32 => kernels.TryMatMulGlu(activation, gate.Cast<float>(), up.Cast<float>(), x, y, rows, cols, batch),
            GgmlType.F16 => kernels.TryMatMulGlu(activation, gate.Cast<ILGPU.Half>(), up.Cast<ILGPU.Half>(), x, y, rows, cols, batch),
            _ => kernels.TryMatMulGlu(activation, type, gate, up, x, y, rows, cols, batch),
        };
        Assert.That(ran, Is.True, "the fused kernel takes the shape");
        kernels.Accelerator.Synchronize();
        var result = yb.GetAsArray1D();
        Assert.That(result[^1], Is.NaN, "the element past the output was written");
        Assert.That(result[..^1], Has.None.NaN, "an output was left unwritten");
        return result[..^1];
    }

    private static void Product(LayerKernels kernels, GgmlType type, ArrayView<byte> w, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        switch (type)
        {
            case GgmlType.F32: kernels.MatMul(w.Cast<float>(), x, y, rows, cols, batch); break;
            case GgmlType.F16: kernels.MatMul(w.Cast<ILGPU.Half>(), x, y, rows, cols, batch); break;
            case GgmlType.Q8_0: kernels.MatMulQ8_0(w, x, y, rows, cols, batch); break;
            default: kernels.MatMulBlocks(type, w, x, y, rows, cols, batch); break;
        }
    }
}
