using ILGPU;
using ILGPU.Runtime;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;
using Inference.Loading;

namespace Inference.Tests.Kernels;

/// <summary>
/// The routing-driven half of the device mixture-of-experts: <see cref="LayerKernels.GroupExperts"/> against
/// <see cref="ReferenceExperts.Group"/> (the CPU path's counting sort), and <see cref="LayerKernels.MatMulExperts"/>
/// against each expert's plain product over its rows (the same bits), for every weight kind the device keeps; random
/// routing, one expert taking every token, experts with no tokens, poisoned outputs, and a token's bits alone and in a batch.
/// </summary>
public partial class ExpertKernelTests
{
    /// <summary>How the router's logits are drawn.</summary>
    public enum Spread
    {
        /// <summary>Random logits.</summary>
        Random,

        /// <summary>Every token has the same logits, so all pick the same k experts and the others get nothing.</summary>
        Same,

        /// <summary>Experts 0 and 1 favoured (most tokens pick them), the last expert never chosen.</summary>
        Skewed,
    }

    private static float[] RouterLogits(Random rng, int tokens, int experts, Spread spread)
    {
        var logits = PagedAttentionCase.Random(rng, tokens * experts, 3f);
        for (int t = 0; t < tokens; t++)
        {
            var row = logits.AsSpan(t * experts, experts);
            switch (spread)
            {
                case Spread.Same: logits.AsSpan(0, experts).CopyTo(row); break;
                case Spread.Skewed:
                    row[0] += 6f;
                    row[1] += 5f;
                    row[experts - 1] = -40f;
                    break;
            }
        }
        return logits;
    }

    /// <summary>The device's routing and grouping of <paramref name="logits"/>: chosen, weights, starts, rowTokens, slotRows.</summary>
    private static (int[] Chosen, int[] Starts, int[] RowTokens, int[] SlotRows) RouteAndGroup(LayerKernels kernels, float[] logits, int tokens, int experts, int k)
    {
        var acc = kernels.Accelerator;
        int slots = tokens * k;
        using var lb = acc.Allocate1D(logits);
        using var cb = acc.Allocate1D(Enumerable.Repeat(-7, slots).ToArray());
        using var wb = acc.Allocate1D(PagedAttentionCase.Poisoned(slots));
        // one element past each output, to catch a write beyond it
        using var sb = acc.Allocate1D(Enumerable.Repeat(-7, experts + 2).ToArray());
        using var rb = acc.Allocate1D(Enumerable.Repeat(-7, slots + 1).ToArray());
        using var ob = acc.Allocate1D(Enumerable.Repeat(-7, slots + 1).ToArray());
        kernels.RouteExperts(lb.View, cb.View, wb.View, tokens, experts, k, normalize: true);
        kernels.GroupExperts(cb.View, sb.View.SubView(0, experts + 1), rb.View.SubView(0, slots), ob.View.SubView(0, slots), tokens, experts, k);
        acc.Synchronize();
        var starts = sb.GetAsArray1D();
        var rowTokens = rb.GetAsArray1D();
        var slotRows = ob.GetAsArray1D();
        Assert.That((starts[^1], rowTokens[^1], slotRows[^1]), Is.EqualTo((-7, -7, -7)), "written past an output");
        return (cb.GetAsArray1D(), starts[..^1], rowTokens[..^1], slotRows[..^1]);
    }

    private static IEnumerable<TestCaseData> GroupCases()
    {
        foreach (int k in new[] { 1, 2, 4 })
            foreach (int experts in new[] { 4, 16 })
                foreach (var spread in Enum.GetValues<Spread>())
                    foreach (int tokens in new[] { 1, 3, 37 })
                        yield return new TestCaseData(tokens, experts, k, spread);
        yield return new TestCaseData(19, 8, 2, Spread.Random);
    }

