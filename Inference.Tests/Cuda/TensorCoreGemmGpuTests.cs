using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Cuda;
using Inference.Kernels.Layer;
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
    /// The grouped products of two stacks over the same activations (a block's gate and up) convert them to f16 once,
    /// and each output equals its stack's grouped product alone bit for bit (groups of uneven rows, one empty).
    /// </summary>
    [Test]
    public void GroupedPair_ConvertsOnce_AndEqualsEachProductAlone()
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

        gemm.MatMulGroupedPair(TensorCoreElement.F16, Bytes(gate), Bytes(up), x.View, pairGate.View, pairUp.View, s.View, groups, maxRows, rows, n, k);
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

    /// <summary>
    /// gemm_q8_0 (Q8_0 widened inside the kernel) against the path it replaces on the device — the matrix widened by
    /// <see cref="LayerKernels.DequantizeToHalf"/> and multiplied by gemm_f16 with the same split-K — bit for bit, and
    /// against the Q8_0 row kernel within the f32 accumulation-order bound (f16-exact activations).
    /// </summary>
    [TestCase(64, 512, 2048)]
    [TestCase(130, 136, 96)]
    [TestCase(512, 2048, 5632)]
    public void Q8_0GemmMatchesTheSlabPath(int m, int n, int k)
    {
        var backend = GpuTestBackend.RequireDevice();
        var acc = backend.Accelerator;
        var rng = new Random(m * 3 + n + k);
        var blocks = Inference.Tests.Kernels.MatMulKernelTests.RandomBlocks(rng, Inference.Loading.GgmlType.Q8_0, n, k);
        var xHost = new float[(long)m * k];
        for (int i = 0; i < xHost.Length; i++) xHost[i] = (float)(Half)(rng.NextSingle() * 2 - 1);
        var kernels = new LayerKernels(acc);
        using var w = acc.Allocate1D(blocks);
        using var widened = acc.Allocate1D<ushort>((long)n * k);
        using var x = acc.Allocate1D(xHost);
        using var y = acc.Allocate1D<float>((long)m * n);
        using var ySlab = acc.Allocate1D<float>((long)m * n);
        using var yRow = acc.Allocate1D<float>((long)m * n);
        y.View.MemSet((byte)0xFF);
        ySlab.View.MemSet((byte)0xFF);
        yRow.View.MemSet((byte)0xFF);
        using var gemm = new PtxTensorCoreGemm(acc);
        gemm.MatMulQ8_0(w.View, x.View, y.View, m, n, k);
        kernels.DequantizeToHalf(Inference.Loading.GgmlType.Q8_0, w.View, widened.View, n, k);
        gemm.MatMul(TensorCoreElement.F16, ((ArrayView<ushort>)widened.View).Cast<byte>(), x.View, ySlab.View, m, n, k);
        kernels.MatMulQ8_0(w.View, x.View, yRow.View, n, k, m);
        acc.Synchronize();
        var a = y.GetAsArray1D();
        var slab = ySlab.GetAsArray1D();
        var row = yRow.GetAsArray1D();
        double scale = row.Max(v => Math.Abs(v));
        for (int i = 0; i < a.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(slab[i]))
                Assert.Fail($"element {i}: in-kernel widening {a[i]}, slab path {slab[i]}");
            Assert.That(Math.Abs(a[i] - row[i]), Is.LessThanOrEqualTo(1e-4 * scale), $"element {i}: {a[i]} vs the row kernel's {row[i]}");
        }
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
