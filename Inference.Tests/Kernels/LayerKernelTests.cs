using Inference.Models;
using ILGPU.Runtime;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;

namespace Inference.Tests.Kernels;

/// <summary>The non-attention ILGPU kernels on the CPU accelerator against the plain references, random inputs.</summary>
public class LayerKernelTests
{
    internal static readonly Lazy<LayerKernels> Kernels = new(() => new LayerKernels(KernelTestAccelerator.Cpu));
    private static Accelerator Acc => KernelTestAccelerator.Cpu;

    [TestCase(1, 64)]
    [TestCase(3, 200)]
    public void RmsNormMatchesReference(int rows, int dim)
    {
        var rng = new Random(rows * 1000 + dim);
        var x = PagedAttentionCase.Random(rng, rows * dim, 3f);
        var w = PagedAttentionCase.Random(rng, dim);
        var expected = new float[x.Length];
        ReferenceLayer.RmsNorm(x, w, expected, 1e-5f);

        using var xb = Acc.Allocate1D(x);
        using var wb = Acc.Allocate1D(w);
        using var yb = Acc.Allocate1D(PagedAttentionCase.Poisoned(x.Length));
        Kernels.Value.RmsNorm(xb.View, wb.View, yb.View, rows, dim, 1e-5f);
        Acc.Synchronize();
        PagedAttentionCase.AssertClose(expected, yb.GetAsArray1D(), 1e-5f, 1e-4f, "rmsnorm");
    }

    [TestCase(64, 64, RopeLayout.Normal)]
    [TestCase(128, 128, RopeLayout.Neox)]
    [TestCase(128, 64, RopeLayout.Normal)]
    [TestCase(64, 32, RopeLayout.Neox)]
    public void RopeMatchesReference(int headDim, int rotaryDim, RopeLayout layout)
    {
        const int tokens = 5, heads = 4;
        var rng = new Random(headDim + rotaryDim);
        var x = PagedAttentionCase.Random(rng, tokens * heads * headDim);
        int[] positions = [0, 1, 17, 1000, 4095];
        var expected = (float[])x.Clone();
        ReferenceLayer.Rope(expected, positions, heads, headDim, rotaryDim, 10000f, layout);

        using var xb = Acc.Allocate1D(x);
        using var pb = Acc.Allocate1D(positions);
        Kernels.Value.Rope(xb.View, pb.View, tokens, heads, headDim, rotaryDim, 10000f, layout);
        Acc.Synchronize();
        var actual = xb.GetAsArray1D();
        // NOTE: θ reaches 4095 rad; f32 argument rounding alone moves sin/cos by ~2e-4 there.
        PagedAttentionCase.AssertClose(expected, actual, 1e-3f, 1e-3f, "rope");
        Assert.That(actual, Is.Not.EqualTo(x), "rope must change the input");
    }

    [Test]
    public void SwiGluMatchesReference()
    {
        var rng = new Random(5);
        var gate = PagedAttentionCase.Random(rng, 1000, 6f);
        var up = PagedAttentionCase.Random(rng, 1000);
        var expected = new float[1000];
        ReferenceLayer.SwiGlu(gate, up, expected);
        using var gb = Acc.Allocate1D(gate);
        using var ub = Acc.Allocate1D(up);
        using var ob = Acc.Allocate1D(PagedAttentionCase.Poisoned(1000));
        Kernels.Value.SwiGlu(gb.View, ub.View, ob.View, 1000);
        Acc.Synchronize();
        PagedAttentionCase.AssertClose(expected, ob.GetAsArray1D(), 1e-6f, 1e-5f, "swiglu");
    }

    [Test]
    public void GeGluAndSoftCapMatchReference()
    {
        var rng = new Random(6);
        var gate = PagedAttentionCase.Random(rng, 1000, 6f);
        var up = PagedAttentionCase.Random(rng, 1000);
        var expected = new float[1000];
        ReferenceLayer.GeGlu(gate, up, expected);
        using var gb = Acc.Allocate1D(gate);
        using var ub = Acc.Allocate1D(up);
        using var ob = Acc.Allocate1D(PagedAttentionCase.Poisoned(1000));
        Kernels.Value.GeGlu(gb.View, ub.View, ob.View, 1000);
        Acc.Synchronize();
        PagedAttentionCase.AssertClose(expected, ob.GetAsArray1D(), 1e-6f, 1e-5f, "geglu");

        var logits = PagedAttentionCase.Random(rng, 1000, 80f);
        var capped = (float[])logits.Clone();
        ReferenceLayer.SoftCap(capped, 30f);
        using var lb = Acc.Allocate1D(logits);
        Kernels.Value.SoftCap(lb.View, 30f, 1000);
        Acc.Synchronize();
        PagedAttentionCase.AssertClose(capped, lb.GetAsArray1D(), 1e-5f, 1e-5f, "softcap");
        Assert.That(capped.Max(), Is.LessThan(30f));
    }

    public enum WeightType { F32, F16, Q8_0 }