    [TestCaseSource(nameof(GroupCases))]
    public void Group_MatchesTheReferenceCountingSort(int tokens, int experts, int k, Spread spread)
    {
        var logits = RouterLogits(new Random(HashCode.Combine(tokens, experts, k, spread)), tokens, experts, spread);
        var (chosen, starts, rowTokens, slotRows) = RouteAndGroup(Kernels, logits, tokens, experts, k);

        var refStarts = new int[experts + 1];
        var refRowTokens = new int[tokens * k];
        var refSlotRows = new int[tokens * k];
        ReferenceExperts.Group(chosen, experts, k, refStarts, refRowTokens, refSlotRows);
        Assert.That(starts, Is.EqualTo(refStarts), "starts");
        Assert.That(rowTokens, Is.EqualTo(refRowTokens), "rowTokens");
        Assert.That(slotRows, Is.EqualTo(refSlotRows), "slotRows");

        // what the rows mean: slot i's row holds its token, inside its expert's range
        for (int i = 0; i < tokens * k; i++)
        {
            int e = chosen[i], row = slotRows[i];
            Assert.That(rowTokens[row], Is.EqualTo(i / k), $"slot {i}");
            Assert.That(row, Is.InRange(starts[e], starts[e + 1] - 1), $"slot {i}: expert {e}'s rows");
        }
        int empty = Enumerable.Range(0, experts).Count(e => starts[e + 1] == starts[e]);
        if (spread == Spread.Same)
        {
            Assert.That(empty, Is.EqualTo(experts - k), "one set of k experts takes every token");
            for (int e = 0; e < experts; e++) Assert.That(starts[e + 1] - starts[e], Is.EqualTo(0).Or.EqualTo(tokens));
        }
        if (spread == Spread.Skewed && k < experts) Assert.That(starts[experts] - starts[experts - 1], Is.Zero, "the last expert gets no token");
    }

    private static IEnumerable<TestCaseData> ProductCases()
    {
        // (type, rows, cols): the row kernels, and shapes that fall back to the simple kernels (F32 cols % 4, F16 cols % 8)
        var shapes = new (GgmlType Type, int Rows, int Cols)[]
        {
            (GgmlType.F32, 24, 64), (GgmlType.F16, 24, 64), (GgmlType.Q8_0, 24, 64),
            (GgmlType.Q4_K, 12, 256), (GgmlType.Q6_K, 12, 256), (GgmlType.IQ4_XS, 12, 256), (GgmlType.Q4_0, 9, 96),
            (GgmlType.F32, 7, 30), (GgmlType.F16, 7, 36),
        };
        foreach (var (type, rows, cols) in shapes) yield return new TestCaseData(MatMulKernelTests.Layout.Thread1Row, type, rows, cols);
        // NOTE: warp-per-row groups cost seconds a launch on the CPU accelerator: one row kernel and one block kernel
        yield return new TestCaseData(MatMulKernelTests.Layout.Warp32Rows2, GgmlType.F16, 4, 64);
        yield return new TestCaseData(MatMulKernelTests.Layout.Warp32Rows2, GgmlType.Q4_K, 3, 256);
    }

    private static byte[] RandomWeights(Random rng, GgmlType type, int rows, int cols)
    {
        switch (type)
        {
            case GgmlType.F32:
                return System.Runtime.InteropServices.MemoryMarshal.AsBytes(PagedAttentionCase.Random(rng, rows * cols).AsSpan()).ToArray();
            case GgmlType.F16:
                var h = PagedAttentionCase.Random(rng, rows * cols).Select(v => (System.Half)v).ToArray();
                return System.Runtime.InteropServices.MemoryMarshal.AsBytes(h.AsSpan()).ToArray();
            case GgmlType.Q8_0:
                return ReferenceMatMul.QuantizeQ8_0(PagedAttentionCase.Random(rng, rows * cols));
            default:
                return MatMulKernelTests.RandomBlocks(rng, type, rows, cols);
        }
    }

    private static void PlainProduct(LayerKernels kernels, GgmlType type, ArrayView<byte> w, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        switch (type)
        {
            case GgmlType.F32: kernels.MatMul(w.Cast<float>(), x, y, rows, cols, batch); break;
            case GgmlType.F16: kernels.MatMul(w.Cast<ILGPU.Half>(), x, y, rows, cols, batch); break;
            case GgmlType.Q8_0: kernels.MatMulQ8_0(w, x, y, rows, cols, batch); break;
            default: kernels.MatMulBlocks(type, w, x, y, rows, cols, batch); break;
        }
    }

