using System.Globalization;
using System.Text;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Cuda;
using Inference.Kernels.Layer;
using Half = System.Half;

namespace Inference.Benchmarks.Gpu;

/// <summary>
/// The tensor-core matrix product (<c>Ptx/gemm_tensor_core.ptx</c>) on a GPU: the 0.85B model's F16 products (QKV
/// 2048/512/512 × 2048, output 2048 × 2048, gate/up 5632 × 2048, down 2048 × 5632) at M = 64, 512 and 4096 rows.
/// Reports TFLOP/s of the product alone and with the f32→f16 activation conversion, next to the card's dense FP16
/// tensor peak, the F16 row kernel's time for the same call, and the difference from the row kernel (on the same
/// f16-rounded activations: only the order of f32 accumulation differs). Writes <c>gemm.tsv</c> and a table in the summary.
/// </summary>
public static class TensorCoreGemmBenchmark
{
    /// <summary>The 0.85B model's product shapes (W rows N, columns K), which the device GEMM benchmarks share.</summary>
    internal static readonly (string Name, int N, int K)[] Shapes =
        [("attn_q", 2048, 2048), ("attn_k/v", 512, 2048), ("attn_output", 2048, 2048), ("ffn_gate/up", 5632, 2048), ("ffn_down", 2048, 5632)];

    /// <summary>The activation rows M the device GEMM benchmarks run (the quick check: the first two).</summary>
    internal static readonly int[] Rows = [64, 512, 4096];

