using System.Globalization;
using System.Text;
using ILGPU;
using ILGPU.Runtime;
using Inference.Kernels.Layer;
using Inference.Kernels.Reference;

namespace Inference.Benchmarks.Gpu;

/// <summary>
/// The matrix kernels on a GPU: F32, F16 and Q8_0 weights of a 0.85B-class model's shapes (FFN up/gate 5632×2048,
/// FFN down 2048×5632, a 32000-token output head) at batch 1, 4 and 16, the row kernels against the simple kernels
/// they replace. Reports µs per call, weight bytes per second and its fraction of the device's copy bandwidth, and how
/// far the two kernels' outputs differ. Writes <c>matmul.tsv</c> and a table in the summary.
/// </summary>
public static class MatMulBenchmark
{
    private static readonly (int Rows, int Cols)[] Shapes = [(5632, 2048), (2048, 5632), (32000, 2048)];
    private static readonly int[] Batches = [1, 4, 16];

    /// <summary>Runs the benchmark on the standard shapes and batches.</summary>
    /// <param name="acc">The CUDA accelerator (its context has ILGPU.Algorithms enabled).</param>
    /// <param name="outDir">Where <c>matmul.tsv</c> goes.</param>
    /// <param name="summary">Gets the table.</param>
    /// <param name="copyGbs">The device-to-device copy bandwidth (read + write), GB/s.</param>
    /// <returns>Whether every row kernel's output stayed within 1e-3 (relative to the largest output) of the simple kernel's.</returns>
    public static bool Run(Accelerator acc, string outDir, StringBuilder summary, double copyGbs) =>
        Run(acc, outDir, summary, copyGbs, Shapes, Batches);

