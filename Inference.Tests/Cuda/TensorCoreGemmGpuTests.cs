using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Cuda;
using Inference.Cuda.Runner;
using Inference.Kernels.Layer;
using Inference.Loading;
using Half = System.Half;

namespace Inference.Tests.Cuda;

/// <summary>The tensor-core matrix product and CUDA graphs on a device. Skipped where no CUDA device exists.</summary>
[Category("Gpu")]
public class TensorCoreGemmGpuTests
{
    [TestCase(8, 512, 2048)]
    [TestCase(130, 136, 88)]
    [TestCase(512, 2048, 5632)]
    public void GemmMatchesTheRowKernel(int m, int n, int k)
    {
        var backend = GpuTestBackend.RequireDevice();
        var acc = backend.Accelerator;
        var rng = new Random(m + n + k);
        var wHost = new Half[(long)n * k];
        for (int i = 0; i < wHost.Length; i++) wHost[i] = (Half)(rng.NextSingle() * 2 - 1);
        // f16-exact activations: the two kernels then differ only in the order of f32 accumulation
        var xHost = new float[(long)m * k];
        for (int i = 0; i < xHost.Length; i++) xHost[i] = (float)(Half)(rng.NextSingle() * 2 - 1);
        using var w = acc.Allocate1D(System.Runtime.InteropServices.MemoryMarshal.Cast<Half, ushort>(wHost.AsSpan()).ToArray());
        using var x = acc.Allocate1D(xHost);
        using var y = acc.Allocate1D<float>((long)m * n);
        using var yRow = acc.Allocate1D<float>((long)m * n);
        y.View.MemSet((byte)0xFF);
        yRow.View.MemSet((byte)0xFF);
        using var gemm = new PtxTensorCoreGemm(acc);
        gemm.MatMul(TensorCoreElement.F16, ((ArrayView<ushort>)w.View).Cast<byte>(), x.View, y.View, m, n, k);
        new LayerKernels(acc).MatMul(((ArrayView<ushort>)w.View).Cast<ILGPU.Half>(), x.View, yRow.View, n, k, m);
        acc.Synchronize();
        var a = y.GetAsArray1D();
        var b = yRow.GetAsArray1D();
        double scale = b.Max(v => Math.Abs(v));
        for (int i = 0; i < a.Length; i++)
            Assert.That(Math.Abs(a[i] - b[i]), Is.LessThanOrEqualTo(1e-4 * scale), $"element {i}: {a[i]} vs {b[i]}");
    }

    /// <summary>
    /// The grouped products of two stacks over one staging of the activations (a block's gate and up) convert them to f16
    /// once, and each output equals its stack's grouped product alone bit for bit (groups of uneven rows, one empty).
    /// </summary>
    [Test]
    public void GroupedProductsOfOneStaging_ConvertOnce_AndEqualEachProductAlone()
    {
        var backend = GpuTestBackend.RequireDevice();
        var acc = backend.Accelerator;
        int[] counts = [37, 0, 5, 150];
        const int n = 136, k = 88;
        int groups = counts.Length, maxRows = counts.Max(), rows = counts.Sum();
        var starts = new int[groups + 1];
        for (int z = 0; z < groups; z++) starts[z + 1] = starts[z] + counts[z];
        var rng = new Random(11);
        ushort[] Stack() => [.. Enumerable.Range(0, groups * n * k).Select(_ => BitConverter.HalfToUInt16Bits((Half)(rng.NextSingle() * 2 - 1)))];
        using var gate = acc.Allocate1D(Stack());
        using var up = acc.Allocate1D(Stack());
        using var x = acc.Allocate1D(Enumerable.Range(0, rows * k).Select(_ => rng.NextSingle() * 2 - 1).ToArray());   // not f16-exact
        using var s = acc.Allocate1D(starts);
        using var pairGate = acc.Allocate1D<float>((long)rows * n);
        using var pairUp = acc.Allocate1D<float>((long)rows * n);
        using var aloneGate = acc.Allocate1D<float>((long)rows * n);
        using var aloneUp = acc.Allocate1D<float>((long)rows * n);
        foreach (var y in new[] { pairGate, pairUp, aloneGate, aloneUp }) y.View.MemSet((byte)0xFF);
        static ArrayView<byte> Bytes(MemoryBuffer1D<ushort, Stride1D.Dense> w) => ((ArrayView<ushort>)w.View).Cast<byte>();
        using var gemm = new PtxTensorCoreGemm(acc);

        var staged = gemm.Stage(TensorCoreElement.F16, x.View, rows, k);
        gemm.MatMulGrouped(staged, Bytes(gate), pairGate.View, s.View, groups, maxRows, n);
        gemm.MatMulGrouped(staged, Bytes(up), pairUp.View, s.View, groups, maxRows, n);
        Assert.That(gemm.ConversionCount, Is.EqualTo(1), "one staging copy for both products");
        gemm.MatMulGrouped(TensorCoreElement.F16, Bytes(gate), x.View, aloneGate.View, s.View, groups, maxRows, rows, n, k);
        gemm.MatMulGrouped(TensorCoreElement.F16, Bytes(up), x.View, aloneUp.View, s.View, groups, maxRows, rows, n, k);
        Assert.That(gemm.ConversionCount, Is.EqualTo(3));
        acc.Synchronize();

        foreach (var (pair, alone, name) in new[] { (pairGate, aloneGate, "gate"), (pairUp, aloneUp, "up") })
        {
            var got = pair.GetAsArray1D();
            Assert.That(got, Has.None.NaN, $"{name}: every row lies in a group");
            Assert.That(got.Select(BitConverter.SingleToInt32Bits), Is.EqualTo(alone.GetAsArray1D().Select(BitConverter.SingleToInt32Bits)), name);
        }
    }

