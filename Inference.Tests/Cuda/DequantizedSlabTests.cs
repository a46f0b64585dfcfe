using ILGPU;
using ILGPU.Runtime;
using Inference.Cuda;
using Inference.Cuda.Runner;
using Inference.Loading;
using Inference.Tests.Kernels;
using Half = System.Half;

namespace Inference.Tests.Cuda;

/// <summary>
/// The quantized tensor-core path without a GPU: the slab plan (<see cref="DequantizedSlabs"/>), and the composed
/// product — each slab widened by <c>DequantizeToHalf</c> (ILGPU's CPU accelerator) into one workspace, then
/// <c>gemm_f16</c> (the embedded module, in <see cref="PtxInterpreter"/>) writing the slab's columns of the output (rows
/// as wide as the matrix) — bit for bit against the kernel's accumulation order over the host's f16 weights.
/// </summary>
public class DequantizedSlabTests
{
    [TestCase(4096, 4096, DequantizedSlabs.WorkspaceElements)]       // 4096 rows fit: one slab
    [TestCase(128256, 4096, DequantizedSlabs.WorkspaceElements)]     // an output head: 32 slabs of 4096
    [TestCase(4096, 14336, DequantizedSlabs.WorkspaceElements)]      // 1170 rows fit: slabs of 1152 (9 tiles), the last 640
    [TestCase(300, 256, 130L * 256)]                                 // 130 fit: 128, 128, 44
    [TestCase(5, 256, 3L * 256)]                                     // fewer rows than a tile fit: 3, 2
    [TestCase(7, 1024, 100L)]                                        // not one row fits: one row a slab
    public void SlabsCoverEveryRowOnceWithinTheWorkspace(int rows, int cols, long workspace)
    {
        int slabRows = DequantizedSlabs.SlabRows(rows, cols, workspace);
        int count = DequantizedSlabs.Count(rows, slabRows);
        Assert.That(slabRows, Is.InRange(1, rows));
        if (slabRows > 1) Assert.That((long)slabRows * cols, Is.LessThanOrEqualTo(workspace), "the workspace bounds a slab");
        if (workspace / cols >= PtxTensorCoreGemm.Tile.BlockN) Assert.That(slabRows % PtxTensorCoreGemm.Tile.BlockN == 0 || slabRows == rows, Is.True, "whole output tiles");
        else Assert.That(slabRows, Is.EqualTo(Math.Clamp(workspace / cols, 1, rows)), "as many rows as fit");
        var covered = new int[rows];
        int next = 0;
        for (int s = 0; s < count; s++)
        {
            var (first, n) = DequantizedSlabs.Slab(rows, slabRows, s);
            Assert.That(first, Is.EqualTo(next), $"slab {s} starts where the previous ended");
            Assert.That(n, s < count - 1 ? Is.EqualTo(slabRows) : Is.InRange(1, slabRows), $"slab {s}");
            for (int r = first; r < first + n; r++) covered[r]++;
            next = first + n;
        }
        Assert.That(next, Is.EqualTo(rows));
        Assert.That(covered, Is.All.EqualTo(1), "every row in exactly one slab");
    }

    [Test]
    public void SlabRowsRejectsEmptyShapes()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => DequantizedSlabs.SlabRows(0, 256));
        Assert.Throws<ArgumentOutOfRangeException>(() => DequantizedSlabs.SlabRows(4, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => DequantizedSlabs.SlabRows(4, 256, 0));
    }

    /// <summary>
    /// y[m, rows] = x · Wᵀ slab by slab (three slabs, the last partial), against the model of the kernel's rounding over
    /// f16 activations and the host's f16 weights; every output written once, nothing around it.
    /// </summary>
    [TestCase(GgmlType.Q4_K, 20, 300, 256, 1)]
    [TestCase(GgmlType.Q8_0, 9, 290, 96, 1)]
    [TestCase(GgmlType.Q6_K, 33, 260, 512, 2)]
    public void SlabProductMatchesTheModel(GgmlType type, int m, int rows, int cols, int splits)
    {
        var t = PtxTensorCoreGemm.Tile;
        int kTiles = (cols + t.BlockK - 1) / t.BlockK, perSplit = (kTiles + splits - 1) / splits;
        Assert.That((kTiles + perSplit - 1) / perSplit, Is.EqualTo(splits), "test case: every split gets k tiles");
        int slabRows = DequantizedSlabs.SlabRows(rows, cols, 130L * cols);
        int slabs = DequantizedSlabs.Count(rows, slabRows);
        Assert.That(slabs, Is.EqualTo(3), "test case: three slabs");

        var rng = new Random(HashCode.Combine(type, m, rows, cols));
        var blocks = MatMulKernelTests.RandomBlocks(rng, type, rows, cols);
        var weights = MatMulKernelTests.HostHalves(type, blocks, rows, cols);
        var a = new ushort[m * cols];
        for (int i = 0; i < a.Length; i++)
        {
            float v = rng.NextSingle() * 2 - 1;
            a[i] = BitConverter.HalfToUInt16Bits((Half)(v != 0f ? v : 0.5f));   // never zeros
        }

        var kernels = LayerKernelTests.Kernels.Value;
        var acc = kernels.Accelerator;
        using var wb = acc.Allocate1D(blocks);
        using var workspace = acc.Allocate1D<ushort>((long)slabRows * cols);
        var mem = new PtxInterpreter.Memory();
        ulong pa = mem.Alloc(a.Length * 2), pw = mem.Alloc(slabRows * cols * 2);
        const int guard = 256;
        int cBytes = m * rows * 4;
        ulong pc = mem.Alloc(cBytes + guard);
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()).CopyTo(mem.Bytes(pa, a.Length * 2));
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(mem.Bytes(pc, cBytes + guard)).Fill(float.NaN);
        var ptx = PtxInterpreter.Parse(PtxModule.ReadSource(TensorCoreGemmPtx.ModuleName));
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        for (int s = 0; s < slabs; s++)
        {
            var (first, count) = DequantizedSlabs.Slab(rows, slabRows, s);
            workspace.View.MemSet(0xFF);
            kernels.DequantizeToHalf(type, wb.View.SubView(first * rowBytes, count * rowBytes), workspace.View, count, cols);
            acc.Synchronize();
            var slab = workspace.GetAsArray1D();
            Assert.That(slab.AsSpan(0, count * cols).ToArray(), Is.EqualTo(weights.AsSpan(first * cols, count * cols).ToArray()), $"slab {s}: the host's f16 weights");
            System.Runtime.InteropServices.MemoryMarshal.AsBytes(slab.AsSpan()).CopyTo(mem.Bytes(pw, slab.Length * 2));
            TensorCoreGemmTests.Launch(ptx, mem, bf16: false, pa, pw, pc + (ulong)first * 4, m, count, cols, splits, perSplit, ldc: rows);
        }

        var c = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(mem.Bytes(pc, cBytes + guard)).ToArray();
        for (int i = m * rows; i < c.Length; i++) Assert.That(c[i], Is.NaN, $"store beyond y at element {i}");
        for (int i = 0; i < m; i++)
            for (int j = 0; j < rows; j++)
            {
                float expected = TensorCoreGemmTests.Ordered(a, weights, i, j, cols, splits, perSplit, bf16: false, out _, out _);
                if (BitConverter.SingleToInt32Bits(c[i * rows + j]) != BitConverter.SingleToInt32Bits(expected))
                    Assert.Fail($"{type}: y[{i}, {j}] = {c[i * rows + j]}, the model gives {expected}");
            }
    }
}
