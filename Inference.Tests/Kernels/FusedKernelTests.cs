using ILGPU;
using ILGPU.Runtime;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;
using Inference.Models;

namespace Inference.Tests.Kernels;

/// <summary>
/// The fused kernels of a decode step against the unfused kernels they replace (the same bits) and float64 references:
/// the residual add with RMSNorm, and RoPE of Q and K with the K/V write into the paged pool (f32 and f16 pools;
/// MHA/GQA/MQA; head dims 16 to 128, partial rotation; both pairings; slots across block boundaries, blocks of 8 and
/// 16). Outputs and caches are NaN-poisoned first; untouched cache slots must stay poisoned.
/// </summary>
public class FusedKernelTests
{
    private static readonly Lazy<LayerKernels> OneThread = new(() => new LayerKernels(KernelTestAccelerator.Cpu, 1));

    private static LayerKernels Kernels(bool oneThread) => oneThread ? OneThread.Value : LayerKernelTests.Kernels.Value;

    [TestCase(1, 64, false, false)]
    [TestCase(3, 200, false, true)]
    [TestCase(5, 4096, false, false)]
    [TestCase(4, 96, true, true)]
    public void AddRmsNorm_EqualsAddThenRmsNorm_MatchesFloat64_AndIsBatchInvariant(int rows, int dim, bool oneThread, bool outputIsDelta)
    {
        var k = Kernels(oneThread);
        var acc = k.Accelerator;
        var rng = new Random(rows * 100 + dim);
        var x = PagedAttentionCase.Random(rng, rows * dim, 3f);
        var delta = PagedAttentionCase.Random(rng, rows * dim, 2f);
        var w = PagedAttentionCase.Random(rng, dim);
        const float eps = 1e-5f;

        var (fusedX, fusedOut) = RunAddRmsNorm(k, x, delta, w, rows, dim, eps, outputIsDelta);

        using var ux = acc.Allocate1D(x);
        using var ud = acc.Allocate1D(delta);
        using var wb = acc.Allocate1D(w);
        using var uo = acc.Allocate1D(PagedAttentionCase.Poisoned(rows * dim));
        k.Add(ux.View, ud.View, rows * dim);
        k.RmsNorm(ux.View, wb.View, uo.View, rows, dim, eps);
        acc.Synchronize();
        Assert.That(fusedX, Is.EqualTo(ux.GetAsArray1D()), "x after the add");
        Assert.That(fusedOut, Is.EqualTo(uo.GetAsArray1D()), "the norm: the bits of Add then RmsNorm");

        var sum = x.Zip(delta, (a, b) => a + b).ToArray();
        var expected = new float[rows * dim];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < dim; i++) ss += (double)sum[r * dim + i] * sum[r * dim + i];
            double inv = 1 / Math.Sqrt(ss / dim + eps);
            for (int i = 0; i < dim; i++) expected[r * dim + i] = (float)(sum[r * dim + i] * inv * w[i]);
        }
        Assert.That(fusedX, Is.EqualTo(sum), "x += delta");
        PagedAttentionCase.AssertClose(expected, fusedOut, 1e-5f, 1e-5f, "add + rmsnorm against float64");

        // the last row alone: the same bits
        var (lastX, lastOut) = RunAddRmsNorm(k, x[((rows - 1) * dim)..], delta[((rows - 1) * dim)..], w, 1, dim, eps, outputIsDelta);
        Assert.That(lastOut, Is.EqualTo(fusedOut[((rows - 1) * dim)..]), "a row alone");
        Assert.That(lastX, Is.EqualTo(fusedX[((rows - 1) * dim)..]));
    }

    private static (float[] X, float[] Output) RunAddRmsNorm(LayerKernels k, float[] x, float[] delta, float[] w, int rows, int dim, float eps, bool outputIsDelta)
    {
        var acc = k.Accelerator;
        using var xb = acc.Allocate1D(x);
        using var db = acc.Allocate1D(delta);
        using var wb = acc.Allocate1D(w);
        using var ob = acc.Allocate1D(PagedAttentionCase.Poisoned(rows * dim));
        k.AddRmsNorm(xb.View, db.View, wb.View, outputIsDelta ? db.View : ob.View, rows, dim, eps);
        acc.Synchronize();
        var output = (outputIsDelta ? db : ob).GetAsArray1D();
        Assert.That(output, Has.None.NaN, "every output written");
        return (xb.GetAsArray1D(), output);
    }

    /// <summary>(query heads, KV heads, head dim, rotated dims, pairing, f16 pool, block size, query factor, one-thread groups).</summary>
    private static IEnumerable<TestCaseData> RopeKvCases()
    {
        yield return new TestCaseData(4, 4, 16, 16, RopeLayout.Normal, false, 8, 1f, true).SetName("RopeKv MHA f32 block 8");
        yield return new TestCaseData(8, 2, 64, 64, RopeLayout.Neox, true, 16, 0.7f, false).SetName("RopeKv GQA f16 block 16 scaled");
        yield return new TestCaseData(8, 1, 128, 64, RopeLayout.Normal, true, 8, 1f, false).SetName("RopeKv MQA f16 partial rotation");
        yield return new TestCaseData(6, 3, 32, 16, RopeLayout.Neox, false, 16, 1.25f, true).SetName("RopeKv GQA f32 partial neox scaled");
        yield return new TestCaseData(4, 2, 16, 16, RopeLayout.Neox, true, 8, 1f, true).SetName("RopeKv GQA f16 one-thread");
    }

    [TestCaseSource(nameof(RopeKvCases))]
    public void RopeWriteKv_EqualsRopeScaleAndWrite_MatchesFloat64(int heads, int kvHeads, int headDim, int rotaryDim, RopeLayout layout, bool f16, int blockSize, float scale, bool oneThread)
    {
        var k = Kernels(oneThread);
        var acc = k.Accelerator;
        const int tokens = 7, blocks = 6;
        int qDim = heads * headDim, kvDim = kvHeads * headDim, half = rotaryDim / 2, slotsInPool = blocks * blockSize;
        var rng = new Random(HashCode.Combine(heads, kvHeads, headDim, rotaryDim, layout, f16, blockSize));
        var q = PagedAttentionCase.Random(rng, tokens * qDim);
        var kIn = PagedAttentionCase.Random(rng, tokens * kvDim);
        var v = PagedAttentionCase.Random(rng, tokens * kvDim);
        // a sequence of 5 tokens crossing a block boundary (table [4, 1]), another sequence's decode token and a padding
        // row of a step padded to a captured batch size (slot -1: its query turned, nothing written to the cache)
        int[] positions = [blockSize - 3, blockSize - 2, blockSize - 1, blockSize, blockSize + 1, 40, 41];
        int[] slots = [.. positions.Take(5).Select(p => (p < blockSize ? 4 : 1) * blockSize + p % blockSize), 2 * blockSize + 1, -1];
        var cos = new float[tokens * half];
        var sin = new float[tokens * half];
        for (int t = 0; t < tokens; t++)
            for (int i = 0; i < half; i++)
            {
                double theta = positions[t] * Math.Pow(10000, -2.0 * i / rotaryDim);
                cos[t * half + i] = (float)Math.Cos(theta);
                sin[t * half + i] = (float)Math.Sin(theta);
            }
        var shape = new RopeKvShape(heads, kvHeads, headDim, rotaryDim, layout == RopeLayout.Neox ? 1 : 0, scale);

        using var cb = acc.Allocate1D(cos);
        using var sb = acc.Allocate1D(sin);
        using var slotb = acc.Allocate1D(slots);
        using var vb = acc.Allocate1D(v);
        var fused = RunRopeKv(k, f16, q, kIn, vb.View, cb.View, sb.View, slotb.View, tokens, slotsInPool * kvDim, shape);

        // unfused: RoPE of Q and K in place, the factor on Q, then the K/V write
        using var uq = acc.Allocate1D(q);
        using var uk = acc.Allocate1D(kIn);
        using var ukc = acc.Allocate1D(PagedAttentionCase.Poisoned(slotsInPool * kvDim));
        using var uvc = acc.Allocate1D(PagedAttentionCase.Poisoned(slotsInPool * kvDim));
        using var ukh = acc.Allocate1D(Enumerable.Repeat(ILGPU.Half.NaN, slotsInPool * kvDim).ToArray());
        using var uvh = acc.Allocate1D(Enumerable.Repeat(ILGPU.Half.NaN, slotsInPool * kvDim).ToArray());
        k.RopeTable(uq.View, cb.View, sb.View, tokens, heads, headDim, rotaryDim, layout);
        k.RopeTable(uk.View, cb.View, sb.View, tokens, kvHeads, headDim, rotaryDim, layout);
        if (scale != 1f) k.Scale(uq.View, scale, tokens * qDim);
        if (f16) k.WriteKv(uk.View, vb.View, slotb.View, ukh.View, uvh.View, tokens, kvDim);
        else k.WriteKv(uk.View, vb.View, slotb.View, ukc.View, uvc.View, tokens, kvDim);
        acc.Synchronize();
        Assert.That(fused.Q, Is.EqualTo(uq.GetAsArray1D()), "Q: the bits of RoPE (then the factor)");
        Assert.That(fused.K, Is.EqualTo(kIn), "k is read, not written");
        Assert.That(fused.KCache, Is.EqualTo(f16 ? Widen(ukh.GetAsArray1D()) : ukc.GetAsArray1D()), "the K cache (written slots and poisoned others)");
        Assert.That(fused.VCache, Is.EqualTo(f16 ? Widen(uvh.GetAsArray1D()) : uvc.GetAsArray1D()), "the V cache");

        // float64: rotate, scale; the cache rows at the slots, every other row still poisoned
        var expectedQ = Rotate(q, cos, sin, heads, headDim, rotaryDim, layout, scale);
        var expectedK = Rotate(kIn, cos, sin, kvHeads, headDim, rotaryDim, layout, 1.0);
        PagedAttentionCase.AssertClose(expectedQ, fused.Q, 1e-5f, 1e-5f, "Q against float64");
        float tol = f16 ? 1e-3f : 1e-5f;
        for (int slot = 0; slot < slotsInPool; slot++)
        {
            int t = Array.IndexOf(slots, slot);
            var kRow = fused.KCache.AsSpan(slot * kvDim, kvDim).ToArray();
            var vRow = fused.VCache.AsSpan(slot * kvDim, kvDim).ToArray();
            if (t < 0)
            {
                Assert.That(kRow, Is.All.NaN, $"slot {slot} is no token's: left alone");
                Assert.That(vRow, Is.All.NaN, $"slot {slot}");
                continue;
            }
            PagedAttentionCase.AssertClose(expectedK[(t * kvDim)..((t + 1) * kvDim)], kRow, tol, tol, $"K of token {t} at slot {slot}");
            PagedAttentionCase.AssertClose(v[(t * kvDim)..((t + 1) * kvDim)], vRow, tol, tol, $"V of token {t} at slot {slot}");
        }
    }

    private static (float[] Q, float[] K, float[] KCache, float[] VCache) RunRopeKv(LayerKernels k, bool f16, float[] q, float[] kIn, ArrayView<float> v,
        ArrayView<float> cos, ArrayView<float> sin, ArrayView<int> slots, int tokens, int cacheLength, RopeKvShape shape)
    {
        var acc = k.Accelerator;
        using var qb = acc.Allocate1D(q);
        using var kb = acc.Allocate1D(kIn);
        if (f16)
        {
            using var kc = acc.Allocate1D(Enumerable.Repeat(ILGPU.Half.NaN, cacheLength).ToArray());
            using var vc = acc.Allocate1D(Enumerable.Repeat(ILGPU.Half.NaN, cacheLength).ToArray());
            k.RopeWriteKv(qb.View, kb.View, v, cos, sin, slots, kc.View, vc.View, tokens, shape);
            acc.Synchronize();
            return (qb.GetAsArray1D(), kb.GetAsArray1D(), Widen(kc.GetAsArray1D()), Widen(vc.GetAsArray1D()));
        }
        using var kf = acc.Allocate1D(PagedAttentionCase.Poisoned(cacheLength));
        using var vf = acc.Allocate1D(PagedAttentionCase.Poisoned(cacheLength));
        k.RopeWriteKv(qb.View, kb.View, v, cos, sin, slots, kf.View, vf.View, tokens, shape);
        acc.Synchronize();
        return (qb.GetAsArray1D(), kb.GetAsArray1D(), kf.GetAsArray1D(), vf.GetAsArray1D());
    }

    private static float[] Widen(ILGPU.Half[] values) => values.Select(h => (float)h).ToArray();

    private static float[] Rotate(float[] x, float[] cos, float[] sin, int heads, int headDim, int rotaryDim, RopeLayout layout, double scale)
    {
        int half = rotaryDim / 2;
        var y = x.Select(v => (float)(v * scale)).ToArray();
        for (int row = 0; row < x.Length / headDim; row++)
        {
            int t = row / heads;
            for (int i = 0; i < half; i++)
            {
                int a = layout == RopeLayout.Neox ? row * headDim + i : row * headDim + 2 * i;
                int b = layout == RopeLayout.Neox ? a + half : a + 1;
                double c = cos[t * half + i], s = sin[t * half + i];
                y[a] = (float)((x[a] * c - x[b] * s) * scale);
                y[b] = (float)((x[a] * s + x[b] * c) * scale);
            }
        }
        return y;
    }
}