    /// <summary>Runs the benchmark on given shapes (cols a multiple of 32) and batches.</summary>
    /// <param name="acc">The accelerator (its context has ILGPU.Algorithms enabled).</param>
    /// <param name="outDir">Where <c>matmul.tsv</c> goes.</param>
    /// <param name="summary">Gets the table.</param>
    /// <param name="copyGbs">The device-to-device copy bandwidth (read + write), GB/s.</param>
    /// <param name="shapes">(rows, cols) of the weight matrices.</param>
    /// <param name="batches">Input rows per call.</param>
    /// <returns>Whether every row kernel's output stayed within 1e-3 (relative to the largest output) of the simple kernel's.</returns>
    public static bool Run(Accelerator acc, string outDir, StringBuilder summary, double copyGbs,
        IReadOnlyList<(int Rows, int Cols)> shapes, IReadOnlyList<int> batches)
    {
        ArgumentNullException.ThrowIfNull(acc);
        ArgumentNullException.ThrowIfNull(summary);
        ArgumentNullException.ThrowIfNull(shapes);
        ArgumentNullException.ThrowIfNull(batches);
        var kernels = new LayerKernels(acc);
        long maxWeights = shapes.Max(s => (long)s.Rows * s.Cols);
        int maxCols = shapes.Max(s => s.Cols), maxRows = shapes.Max(s => s.Rows), maxBatch = batches.Max();

        // random non-zero weights and inputs in [-1, 1); one host array serves every shape (a prefix of it)
        var rng = new Random(13);
        var values = RandomValues(rng, maxWeights);
        using var w32 = acc.Allocate1D(values);
        using var w16 = acc.Allocate1D(Array.ConvertAll(values, v => (ILGPU.Half)v));
        using var wq8 = acc.Allocate1D(ReferenceMatMul.QuantizeQ8_0(values));
        values = [];
        using var x = acc.Allocate1D(RandomValues(rng, (long)maxBatch * maxCols));
        using var y = acc.Allocate1D<float>((long)maxBatch * maxRows);
        using var ySimple = acc.Allocate1D<float>(y.Length);

        var tsv = new StringBuilder("weights\trows\tcols\tbatch\tkernel\tus_per_call\tweight_bytes\tGB_per_s\tfraction_of_copy\tmax_rel_diff\n");
        summary.AppendLine(CultureInfo.InvariantCulture,
            $"## Matrix kernels\n\nrow kernels: {kernels.RowGroupSize} threads per group, {kernels.LanesPerRow} per row; " +
            $"weight bytes read once per call counted; copy bandwidth {copyGbs:F0} GB/s (read + write)\n");
        summary.AppendLine("| weights | rows × cols | batch | kernel | µs/call | weight GB/s | of copy | max rel diff |");
        summary.AppendLine("|---|---|---|---|---|---|---|---|");
        bool agree = true;
        foreach (var type in new[] { "f16", "q8_0", "f32" })
            foreach (var (rows, cols) in shapes)
                foreach (var batch in batches)
                {
                    long count = (long)rows * cols;
                    var xv = x.View.SubView(0, (long)batch * cols);
                    var yv = y.View.SubView(0, (long)batch * rows);
                    var sv = ySimple.View.SubView(0, yv.Length);
                    (Action Row, Action Simple, long Bytes) c = type switch
                    {
                        "f32" => (() => kernels.MatMul(w32.View.SubView(0, count), xv, yv, rows, cols, batch),
                            () => kernels.MatMulSimple(w32.View.SubView(0, count), xv, sv, rows, cols, batch), count * 4),
                        "f16" => (() => kernels.MatMul(w16.View.SubView(0, count), xv, yv, rows, cols, batch),
                            () => kernels.MatMulSimple(w16.View.SubView(0, count), xv, sv, rows, cols, batch), count * 2),
                        _ => (() => kernels.MatMulQ8_0(wq8.View.SubView(0, count / 32 * 34), xv, yv, rows, cols, batch),
                            () => kernels.MatMulQ8_0Simple(wq8.View.SubView(0, count / 32 * 34), xv, sv, rows, cols, batch), count / 32 * 34),
                    };
                    yv.MemSet((byte)0xFF);   // NaN: an output a kernel skips shows in the difference
                    sv.MemSet((byte)0xFF);
                    c.Row();
                    c.Simple();
                    acc.Synchronize();
                    double diff = MaxRelativeDifference(yv.GetAsArray1D(), sv.GetAsArray1D());
                    bool ok = diff <= 1e-3;
                    agree &= ok;
                    foreach (var (kernel, run) in new[] { ("row", c.Row), ("simple", c.Simple) })
                    {
                        double seconds = GpuMode.Time(acc, run);
                        double gbs = c.Bytes / seconds / 1e9;
                        string diffText = kernel == "row" ? diff.ToString("E1", CultureInfo.InvariantCulture) + (ok ? "" : " **FAIL**") : "";
                        tsv.Append(CultureInfo.InvariantCulture,
                            $"{type}\t{rows}\t{cols}\t{batch}\t{kernel}\t{seconds * 1e6:F1}\t{c.Bytes}\t{gbs:F1}\t{gbs / copyGbs:F3}\t{(kernel == "row" ? diff.ToString("E3", CultureInfo.InvariantCulture) : "")}\n");
                        summary.AppendLine(CultureInfo.InvariantCulture,
                            $"| {type} | {rows} × {cols} | {batch} | {kernel} | {seconds * 1e6:F1} | {gbs:F0} | {gbs / copyGbs:P0} | {diffText} |");
                        Console.WriteLine($"matmul {type} {rows}x{cols} batch {batch} {kernel}: {seconds * 1e6:F1} us, {gbs:F0} GB/s");
                    }
                }
        summary.AppendLine();
        File.WriteAllText(Path.Combine(outDir, "matmul.tsv"), tsv.ToString());
        return agree;
    }

    private static float[] RandomValues(Random rng, long count)
    {
        var a = new float[count];
        for (long i = 0; i < count; i++)
        {
            float v = rng.NextSingle() * 2f - 1f;
            a[i] = v == 0f ? 0.5f : v;
        }
        return a;
    }

    /// <summary>max |a − b| over max |b|; NaN anywhere gives +∞.</summary>
    internal static double MaxRelativeDifference(float[] a, float[] b)
    {
        double scale = 0, diff = 0;
        for (int i = 0; i < a.Length; i++)
        {
            if (!float.IsFinite(a[i]) || !float.IsFinite(b[i])) return double.PositiveInfinity;
            scale = Math.Max(scale, Math.Abs(b[i]));
            diff = Math.Max(diff, Math.Abs((double)a[i] - b[i]));
        }
        return scale > 0 ? diff / scale : diff;
    }
}