    /// <summary>The expert rows of <paramref name="tokens"/> tokens through <see cref="LayerKernels.MatMulExperts"/>: Y grouped by expert.</summary>
    private static float[] ExpertProducts(LayerKernels kernels, MemoryBuffer1D<byte, Stride1D.Dense> wb, GgmlType type, float[] x, int[] rowTokens, int[] starts,
        int tokens, int experts, int rows, int cols, int k)
    {
        var acc = kernels.Accelerator;
        int slots = tokens * k;
        using var xb = acc.Allocate1D(x);
        using var rb = acc.Allocate1D(rowTokens);
        using var sb = acc.Allocate1D(starts);
        using var gb = acc.Allocate1D<float>((long)slots * cols);
        using var yb = acc.Allocate1D(PagedAttentionCase.Poisoned(slots * rows + 1));
        kernels.GatherRows(xb.View, rb.View, gb.View, slots, cols);
        kernels.MatMulExperts(type, wb.View, gb.View, yb.View.SubView(0, (long)slots * rows), sb.View, experts, rows, cols, tokens);
        acc.Synchronize();
        var y = yb.GetAsArray1D();
        Assert.That(y[^1], Is.NaN, "written past the output");
        Assert.That(y[..^1], Has.None.NaN, "an output row left unwritten");
        return y[..^1];
    }

    [TestCaseSource(nameof(ProductCases))]
    public void MatMulExperts_GivesEachExpertsPlainProductBits_AndIsBatchInvariant(MatMulKernelTests.Layout layout, GgmlType type, int rows, int cols)
    {
        // 21 tokens, skewed: experts 0 and 1 get more than one batch chunk (16 rows), the last none
        const int tokens = 21, experts = 6, k = 2;
        var kernels = MatMulKernelTests.Kernel[layout].Value;
        var acc = kernels.Accelerator;
        var rng = new Random(HashCode.Combine(type, rows, cols));
        var weights = RandomWeights(rng, type, experts * rows, cols);
        var x = PagedAttentionCase.Random(rng, tokens * cols, 2f);
        var logits = RouterLogits(rng, tokens, experts, Spread.Skewed);
        var (chosen, starts, rowTokens, slotRows) = RouteAndGroup(kernels, logits, tokens, experts, k);
        Assert.That(starts[1] - starts[0], Is.GreaterThan(MatMulKernels.BatchChunk), "an expert spans two batch chunks");

        using var wb = acc.Allocate1D(weights);
        var y = ExpertProducts(kernels, wb, type, x, rowTokens, starts, tokens, experts, rows, cols, k);

        // each expert alone, through the plain product over its gathered rows
        long expertBytes = weights.Length / experts;
        for (int e = 0; e < experts; e++)
        {
            int first = starts[e], count = starts[e + 1] - first;
            if (count == 0) continue;
            var xe = new float[count * cols];
            for (int r = 0; r < count; r++) x.AsSpan(rowTokens[first + r] * cols, cols).CopyTo(xe.AsSpan(r * cols));
            using var xb = acc.Allocate1D(xe);
            using var yb = acc.Allocate1D(PagedAttentionCase.Poisoned(count * rows));
            PlainProduct(kernels, type, wb.View.SubView(e * expertBytes, expertBytes), xb.View, yb.View, rows, cols, count);
            acc.Synchronize();
            Assert.That(y.AsSpan(first * rows, count * rows).ToArray(), Is.EqualTo(yb.GetAsArray1D()), $"expert {e}: {count} rows");
        }

        // a token alone: the same bits as inside the batch
        foreach (int t in new[] { 0, tokens - 1 })
        {
            var (c1, s1, r1, o1) = RouteAndGroup(kernels, logits.AsSpan(t * experts, experts).ToArray(), 1, experts, k);
            Assert.That(c1, Is.EqualTo(chosen.AsSpan(t * k, k).ToArray()));
            var y1 = ExpertProducts(kernels, wb, type, x.AsSpan(t * cols, cols).ToArray(), r1, s1, 1, experts, rows, cols, k);
            for (int j = 0; j < k; j++)
                Assert.That(y1.AsSpan(o1[j] * rows, rows).ToArray(), Is.EqualTo(y.AsSpan(slotRows[t * k + j] * rows, rows).ToArray()), $"token {t}, slot {j}");
        }
    }
}
