using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using System.Text.RegularExpressions;
using Inference.Cuda;
using Inference.Loading;
using Inference.Tests.Kernels;
using Half = System.Half;

namespace Inference.Tests.Cuda;

/// <summary>
/// <c>gemm_q8_0</c> (Q8_0 weights widened to f16 inside the tensor-core kernel) without a GPU, in
/// <see cref="PtxInterpreter"/>: bit for bit the path it replaces — the matrix widened by <c>DequantizeToHalf</c>
/// (ILGPU's CPU accelerator) and multiplied by <c>gemm_f16</c> with the same split-K — and the kernel's accumulation
/// order over the host's f16 weights; shapes at and off the tile edges, several k tiles, split-K, C rows wider than N.
/// </summary>
public class Q8_0TensorCoreGemmTests
{
    internal static string Source => PtxModule.ReadSource(TensorCoreGemmPtx.ModuleName);

    private static readonly Lazy<PtxInterpreter> Module = new(() => PtxInterpreter.Parse(Source));

    [TestCase(1, 8, 32, 1)]            // one row, one block per W row, a partial tile everywhere
    [TestCase(128, 128, 64, 1)]        // one whole tile, two k tiles
    [TestCase(130, 136, 96, 1)]        // edge tiles in M and N, three k tiles (every stage once)
    [TestCase(64, 300, 224, 1)]        // seven k tiles: through the three stages twice and more
    [TestCase(257, 40, 128, 2)]        // three row tiles, split-K 2 x 2
    [TestCase(64, 300, 224, 3)]        // split-K: 7 k tiles as 3 + 3 + 1
    [TestCase(20, 136, 64, 1, 300)]    // C rows wider than N
    [TestCase(33, 72, 320, 4, 80)]     // split-K into wider rows: 10 k tiles as 3 + 3 + 3 + 1
    public void MatchesTheSlabPathBitForBit(int m, int n, int k, int splits, int ldc = 0) =>
        Compare(GgmlType.Q8_0, m, n, k, splits, ldc, anyScale: false);

    /// <summary>
    /// Scales of any finite f16 (subnormal ones; ones whose products overflow f16 to infinity, so outputs are ±∞ or NaN):
    /// the in-kernel widening rounds every weight as the slab dequantizer does, so even those outputs agree bit for bit.
    /// </summary>
    [TestCase(40, 136, 96, 1)]
    [TestCase(130, 24, 160, 2)]
    public void MatchesTheSlabPathWithAnyScale(int m, int n, int k, int splits) => Compare(GgmlType.Q8_0, m, n, k, splits, 0, anyScale: true);

    /// <summary>
    /// The in-kernel widening of <paramref name="type"/> (its entry <see cref="PtxTensorCoreGemm.EntryFor"/>) against the slab
    /// path in the interpreter, bit for bit, outputs poisoned; without <paramref name="anyScale"/> also against the kernel's
    /// accumulation order over the host's f16 weights.
    /// </summary>
    internal static void Compare(GgmlType type, int m, int n, int k, int splits, int ldc, bool anyScale)
    {
        if (ldc == 0) ldc = n;
        int kTiles = k / 32, perSplit = (kTiles + splits - 1) / splits;
        Assert.That((kTiles + perSplit - 1) / perSplit, Is.EqualTo(splits), "test case: every split gets k tiles");
        var rng = new Random(HashCode.Combine(type, m, n, k, splits, ldc, anyScale));
        var blocks = anyScale
            ? MatMulKernelTests.RandomBlocksAnyScale(rng, type, n, k)
            : MatMulKernelTests.RandomBlocks(rng, type, n, k);
        var a = new ushort[m * k];
        for (int i = 0; i < a.Length; i++)
        {
            float v = rng.NextSingle() * 2 - 1;
            a[i] = BitConverter.HalfToUInt16Bits((Half)(v != 0f ? v : 0.5f));   // never zeros
        }

        // the slab path: the whole matrix widened on ILGPU's CPU accelerator, then gemm_f16
        var kernels = LayerKernelTests.Kernels.Value;
        using var wb = kernels.Accelerator.Allocate1D(blocks);
        using var widened = kernels.Accelerator.Allocate1D<ushort>((long)n * k);
        widened.View.MemSet(0xFF);
        kernels.DequantizeToHalf(type, wb.View, widened.View, n, k);
        kernels.Accelerator.Synchronize();
        var halves = widened.GetAsArray1D();
        Assert.That(halves, Is.EqualTo(MatMulKernelTests.HostHalves(type, blocks, n, k)), "premise: the slab dequantizer gives the host's f16 weights");

        var mem = new PtxInterpreter.Memory();
        ulong pa = mem.Upload(a), pw16 = mem.Upload(halves), pq = mem.Upload<byte>([0, 0, .. blocks]) + 2;   // blocks start at an even byte only
        const int guard = 256;
        int cFloats = m * ldc + guard / 4;
        ulong slabC = mem.Poisoned(cFloats), q8C = mem.Poisoned(cFloats);
        var ptx = Module.Value;
        TensorCoreGemmTests.Launch(ptx, mem, "gemm_f16", pa, pw16, slabC, m, n, k, splits, perSplit, ldc);
        TensorCoreGemmTests.Launch(ptx, mem, PtxTensorCoreGemm.EntryFor(type), pa, pq, q8C, m, n, k, splits, perSplit, ldc);

        var expected = MemoryMarshal.Cast<byte, float>(mem.Bytes(slabC, cFloats * 4)).ToArray();
        var got = MemoryMarshal.Cast<byte, float>(mem.Bytes(q8C, cFloats * 4)).ToArray();
        int nonFinite = 0;
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                float g = got[i * ldc + j], e = expected[i * ldc + j];
                if (BitConverter.SingleToInt32Bits(g) != BitConverter.SingleToInt32Bits(e))
                    Assert.Fail($"{type}: y[{i}, {j}] = {g} (0x{BitConverter.SingleToInt32Bits(g):X8}), the slab path gives {e} (0x{BitConverter.SingleToInt32Bits(e):X8})");
                if (!anyScale)
                {
                    float ordered = TensorCoreGemmTests.Ordered(a, halves, i, j, k, splits, perSplit, bf16: false, out _, out _);
                    if (BitConverter.SingleToInt32Bits(g) != BitConverter.SingleToInt32Bits(ordered))
                        Assert.Fail($"y[{i}, {j}] = {g}, the kernel's accumulation order over the host's f16 weights gives {ordered}");
                }
                if (!float.IsFinite(g)) nonFinite++;
            }
            for (int j = n; j < ldc; j++) Assert.That(got[i * ldc + j], Is.NaN, $"store beyond column N in row {i}");
        }
        for (int i = m * ldc; i < cFloats; i++) Assert.That(got[i], Is.NaN, $"store beyond y at element {i}");
        if (anyScale) Assert.That(nonFinite, Is.GreaterThan(0), "test premise: weights past the f16 range reach the output");
        else Assert.That(nonFinite, Is.Zero);
    }

    internal static string Entry(string name)
    {
        var s = Source;
        int start = s.IndexOf($".visible .entry {name}(", StringComparison.Ordinal);
        Assert.That(start, Is.GreaterThanOrEqualTo(0), $"{name} is in the module");
        int end = s.IndexOf("\n}\n", start, StringComparison.Ordinal);
        return s[start..(end + 3)];
    }
}