    [TestCase(WeightType.F32, 13, 96, 1)]
    [TestCase(WeightType.F32, 9, 300, 3)]
    [TestCase(WeightType.F16, 13, 96, 1)]
    [TestCase(WeightType.F16, 9, 128, 2)]
    [TestCase(WeightType.Q8_0, 13, 256, 1)]
    [TestCase(WeightType.Q8_0, 9, 96, 3)]
    public void MatMulMatchesReference(WeightType type, int rows, int cols, int batch)
    {
        var rng = new Random(rows * cols + batch);
        var w = PagedAttentionCase.Random(rng, rows * cols);
        var x = PagedAttentionCase.Random(rng, batch * cols);
        using var xb = Acc.Allocate1D(x);
        using var yb = Acc.Allocate1D(PagedAttentionCase.Poisoned(batch * rows));
        float[] effective;
        switch (type)
        {
            case WeightType.F32:
            {
                effective = w;
                using var wb = Acc.Allocate1D(w);
                Kernels.Value.MatMul(wb.View, xb.View, yb.View, rows, cols, batch);
                Acc.Synchronize();
                break;
            }
            case WeightType.F16:
            {
                var h = w.Select(v => (Half)v).ToArray();
                effective = h.Select(v => (float)v).ToArray();
                using var wb = Acc.Allocate1D(PagedAttentionKernelTests.ToIlgpuHalf(h));
                Kernels.Value.MatMul(wb.View, xb.View, yb.View, rows, cols, batch);
                Acc.Synchronize();
                break;
            }
            default:
            {
                var q = ReferenceMatMul.QuantizeQ8_0(w);
                effective = ReferenceMatMul.DequantizeQ8_0(q);
                using var wb = Acc.Allocate1D(q);
                Kernels.Value.MatMulQ8_0(wb.View, xb.View, yb.View, rows, cols, batch);
                Acc.Synchronize();
                break;
            }
        }
        var expected = new float[batch * rows];
        ReferenceMatMul.MatMul(effective, x, expected, rows, cols);
        PagedAttentionCase.AssertClose(expected, yb.GetAsArray1D(), 1e-4f, 1e-4f, $"matmul {type}");
    }

    [Test]
    public void Q8_0RoundTripIsClose()
    {
        var w = PagedAttentionCase.Random(new Random(3), 64);
        var back = ReferenceMatMul.DequantizeQ8_0(ReferenceMatMul.QuantizeQ8_0(w));
        PagedAttentionCase.AssertClose(w, back, 1f / 127f, 0f, "q8_0 round trip");
    }

    [TestCase(WeightType.F32)]
    [TestCase(WeightType.F16)]
    [TestCase(WeightType.Q8_0)]
    public void EmbeddingMatchesReference(WeightType type)
    {
        const int vocab = 50, dim = 96;
        var rng = new Random(9);
        var table = PagedAttentionCase.Random(rng, vocab * dim);
        int[] ids = [3, 49, 0, 3, 17];
        using var ib = Acc.Allocate1D(ids);
        using var ob = Acc.Allocate1D(PagedAttentionCase.Poisoned(ids.Length * dim));
        float[] effective;
        if (type == WeightType.F32)
        {
            effective = table;
            using var tb = Acc.Allocate1D(table);
            Kernels.Value.Embedding(tb.View, ib.View, ob.View, ids.Length, dim);
            Acc.Synchronize();
        }
        else if (type == WeightType.F16)
        {
            var h = table.Select(v => (Half)v).ToArray();
            effective = h.Select(v => (float)v).ToArray();
            using var tb = Acc.Allocate1D(PagedAttentionKernelTests.ToIlgpuHalf(h));
            Kernels.Value.Embedding(tb.View, ib.View, ob.View, ids.Length, dim);
            Acc.Synchronize();
        }
        else
        {
            var q = ReferenceMatMul.QuantizeQ8_0(table);
            effective = ReferenceMatMul.DequantizeQ8_0(q);
            using var tb = Acc.Allocate1D(q);
            Kernels.Value.EmbeddingQ8_0(tb.View, ib.View, ob.View, ids.Length, dim);
            Acc.Synchronize();
        }
        var expected = new float[ids.Length * dim];
        ReferenceLayer.Embedding(effective, ids, expected, dim);
        PagedAttentionCase.AssertClose(expected, ob.GetAsArray1D(), 0f, 0f, $"embedding {type}");
    }

    [Test]
    public void ArgMaxAndTopKMatchReference()
    {
        const int rows = 3, cols = 1000, k = 6;
        var rng = new Random(21);
        var logits = PagedAttentionCase.Random(rng, rows * cols, 10f);
        // ties (the lower index must win), a NaN and a row whose maximum sits in the last column
        logits[0 * cols + 700] = 20f;
        logits[0 * cols + 300] = 20f;
        logits[0 * cols + 5] = float.NaN;
        logits[1 * cols + 999] = 30f;
        logits[2 * cols + 10] = 15f;
        logits[2 * cols + 11] = 15f;
        logits[2 * cols + 12] = 15f;

        using var lb = Acc.Allocate1D(logits);
        using var ab = Acc.Allocate1D(Enumerable.Repeat(-7, rows).ToArray());
        using var vb = Acc.Allocate1D(PagedAttentionCase.Poisoned(rows * k));
        using var tb = Acc.Allocate1D(Enumerable.Repeat(-7, rows * k).ToArray());
        Kernels.Value.ArgMax(lb.View, ab.View, rows, cols);
        Kernels.Value.TopK(lb.View, vb.View, tb.View, rows, cols, k);
        Acc.Synchronize();
        var arg = ab.GetAsArray1D();
        var top = tb.GetAsArray1D();
        var values = vb.GetAsArray1D();
        for (int r = 0; r < rows; r++)
        {
            var row = logits.AsSpan(r * cols, cols);
            Assert.That(arg[r], Is.EqualTo(ReferenceSelection.ArgMax(row)), $"argmax row {r}");
            var expected = ReferenceSelection.TopK(row, k);
            Assert.That(top.AsSpan(r * k, k).ToArray(), Is.EqualTo(expected), $"top-k row {r}");
            for (int i = 0; i < k; i++) Assert.That(values[r * k + i], Is.EqualTo(row[expected[i]]));
        }
        Assert.That(arg, Is.EqualTo(new[] { 300, 999, 10 }));
    }
}
