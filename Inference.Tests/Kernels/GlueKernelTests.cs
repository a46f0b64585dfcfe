using Inference.Models;
using ILGPU.Runtime;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;

namespace Inference.Tests.Kernels;

/// <summary>The forward pass's glue kernels (residual and bias add, row gather, RoPE from tables, paged K/V store) against their references.</summary>
public class GlueKernelTests
{
    private static LayerKernels Kernels => LayerKernelTests.Kernels.Value;
    private static Accelerator Acc => KernelTestAccelerator.Cpu;

    [Test]
    public void AddAndAddBiasMatchReference()
    {
        var rng = new Random(11);
        var x = PagedAttentionCase.Random(rng, 5 * 24);
        var y = PagedAttentionCase.Random(rng, 5 * 24);
        var bias = PagedAttentionCase.Random(rng, 24);
        var expected = (float[])x.Clone();
        ReferenceLayer.Add(expected, y);
        ReferenceLayer.AddBias(expected, bias);
        using var xb = Acc.Allocate1D(x);
        using var yb = Acc.Allocate1D(y);
        using var bb = Acc.Allocate1D(bias);
        Kernels.Add(xb.View, yb.View, x.Length);
        Kernels.AddBias(xb.View, bb.View, 5, 24);
        Acc.Synchronize();
        PagedAttentionCase.AssertClose(expected, xb.GetAsArray1D(), 1e-6f, 1e-6f, "add + bias");
    }

    [Test]
    public void GatherRowsMatchesReference()
    {
        var rng = new Random(12);
        var x = PagedAttentionCase.Random(rng, 7 * 20);
        int[] rows = [6, 0, 3];
        var expected = new float[rows.Length * 20];
        ReferenceLayer.GatherRows(x, rows, expected, 20);
        using var xb = Acc.Allocate1D(x);
        using var rb = Acc.Allocate1D(rows);
        using var ob = Acc.Allocate1D(PagedAttentionCase.Poisoned(expected.Length));
        Kernels.GatherRows(xb.View, rb.View, ob.View, rows.Length, 20);
        Acc.Synchronize();
        Assert.That(ob.GetAsArray1D(), Is.EqualTo(expected));
    }

    [TestCase(RopeLayout.Normal, 16)]
    [TestCase(RopeLayout.Neox, 16)]
    [TestCase(RopeLayout.Neox, 8)]
    public void RopeTableMatchesReference(RopeLayout layout, int rotaryDim)
    {
        const int tokens = 3, heads = 4, headDim = 16;
        var rng = new Random(13 + rotaryDim);
        var x = PagedAttentionCase.Random(rng, tokens * heads * headDim);
        var angles = PagedAttentionCase.Random(rng, tokens * rotaryDim / 2, 3f);
        var cos = Array.ConvertAll(angles, MathF.Cos);
        var sin = Array.ConvertAll(angles, MathF.Sin);
        var expected = (float[])x.Clone();
        ReferenceLayer.RopeTable(expected, cos, sin, heads, headDim, rotaryDim, layout);
        using var xb = Acc.Allocate1D(x);
        using var cb = Acc.Allocate1D(cos);
        using var sb = Acc.Allocate1D(sin);
        Kernels.RopeTable(xb.View, cb.View, sb.View, tokens, heads, headDim, rotaryDim, layout);
        Acc.Synchronize();
        var actual = xb.GetAsArray1D();
        PagedAttentionCase.AssertClose(expected, actual, 1e-6f, 1e-6f, "rope table");
        Assert.That(actual, Is.Not.EqualTo(x));
    }

    [Test]
    public void WriteKvMatchesReference_F32AndF16()
    {
        const int kvDim = 12, slotsTotal = 10;
        var rng = new Random(14);
        var k = PagedAttentionCase.Random(rng, 4 * kvDim);
        var v = PagedAttentionCase.Random(rng, 4 * kvDim);
        int[] slots = [7, 2, -1, 9];   // -1: a padding row, written nowhere
        var kExpected = PagedAttentionCase.Poisoned(slotsTotal * kvDim);
        var vExpected = PagedAttentionCase.Poisoned(slotsTotal * kvDim);
        ReferenceLayer.WriteKv(k, v, slots, kExpected, vExpected, kvDim);
        using var kb = Acc.Allocate1D(k);
        using var vb = Acc.Allocate1D(v);
        using var sb = Acc.Allocate1D(slots);
        using var kc = Acc.Allocate1D(PagedAttentionCase.Poisoned(slotsTotal * kvDim));
        using var vc = Acc.Allocate1D(PagedAttentionCase.Poisoned(slotsTotal * kvDim));
        Kernels.WriteKv(kb.View, vb.View, sb.View, kc.View, vc.View, 4, kvDim);
        using var kh = Acc.Allocate1D<ILGPU.Half>(slotsTotal * kvDim);
        using var vh = Acc.Allocate1D<ILGPU.Half>(slotsTotal * kvDim);
        Kernels.WriteKv(kb.View, vb.View, sb.View, kh.View, vh.View, 4, kvDim);
        Acc.Synchronize();
        var kActual = kc.GetAsArray1D();
        var khActual = kh.GetAsArray1D();
        var vhActual = vh.GetAsArray1D();
        for (int i = 0; i < kExpected.Length; i++)
        {
            if (float.IsNaN(kExpected[i])) { Assert.That(kActual[i], Is.NaN, "untouched slots stay as they were"); continue; }
            Assert.That(kActual[i], Is.EqualTo(kExpected[i]));
            // NOTE: CUDA converts with cvt.rn (nearest even, as System.Half); ILGPU's CPU accelerator may land one f16 ulp away.
            float ulpK = MathF.Abs((float)(Half)kExpected[i]) * (1f / 1024f);
            float ulpV = MathF.Abs((float)(Half)vExpected[i]) * (1f / 1024f);
            Assert.That((float)khActual[i], Is.EqualTo((float)(Half)kExpected[i]).Within(ulpK), "f16 within one ulp");
            Assert.That((float)vhActual[i], Is.EqualTo((float)(Half)vExpected[i]).Within(ulpV));
        }
        Assert.That(vc.GetAsArray1D().Where(f => !float.IsNaN(f)).ToArray(), Is.EqualTo(vExpected.Where(f => !float.IsNaN(f)).ToArray()));
        Assert.That(kActual.Count(f => !float.IsNaN(f)), Is.EqualTo(3 * kvDim), "three rows written, the padding row nowhere");
    }
}
