using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>
/// The plain matmul every fast kernel is tested against: each weight row dequantized with <see cref="Dequantize.Row"/>
/// and dotted with the unquantized activations in float64.
/// </summary>
internal static class MatMulReference
{
    /// <summary>y[b, r] = Σ_c W[r, c]·x[b, c] in float64; x is [batch, Cols], y is [batch, Rows].</summary>
    public static void Multiply(in WeightMatrix w, ReadOnlySpan<float> x, Span<double> y, int batch)
    {
        var row = new float[w.Cols];
        for (int r = 0; r < w.Rows; r++)
        {
            w.DequantizeRow(r, row);
            for (int b = 0; b < batch; b++)
            {
                var xb = x.Slice(b * w.Cols, w.Cols);
                double s = 0;
                for (int c = 0; c < w.Cols; c++) s += (double)row[c] * xb[c];
                y[b * w.Rows + r] = s;
            }
        }
    }

    /// <summary>
    /// y[b, r] for float weights (F32, F16, BF16) with the exact bits of the 256-bit (AVX2) float kernels, whatever the
    /// batch: eight lanes, lane j accumulating the fused products of columns j, j + 8, j + 16 … in column order over the
    /// whole eight-column steps; the lanes summed as <c>Vector256.Sum</c> does, ((l0 + l1) + (l2 + l3)) + ((l4 + l5) +
    /// (l6 + l7)); then the remaining columns added one product at a time.
    /// </summary>
    public static void MultiplyFloat256(in WeightMatrix w, ReadOnlySpan<float> x, Span<float> y, int batch)
    {
        var row = new float[w.Cols];
        Span<float> lanes = stackalloc float[8];
        int vectorEnd = w.Cols & ~7;
        for (int r = 0; r < w.Rows; r++)
        {
            w.DequantizeRow(r, row);
            for (int b = 0; b < batch; b++)
            {
                var xb = x.Slice(b * w.Cols, w.Cols);
                lanes.Clear();
                for (int c = 0; c < vectorEnd; c++) lanes[c & 7] = MathF.FusedMultiplyAdd(row[c], xb[c], lanes[c & 7]);
                float s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
                float tail = 0;
                for (int c = vectorEnd; c < w.Cols; c++) tail += row[c] * xb[c];
                y[b * w.Rows + r] = s + tail;
            }
        }
    }

    /// <summary>The dequantized weights, [Rows, Cols].</summary>
    public static float[] DequantizedWeights(in WeightMatrix w)
    {
        var all = new float[(long)w.Rows * w.Cols];
        for (int r = 0; r < w.Rows; r++) w.DequantizeRow(r, all.AsSpan(r * w.Cols, w.Cols));
        return all;
    }

    /// <summary>True when <see cref="MatMul.Multiply(in WeightMatrix, ReadOnlySpan{float}, Span{float}, int, WorkerPool)"/>
    /// first quantizes the activations for <paramref name="type"/>, and the block length it quantizes over (else 0).</summary>
    public static int ActivationBlock(GgmlType type) => type switch
    {
        GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.IQ4_NL => 32,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.IQ4_XS => 256,
        _ => 0,
    };
}
