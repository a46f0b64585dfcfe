using System.Text.RegularExpressions;
using Inference.Cuda;
using Inference.Loading;
using Inference.Tests.Kernels;
using Half = System.Half;

namespace Inference.Tests.Cuda;

/// <summary>
/// <c>gemm_q4_0</c>, <c>gemm_q4_k</c>, <c>gemm_q6_k</c>, <c>gemm_q5_k</c>, <c>gemm_q4_1</c>, <c>gemm_q5_0</c> and
/// <c>gemm_q5_1</c> (block weights widened to f16 inside the
/// tensor-core kernel) in <see cref="PtxInterpreter"/>, as <see cref="Q8_0TensorCoreGemmTests"/> checks gemm_q8_0: bit for
/// bit the slab path (the matrix widened by <c>DequantizeToHalf</c> on ILGPU's CPU accelerator, then <c>gemm_f16</c> with
/// the same split-K) and the kernel's accumulation order over the host's f16 weights; shapes at and off the tile edges,
/// several blocks (every sub-block of a super-block) per row, split-K with splits inside a super-block, C rows wider than N.
/// </summary>
public class BlockTypeTensorCoreGemmTests
{
    private static IEnumerable<TestCaseData> Cases()
    {
        // Q4_0, Q4_1, Q5_0, Q5_1: blocks of 32, as gemm_q8_0's cases
        foreach (var (m, n, k, splits, ldc) in new[]
        {
            (1, 8, 32, 1, 0),          // one row, one block per W row, a partial tile everywhere
            (130, 136, 96, 1, 0),      // edge tiles in M and N, three k tiles (every stage once)
            (64, 300, 224, 3, 0),      // split-K: 7 k tiles as 3 + 3 + 1
            (33, 72, 320, 4, 80),      // split-K into wider rows: 10 k tiles as 3 + 3 + 3 + 1
        })
            foreach (var type in new[] { GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1 })
                yield return new TestCaseData(type, m, n, k, splits, ldc);
        // the K-quants: super-blocks of 256, a k tile one sub-block of 32
        foreach (var type in new[] { GgmlType.Q4_K, GgmlType.Q6_K, GgmlType.Q5_K })
            foreach (var (m, n, k, splits, ldc) in new[]
            {
                (1, 8, 256, 1, 0),         // one row, one super-block per W row: its 8 sub-blocks through the 3 stages
                (130, 136, 256, 2, 0),     // edge tiles in M and N, split-K 4 + 4 inside the super-block
                (40, 72, 512, 3, 0),       // two super-blocks, split-K 6 + 6 + 4 (splits cross a super-block)
                (20, 136, 256, 1, 300),    // C rows wider than N
            })
                yield return new TestCaseData(type, m, n, k, splits, ldc);
    }

    [TestCaseSource(nameof(Cases))]
    public void MatchesTheSlabPathBitForBit(GgmlType type, int m, int n, int k, int splits, int ldc) =>
        Q8_0TensorCoreGemmTests.Compare(type, m, n, k, splits, ldc, anyScale: false);

    /// <summary>
    /// Scales and mins of any finite f16 (subnormal ones; ones whose products overflow f16 to infinity): every weight is
    /// rounded as the slab dequantizer rounds it, so even outputs of ±∞ and NaN agree bit for bit.
    /// </summary>
    [TestCase(GgmlType.Q4_0, 40, 136, 96, 1)]
    [TestCase(GgmlType.Q4_K, 40, 136, 256, 2)]
    [TestCase(GgmlType.Q6_K, 40, 136, 256, 2)]
    [TestCase(GgmlType.Q5_K, 40, 136, 256, 2)]
    [TestCase(GgmlType.Q4_1, 40, 136, 96, 1)]
    [TestCase(GgmlType.Q5_0, 40, 136, 96, 1)]
    [TestCase(GgmlType.Q5_1, 130, 24, 160, 2)]
    public void MatchesTheSlabPathWithAnyScale(GgmlType type, int m, int n, int k, int splits) =>
        Q8_0TensorCoreGemmTests.Compare(type, m, n, k, splits, 0, anyScale: true);

