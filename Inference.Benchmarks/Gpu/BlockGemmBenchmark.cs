using System.Globalization;
using System.Text;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Cuda;
using Inference.Kernels.Layer;
using Inference.Loading;
using Half = System.Half;

namespace Inference.Benchmarks.Gpu;

/// <summary>
/// Block weights on the tensor cores: for each type of <see cref="PtxTensorCoreGemm.InKernelBlockTypes"/>, its
/// entry (<c>gemm_q8_0</c>, <c>gemm_q4_0</c>, …: the blocks widened to f16 inside the kernel) against the slab path it
/// replaces (the matrix widened by <see cref="LayerKernels.DequantizeToHalf"/>, then <c>gemm_f16</c>) and against
/// <c>gemm_f16</c> alone over the widened matrix (the f16 product's time, the floor the in-kernel widening adds to), for
/// the 0.85B model's shapes at M = 64, 512 and 4096 rows. Checks that each entry equals the slab path bit for bit (both
/// run the whole matrix, so the same split-K). Writes <c>gemm_blocks.tsv</c> and a table in the summary.
/// </summary>
public static class BlockGemmBenchmark
{
    // Each distinct shape of the tensor-core benchmark once (attn_output is attn_q's).
    private static readonly (string Name, int N, int K)[] Shapes = TensorCoreGemmBenchmark.Shapes.DistinctBy(s => (s.N, s.K)).ToArray();

    private static readonly int[] Rows = TensorCoreGemmBenchmark.Rows;