    /// <summary>The in-kernel widening's products (<paramref name="a"/>) equal the slab path's bit for bit and the row
    /// kernel's within 1e-4 of the largest output.</summary>
    private static void AssertSlabBitsAndNearRow(string what, float[] a, float[] slab, float[] row)
    {
        double scale = row.Max(v => Math.Abs(v));
        for (int i = 0; i < a.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(slab[i]))
                Assert.Fail($"{what} element {i}: in-kernel widening {a[i]}, slab path {slab[i]}");
            Assert.That(Math.Abs(a[i] - row[i]), Is.LessThanOrEqualTo(1e-4 * scale), $"{what} element {i}: {a[i]} vs the row kernel's {row[i]}");
        }
    }

    /// <summary>
    /// A fused q/k/v op (<see cref="DeviceMatrix.MatMulSameInput"/>): the matrices on the tensor-core kernel read one f16
    /// conversion of the input, those on the row kernels none, and each output equals the matrix's own product bit for
    /// bit (inputs not exact in f16, outputs poisoned); below <see cref="DeviceMatrix.TensorCoreMinRows"/> rows nothing converts.
    /// </summary>
    [TestCase(GgmlType.F16, GgmlType.F16, GgmlType.F16, 37, 1)]
    [TestCase(GgmlType.F16, GgmlType.F32, GgmlType.F16, 37, 1)]
    [TestCase(GgmlType.F32, GgmlType.Q8_0, GgmlType.F16, 130, 1)]
    [TestCase(GgmlType.F16, GgmlType.F16, GgmlType.F16, 8, 0)]
    [TestCase(GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_0, 130, 1, true)]
    [TestCase(GgmlType.F32, GgmlType.Q8_0, GgmlType.Q4_0, 130, 1, true)]
    public void FusedQkv_ConvertsOnce_AndEqualsEachProductAlone(GgmlType q, GgmlType k, GgmlType v, int batch, int conversions, bool quantized = false)
    {
        var backend = GpuTestBackend.RequireDevice();
        var acc = backend.Accelerator;
        var rng = new Random(batch);
        const int cols = 96;
        int[] rows = [136, 48, 40];
        GgmlType[] types = [q, k, v];
        var kernels = new LayerKernels(acc);
        using var gemm = new PtxTensorCoreGemm(acc) { QuantizedProducts = quantized };
        var matrices = new DeviceMatrix[3];
        var together = new MemoryBuffer1D<float, Stride1D.Dense>[3];
        var alone = new MemoryBuffer1D<float, Stride1D.Dense>[3];
        try
        {
            for (int i = 0; i < 3; i++)
            {
                matrices[i] = SharedConversionsTests.RandomMatrix(acc, rng, types[i], rows[i], cols);
                together[i] = acc.Allocate1D(Enumerable.Repeat(float.NaN, batch * rows[i]).ToArray());
                alone[i] = acc.Allocate1D(Enumerable.Repeat(float.NaN, batch * rows[i]).ToArray());
            }
            using var x = acc.Allocate1D(SharedConversionsTests.RandomActivations(rng, batch * cols));
            DeviceMatrix.MatMulSameInput(kernels, gemm, x.View, batch, matrices, [together[0].View, together[1].View, together[2].View]);
            Assert.That(gemm.ConversionCount, Is.EqualTo(conversions), "one conversion for the products on the tensor-core kernel");
            for (int i = 0; i < 3; i++) matrices[i].MatMul(kernels, gemm, x.View, alone[i].View, batch);
            Assert.That(gemm.ConversionCount, Is.EqualTo(conversions + types.Count(t => t == GgmlType.F16 && batch >= DeviceMatrix.TensorCoreMinRows
                || quantized && PtxTensorCoreGemm.WidensInKernel(t) && batch >= DeviceMatrix.QuantizedTensorCoreMinRows)),
                "each product alone converts its own");
            acc.Synchronize();
            for (int i = 0; i < 3; i++)
                SharedConversionsTests.AssertBitwiseEqual(together[i].GetAsArray1D(), alone[i].GetAsArray1D(), $"{"qkv"[i]} ({types[i]})");
        }
        finally
        {
            foreach (var b in together.Concat(alone)) b?.Dispose();
            foreach (var m in matrices) m?.Dispose();
        }
    }

    /// <summary>A staging overwritten by a later conversion is refused, not read.</summary>
    [Test]
    public void StaleStagingIsRefused()
    {
        var backend = GpuTestBackend.RequireDevice();
        var acc = backend.Accelerator;
        using var gemm = new PtxTensorCoreGemm(acc);
        using var x = acc.Allocate1D(SharedConversionsTests.RandomActivations(new Random(3), 16 * 32));
        using var w = acc.Allocate1D<byte>(8 * 32 * 2);
        using var y = acc.Allocate1D<float>(16 * 8);
        var first = gemm.Stage(TensorCoreElement.F16, x.View, 16, 32);
        var second = gemm.Stage(TensorCoreElement.BF16, x.View, 16, 32);
        Assert.Throws<InvalidOperationException>(() => gemm.MatMul(first, w.View, y.View, 8));
        Assert.Throws<InvalidOperationException>(() => gemm.MatMul(default, w.View, y.View, 8));
        Assert.DoesNotThrow(() => gemm.MatMul(second, w.View, y.View, 8));
        acc.Synchronize();
    }

    /// <summary>
    /// gemm_q8_0, gemm_q4_0, gemm_q4_k, gemm_q6_k, gemm_q5_k, gemm_q4_1, gemm_q5_0 and gemm_q5_1 (block weights widened
    /// inside the kernel) against the slab path on the device — the matrix widened by
    /// <see cref="LayerKernels.DequantizeToHalf"/> and multiplied by gemm_f16 with the same split-K — bit for bit, and
    /// against the type's row kernel within the f32 accumulation-order bound (f16-exact activations); the blocks start 2
    /// bytes past an aligned address, as a matrix in the file may.
    /// </summary>
    [TestCase(GgmlType.Q8_0, 64, 512, 2048)]
    [TestCase(GgmlType.Q8_0, 130, 136, 96)]
    [TestCase(GgmlType.Q8_0, 512, 2048, 5632)]
    [TestCase(GgmlType.Q4_0, 64, 512, 2048)]
    [TestCase(GgmlType.Q4_0, 130, 136, 96)]
    [TestCase(GgmlType.Q4_0, 512, 2048, 5632)]
    [TestCase(GgmlType.Q4_K, 64, 512, 2048)]
    [TestCase(GgmlType.Q4_K, 130, 136, 256)]
    [TestCase(GgmlType.Q4_K, 512, 2048, 5632)]
    [TestCase(GgmlType.Q6_K, 64, 512, 2048)]
    [TestCase(GgmlType.Q6_K, 130, 136, 256)]
    [TestCase(GgmlType.Q6_K, 512, 2048, 5632)]
    [TestCase(GgmlType.Q5_K, 64, 512, 2048)]
    [TestCase(GgmlType.Q5_K, 130, 136, 256)]
    [TestCase(GgmlType.Q5_K, 512, 2048, 5632)]
    [TestCase(GgmlType.Q4_1, 130, 136, 96)]
    [TestCase(GgmlType.Q4_1, 512, 2048, 5632)]
    [TestCase(GgmlType.Q5_0, 130, 136, 96)]
    [TestCase(GgmlType.Q5_0, 512, 2048, 5632)]
    [TestCase(GgmlType.Q5_1, 130, 136, 96)]
    [TestCase(GgmlType.Q5_1, 512, 2048, 5632)]
    public void BlockTypeGemmMatchesTheSlabPath(GgmlType type, int m, int n, int k)
    {
        var backend = GpuTestBackend.RequireDevice();
        var acc = backend.Accelerator;
        var rng = new Random(HashCode.Combine(type, m, n, k));
        var blocks = Inference.Tests.Kernels.MatMulKernelTests.RandomBlocks(rng, type, n, k);
        var xHost = new float[(long)m * k];
        for (int i = 0; i < xHost.Length; i++) xHost[i] = (float)(Half)(rng.NextSingle() * 2 - 1);
        var kernels = new LayerKernels(acc);
        using var padded = acc.Allocate1D<byte>([0, 0, .. blocks]);
        var w = padded.View.SubView(2, blocks.Length);
        using var widened = acc.Allocate1D<ushort>((long)n * k);
        using var x = acc.Allocate1D(xHost);
        using var y = acc.Allocate1D<float>((long)m * n);
        using var ySlab = acc.Allocate1D<float>((long)m * n);
        using var yRow = acc.Allocate1D<float>((long)m * n);
        y.View.MemSet((byte)0xFF);
        ySlab.View.MemSet((byte)0xFF);
        yRow.View.MemSet((byte)0xFF);
        using var gemm = new PtxTensorCoreGemm(acc);
        gemm.MatMulBlocks(type, w, x.View, y.View, m, n, k);
        kernels.DequantizeToHalf(type, w, widened.View, n, k);
        gemm.MatMul(TensorCoreElement.F16, ((ArrayView<ushort>)widened.View).Cast<byte>(), x.View, ySlab.View, m, n, k);
        if (type == GgmlType.Q8_0) kernels.MatMulQ8_0(w, x.View, yRow.View, n, k, m);
        else kernels.MatMulBlocks(type, w, x.View, yRow.View, n, k, m);
        acc.Synchronize();
        AssertSlabBitsAndNearRow(type.ToString(), y.GetAsArray1D(), ySlab.GetAsArray1D(), yRow.GetAsArray1D());
    }

    [Test]
    public void CapturedGraphReplaysTheConversion()
    {
        var backend = GpuTestBackend.RequireDevice();
        if (!CudaGraph.IsSupported(out var reason)) Assert.Ignore($"no CUDA graphs: {reason}");
        var acc = backend.Accelerator;
        const int count = 1000;
        var rng = new Random(4);
        var first = Enumerable.Range(0, count).Select(_ => rng.NextSingle() * 2 - 1).ToArray();
        var second = Enumerable.Range(0, count).Select(_ => rng.NextSingle() * 8 - 4).ToArray();
        using var src = acc.Allocate1D(first);
        using var dst = acc.Allocate1D<ushort>(count);
        dst.View.MemSet(0xFF);
        acc.Synchronize();
        using var gemm = new PtxTensorCoreGemm(acc);
        using var stream = (CudaStream)acc.CreateStream();
        IntPtr s = ((ArrayView<float>)src.View).LoadEffectiveAddressAsPtr(), d = ((ArrayView<ushort>)dst.View).LoadEffectiveAddressAsPtr();
        using var graph = CudaGraph.Capture(stream, () => gemm.Convert(TensorCoreElement.F16, s, d, count, stream));
        stream.Synchronize();
        Assert.That(dst.GetAsArray1D(), Is.All.EqualTo((ushort)0xFFFF), "capture records the launch without running it");

        graph.Launch(stream);
        stream.Synchronize();
        Assert.That(dst.GetAsArray1D(), Is.EqualTo(first.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray()));

        ((ArrayView<float>)src.View).CopyFromCPU<float, ArrayView<float>>(second);
        acc.Synchronize();
        graph.Launch(stream);
        stream.Synchronize();
        Assert.That(dst.GetAsArray1D(), Is.EqualTo(second.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray()), "a replay reads the buffers again");
    }
}

/// <summary>The CUDA graph wrapper where no device may exist.</summary>
public class CudaGraphTests
{
    [Test]
    public void IsSupportedNeverThrows()
    {
        bool supported = CudaGraph.IsSupported(out var reason);
        Assert.That(supported, Is.EqualTo(reason is null));
        if (!supported) Assert.That(reason, Is.Not.Empty);
    }
}
