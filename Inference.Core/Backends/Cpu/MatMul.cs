using System.Numerics.Tensors;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>Matrix products of activations with <see cref="WeightMatrix"/> weights, spread over a <see cref="WorkerPool"/>.</summary>
public static class MatMul
{
    /// <summary>
    /// y[b, r] = Σ_c W[r, c] · x[b, c] for every batch row b &lt; <paramref name="batch"/>.
    /// x is [batch, Cols] and y is [batch, Rows], both row-major.
    /// </summary>
    public static void Multiply(in WeightMatrix w, ReadOnlySpan<float> x, Span<float> y, int batch, WorkerPool pool)
    {
        if (x.Length < batch * w.Cols) throw new ArgumentException("x is shorter than batch × cols", nameof(x));
        if (y.Length < batch * w.Rows) throw new ArgumentException("y is shorter than batch × rows", nameof(y));
        unsafe
        {
            fixed (float* px = x)
            fixed (float* py = y)
            {
                pool.Run(w.Rows, new RowJob(w, px, py, batch));
            }
        }
    }

    private readonly unsafe struct RowJob(WeightMatrix w, float* x, float* y, int batch) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            var cols = w.Cols;
            float[]? scratch = w.Type == GgmlType.F32 ? null : new float[cols];
            for (int r = start; r < end; r++)
            {
                ReadOnlySpan<float> row;
                if (scratch is null) row = new ReadOnlySpan<float>(w.Data + r * w.RowBytes, cols);
                else
                {
                    Dequantize.Row(w.Type, w.Row(r), scratch);
                    row = scratch;
                }
                for (int b = 0; b < batch; b++)
                    y[(long)b * w.Rows + r] = TensorPrimitives.Dot(row, new ReadOnlySpan<float>(x + (long)b * cols, cols));
            }
        }
    }
}