    /// <summary>Runs the benchmark; returns whether every product of the in-kernel entries equalled the slab path's bit for bit.</summary>
    /// <param name="acc">The CUDA accelerator.</param>
    /// <param name="outDir">Where <c>gemm_blocks.tsv</c> goes.</param>
    /// <param name="summary">Gets the table.</param>
    /// <param name="quick">Only M = 64 and 512.</param>
    public static bool Run(CudaAccelerator acc, string outDir, StringBuilder summary, bool quick)
    {
        ArgumentNullException.ThrowIfNull(acc);
        ArgumentNullException.ThrowIfNull(summary);
        var kernels = new LayerKernels(acc);
        using var gemm = new PtxTensorCoreGemm(acc);
        int[] rows = quick ? [64, 512] : Rows;
        var types = PtxTensorCoreGemm.InKernelBlockTypes.ToArray();
        int maxM = rows.Max(), maxK = Shapes.Max(s => s.K), maxN = Shapes.Max(s => s.N);
        long maxW = Shapes.Max(s => (long)s.N * s.K);
        var rng = new Random(23);
        var xHost = new float[(long)maxM * maxK];
        for (long i = 0; i < xHost.Length; i++) xHost[i] = TensorCoreGemmBenchmark.NonZero(rng);
        using var widened = acc.Allocate1D<ushort>(maxW);
        using var x = acc.Allocate1D(xHost);
        using var xh = acc.Allocate1D<ushort>(xHost.Length);
        using var y = acc.Allocate1D<float>((long)maxM * maxN);
        using var ySlab = acc.Allocate1D<float>(y.Length);

        var tsv = new StringBuilder("type\tshape\tM\tN\tK\tin_kernel_us\tin_kernel_TFLOPs\tslab_us\twiden_us\tf16_gemm_us\tbit_equal\n");
        summary.AppendLine("## Block weights on the tensor cores: widened in the kernel (gemm_q8_0, gemm_q4_0, …) vs the slab path (widen, then gemm_f16)\n");
        summary.AppendLine("f16 activations staged once outside the timings; slab = widen + f16 GEMM; f16 GEMM = the product of the widened matrix alone\n");
        summary.AppendLine("| type | shape | M | N × K | in-kernel µs | TFLOP/s | slab path µs | widen µs | f16 GEMM µs | bits equal |");
        summary.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        bool agree = true;
        foreach (var type in types)
        {
            using var w = acc.Allocate1D(RandomBlocks(rng, type, maxW));
            foreach (var m in rows)
                foreach (var (name, n, k) in Shapes)
                {
                    ArrayView<byte> wv = w.View.SubView(0, n * GgmlTypeInfo.RowBytes(type, k));
                    ArrayView<ushort> wide = widened.View.SubView(0, (long)n * k);
                    var yv = y.View.SubView(0, (long)m * n);
                    var ys = ySlab.View.SubView(0, (long)m * n);
                    IntPtr xhPtr = ((ArrayView<ushort>)xh.View).LoadEffectiveAddressAsPtr();
                    IntPtr wPtr = wv.LoadEffectiveAddressAsPtr(), widePtr = wide.LoadEffectiveAddressAsPtr();
                    IntPtr yPtr = ((ArrayView<float>)yv).LoadEffectiveAddressAsPtr(), ysPtr = ((ArrayView<float>)ys).LoadEffectiveAddressAsPtr();
                    gemm.Convert(TensorCoreElement.F16, ((ArrayView<float>)x.View).LoadEffectiveAddressAsPtr(), xhPtr, m * k);

                    yv.MemSet((byte)0xFF);
                    ys.MemSet((byte)0xFF);
                    gemm.RunBlocks(type, xhPtr, wPtr, yPtr, m, n, k);
                    kernels.DequantizeToHalf(type, wv, wide, n, k);
                    gemm.Run(TensorCoreElement.F16, xhPtr, widePtr, ysPtr, m, n, k);
                    acc.Synchronize();
                    var a = yv.GetAsArray1D();
                    var b = ys.GetAsArray1D();
                    bool equal = true;
                    for (int i = 0; i < a.Length && equal; i++) equal = BitConverter.SingleToInt32Bits(a[i]) == BitConverter.SingleToInt32Bits(b[i]);
                    agree &= equal;

                    double tIn = GpuMode.Time(acc, () => gemm.RunBlocks(type, xhPtr, wPtr, yPtr, m, n, k));
                    double tWiden = GpuMode.Time(acc, () => kernels.DequantizeToHalf(type, wv, wide, n, k));
                    double tF16 = GpuMode.Time(acc, () => gemm.Run(TensorCoreElement.F16, xhPtr, widePtr, ysPtr, m, n, k));
                    double tSlab = GpuMode.Time(acc, () =>
                    {
                        kernels.DequantizeToHalf(type, wv, wide, n, k);
                        gemm.Run(TensorCoreElement.F16, xhPtr, widePtr, ysPtr, m, n, k);
                    });
                    double tf = 2.0 * m * n * k / tIn / 1e12;
                    tsv.Append(CultureInfo.InvariantCulture,
                        $"{type}\t{name}\t{m}\t{n}\t{k}\t{tIn * 1e6:F1}\t{tf:F1}\t{tSlab * 1e6:F1}\t{tWiden * 1e6:F1}\t{tF16 * 1e6:F1}\t{(equal ? 1 : 0)}\n");
                    summary.AppendLine(CultureInfo.InvariantCulture,
                        $"| {type} | {name} | {m} | {n} × {k} | {tIn * 1e6:F1} | {tf:F1} | {tSlab * 1e6:F1} | {tWiden * 1e6:F1} | {tF16 * 1e6:F1} | {(equal ? "yes" : "**NO**")} |");
                    Console.WriteLine($"{PtxTensorCoreGemm.EntryFor(type)} {name} M={m} {n}x{k}: {tIn * 1e6:F1} us ({tf:F1} TFLOP/s); slab path {tSlab * 1e6:F1} us (widen {tWiden * 1e6:F1}, f16 GEMM {tF16 * 1e6:F1}); bits equal {equal}");
                }
        }
        summary.AppendLine();
        File.WriteAllText(Path.Combine(outDir, "gemm_blocks.tsv"), tsv.ToString());
        return agree;
    }

    /// <summary>
    /// Blocks of <paramref name="type"/> for <paramref name="values"/> weights: random bytes, each f16 scale (and min)
    /// of either sign in [0.01, 0.1).
    /// </summary>
    private static byte[] RandomBlocks(Random rng, GgmlType type, long values)
    {
        GgmlTypeInfo.TryGetBlock(type, out int elements, out int blockBytes);
        int[] halves = type switch
        {
            GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q5_K => [0, 2],
            GgmlType.Q6_K => [208],
            _ => [0],
        };
        var bytes = new byte[values / elements * blockBytes];
        rng.NextBytes(bytes);
        for (long b = 0; b < bytes.Length; b += blockBytes)
            foreach (int o in halves)
            {
                var d = (Half)((rng.NextSingle() * 0.09f + 0.01f) * (rng.Next(2) == 0 ? -1 : 1));
                BitConverter.TryWriteBytes(bytes.AsSpan((int)(b + o), 2), d);
            }
        return bytes;
    }
}