    /// <summary>Runs the benchmark; returns whether every product stayed within 1e-4 (relative to the largest output) of the row kernel's.</summary>
    /// <param name="acc">The CUDA accelerator.</param>
    /// <param name="outDir">Where <c>gemm.tsv</c> goes.</param>
    /// <param name="summary">Gets the table.</param>
    /// <param name="quick">Only M = 64 and 512.</param>
    public static bool Run(CudaAccelerator acc, string outDir, StringBuilder summary, bool quick)
    {
        ArgumentNullException.ThrowIfNull(acc);
        ArgumentNullException.ThrowIfNull(summary);
        var kernels = new LayerKernels(acc);
        using var gemm = new PtxTensorCoreGemm(acc);
        int[] rows = quick ? [64, 512] : Rows;
        int maxM = rows.Max(), maxK = Shapes.Max(s => s.K), maxN = Shapes.Max(s => s.N);
        long maxW = Shapes.Max(s => (long)s.N * s.K);
        var rng = new Random(21);
        var wHost = new Half[maxW];
        for (long i = 0; i < maxW; i++) wHost[i] = (Half)NonZero(rng);
        var xHost = new float[(long)maxM * maxK];
        for (long i = 0; i < xHost.Length; i++) xHost[i] = NonZero(rng);
        var xRounded = Array.ConvertAll(xHost, v => (float)(Half)v);
        using var w = acc.Allocate1D(System.Runtime.InteropServices.MemoryMarshal.Cast<Half, ushort>(wHost.AsSpan()).ToArray());
        using var x = acc.Allocate1D(xHost);
        using var xr = acc.Allocate1D(xRounded);
        using var xh = acc.Allocate1D<ushort>(xHost.Length);
        using var y = acc.Allocate1D<float>((long)maxM * maxN);
        using var yRow = acc.Allocate1D<float>(y.Length);

        var (peak, peakSource) = DensePeakTflops(acc);
        var tsv = new StringBuilder("shape\tM\tN\tK\tgemm_us\tgemm_TFLOPs\tfraction_of_peak\twith_convert_us\twith_convert_TFLOPs\trow_kernel_us\tmax_rel_diff\n");
        var tile = TensorCoreGemmTile.Default;
        summary.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"## Tensor-core GEMM (F16, f32 accumulation)\n\ntile {tile.BlockM}x{tile.BlockN}x{tile.BlockK}, {tile.Stages} stages, split-K for small grids; dense FP16 tensor peak {peak:F1} TFLOP/s ({peakSource}); max rel diff: vs the F16 row kernel on the same f16-rounded activations, relative to the largest output\n"));
        summary.AppendLine("| shape | M | N × K | GEMM µs | TFLOP/s | of peak | with f32→f16 µs | TFLOP/s | row kernel µs | max rel diff |");
        summary.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
        bool agree = true;
        foreach (var m in rows)
            foreach (var (name, n, k) in Shapes)
            {
                var wv = ((ArrayView<ushort>)w.View).SubView(0, (long)n * k);
                var xv = x.View.SubView(0, (long)m * k);
                var xrv = xr.View.SubView(0, (long)m * k);
                var yv = y.View.SubView(0, (long)m * n);
                var yr = yRow.View.SubView(0, (long)m * n);
                IntPtr xhPtr = ((ArrayView<ushort>)xh.View).LoadEffectiveAddressAsPtr();
                IntPtr wPtr = wv.LoadEffectiveAddressAsPtr(), yPtr = ((ArrayView<float>)yv).LoadEffectiveAddressAsPtr();

                // correctness: the product of the rounded activations, both kernels
                yv.MemSet((byte)0xFF);
                yr.MemSet((byte)0xFF);
                gemm.MatMul(TensorCoreElement.F16, wv.Cast<byte>(), xrv, yv, m, n, k);
                kernels.MatMul(wv.Cast<ILGPU.Half>(), xrv, yr, n, k, m);
                acc.Synchronize();
                double diff = MatMulBenchmark.MaxRelativeDifference(yv.GetAsArray1D(), yr.GetAsArray1D());
                bool ok = diff <= 1e-4;
                agree &= ok;

                gemm.Convert(TensorCoreElement.F16, ((ArrayView<float>)xv).LoadEffectiveAddressAsPtr(), xhPtr, m * k);
                double flops = 2.0 * m * n * k;
                double tGemm = GpuMode.Time(acc, () => gemm.Run(TensorCoreElement.F16, xhPtr, wPtr, yPtr, m, n, k));
                double tFull = GpuMode.Time(acc, () => gemm.MatMul(TensorCoreElement.F16, wv.Cast<byte>(), xv, yv, m, n, k));
                double tRow = GpuMode.Time(acc, () => kernels.MatMul(wv.Cast<ILGPU.Half>(), xv, yr, n, k, m));
                double tf = flops / tGemm / 1e12, tfFull = flops / tFull / 1e12;
                string diffText = diff.ToString("E1", CultureInfo.InvariantCulture) + (ok ? "" : " **FAIL**");
                tsv.Append(CultureInfo.InvariantCulture,
                    $"{name}\t{m}\t{n}\t{k}\t{tGemm * 1e6:F1}\t{tf:F1}\t{tf / peak:F3}\t{tFull * 1e6:F1}\t{tfFull:F1}\t{tRow * 1e6:F1}\t{diff:E3}\n");
                summary.AppendLine(CultureInfo.InvariantCulture,
                    $"| {name} | {m} | {n} × {k} | {tGemm * 1e6:F1} | {tf:F1} | {tf / peak:P0} | {tFull * 1e6:F1} | {tfFull:F1} | {tRow * 1e6:F1} | {diffText} |");
                Console.WriteLine($"gemm {name} M={m} {n}x{k}: {tGemm * 1e6:F1} us, {tf:F1} TFLOP/s ({tf / peak:P0} of peak); row kernel {tRow * 1e6:F1} us; diff {diff:E2}");
            }
        summary.AppendLine();
        File.WriteAllText(Path.Combine(outDir, "gemm.tsv"), tsv.ToString());
        return agree;
    }

    /// <summary>
    /// The card's dense FP16 tensor peak with f32 accumulation: NVIDIA's datasheet figure for the cards named below, else
    /// multiprocessors × the reported clock × 4,096 (sm_90) or 2,048 (sm_80) FLOP per clock.
    /// </summary>
    private static (double Tflops, string Source) DensePeakTflops(CudaAccelerator acc)
    {
        string name = acc.Name;
        if (name.Contains("H100", StringComparison.OrdinalIgnoreCase) && name.Contains("PCIe", StringComparison.OrdinalIgnoreCase))
            return (756.5, "datasheet, H100 PCIe");
        if (name.Contains("H100", StringComparison.OrdinalIgnoreCase) || name.Contains("H200", StringComparison.OrdinalIgnoreCase))
            return (989.4, "datasheet, H100/H200 SXM");
        if (name.Contains("A100", StringComparison.OrdinalIgnoreCase))
            return (312.0, "datasheet, A100");
        int perClock = acc.Architecture is { Major: >= 9 } ? 4096 : 2048;
        double tflops = acc.NumMultiprocessors * (acc.ClockRate * 1e3) * perClock / 1e12;
        return (tflops, $"{acc.NumMultiprocessors} SMs x {acc.ClockRate / 1e3:F0} MHz x {perClock} FLOP/clock");
    }

    /// <summary>A random value in [-1, 1), never zero.</summary>
    internal static float NonZero(Random rng)
    {
        float v = rng.NextSingle() * 2f - 1f;
        return v == 0f ? 0.5f : v;
    }
}