    [TestCase(GgmlType.Q8_0)]
    [TestCase(GgmlType.Q4_0)]
    [TestCase(GgmlType.Q4_K)]
    [TestCase(GgmlType.Q6_K)]
    [TestCase(GgmlType.Q5_K)]
    [TestCase(GgmlType.Q4_1)]
    [TestCase(GgmlType.Q5_0)]
    [TestCase(GgmlType.Q5_1)]
    public void EntryWidensWAndCopiesA(GgmlType type)
    {
        var entry = Q8_0TensorCoreGemmTests.Entry(PtxTensorCoreGemm.EntryFor(type));
        Assert.That(entry, Does.Contain("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"));
        Assert.That(entry, Does.Contain("ldmatrix.sync.aligned.m8n8.x4.shared.b16"));
        Assert.That(entry, Does.Contain("cp.async.cg.shared.global"), "A arrives by cp.async");
        Assert.That(entry, Does.Contain("cvt.rn.f16x2.f32"), "W is widened in the kernel");
        Assert.That(entry, Does.Contain("st.shared.v4.b32"));
        Assert.That(entry, Does.Not.Contain("mul.f32").And.Not.Contain("add.f32").And.Not.Contain("fma"),
            "every widening operation rounds on its own (no contraction into fma)");
    }

    [TestCase(GgmlType.Q8_0, 128, 4UL)]
    [TestCase(GgmlType.Q4_K, 256, 8UL)]
    public void InterpreterCatchesAMissingBarrier(GgmlType type, int k, ulong perSplit)
    {
        // without the loop's barrier, a warp widens W into a stage another warp still reads (or reads one not yet stored)
        string name = PtxTensorCoreGemm.EntryFor(type);
        string source = Q8_0TensorCoreGemmTests.Source, entry = Q8_0TensorCoreGemmTests.Entry(name);
        string broken = source.Replace(entry, Regex.Replace(entry, @"\tbar\.sync +0;", "\t// no barrier"), StringComparison.Ordinal);
        Assert.That(broken, Is.Not.EqualTo(source));
        var t = TensorCoreGemmTile.Default;
        var mem = new PtxInterpreter.Memory();
        int m = 64, n = 64;
        ulong pa = mem.Upload(Enumerable.Range(0, m * k).Select(_ => BitConverter.HalfToUInt16Bits((Half)0.25f)).ToArray());
        ulong pw = mem.Upload(MatMulKernelTests.RandomBlocks(new Random(5), type, n, k)), pc = mem.Poisoned(m * n);
        var ex = Assert.Throws<InvalidOperationException>(() =>
            PtxInterpreter.Parse(broken).Launch(name, 1, 1, t.Threads, mem, pa, pw, pc, (ulong)m, (ulong)n, (ulong)k, perSplit, (ulong)n));
        Assert.That(ex!.Message, Does.Contain("shared"));
    }

    [TestCase(GgmlType.Q8_0, 4, 4, 48)]     // K whole 16-byte chunks but not whole blocks
    [TestCase(GgmlType.Q8_0, 4, 4, 8)]
    [TestCase(GgmlType.Q8_0, 0, 4, 32)]
    [TestCase(GgmlType.Q4_0, 4, 4, 48)]
    [TestCase(GgmlType.Q4_K, 4, 4, 128)]    // whole blocks of 32 but not of 256
    [TestCase(GgmlType.Q6_K, 4, 4, 32)]
    [TestCase(GgmlType.Q5_K, 0, 4, 256)]
    [TestCase(GgmlType.Q5_1, 4, 4, 16)]
    [TestCase(GgmlType.Q3_K, 4, 4, 256)]    // a block type that keeps the slab path
    [TestCase(GgmlType.IQ4_NL, 4, 4, 256)]
    [TestCase(GgmlType.F16, 4, 4, 256)]
    public void LauncherRefusesUnsupportedShapes(GgmlType type, int m, int n, int k)
    {
        var e = Assert.Catch<ArgumentException>(() => PtxTensorCoreGemm.CheckBlockShape(type, m, n, k));
        Assert.That(e!.Message, Does.Not.Contain("\n"));
    }
}
