using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>
/// <c>y[b, r] = Σ_c W[r, c] * x[b, c]</c> for weights in GGML row layout (a row is one output feature):
/// F32, F16 and Q8_0 (blocks of 32 weights: an f16 scale then 32 int8, 34 bytes; weight = scale * q).
/// </summary>
/// <remarks>
/// One group per (row, batch item), the threads of a group split the row and reduce in shared memory.
/// NOTE: a batch item re-reads the weight row (from L2 on a GPU); a tiled matrix-matrix kernel is future work.
/// </remarks>
public static class MatMulKernels
{
    /// <summary>Threads per group on GPUs; the kernels work with any power of two up to 64.</summary>
    public const int GroupSize = 64;

    /// <summary>Elements per Q8_0 block.</summary>
    public const int Q8BlockElements = 32;

    /// <summary>Bytes per Q8_0 block.</summary>
    public const int Q8BlockBytes = 34;

    /// <summary>F32 or F16 weights. Grid <c>(rows, batch)</c>, group <c>(GroupSize)</c>.</summary>
    /// <typeparam name="TW">Stored weight type.</typeparam>
    /// <typeparam name="TConv">Widens <typeparamref name="TW"/> to f32.</typeparam>
    /// <param name="weights">Weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    public static void MatMul<TW, TConv>(ArrayView<TW> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols)
        where TW : unmanaged
        where TConv : struct, IElementConverter<TW>
    {
        int row = Grid.IdxX;
        int item = Grid.IdxY;
        long w0 = (long)row * cols;
        long x0 = (long)item * cols;
        TConv conv = default;
        float sum = 0f;
        for (int c = Group.IdxX; c < cols; c += Group.DimX) sum += conv.ToFloat(weights[w0 + c]) * x[x0 + c];
        float total = GroupReduce.Sum(sum);
        if (Group.IsFirstThread) y[(long)item * rows + row] = total;
    }

    /// <summary>Q8_0 weights. Grid <c>(rows, batch)</c>, group <c>(GroupSize)</c>; <c>cols</c> a multiple of 32.</summary>
    /// <param name="quants">The raw Q8_0 bytes, <c>[rows, cols / 32, 34]</c>.</param>
    /// <param name="scales">The same memory viewed as f16 (block <c>k</c>'s scale is element <c>17k</c>).</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    public static void MatMulQ8_0(ArrayView<byte> quants, ArrayView<ILGPU.Half> scales, ArrayView<float> x, ArrayView<float> y, int rows, int cols)
    {
        int row = Grid.IdxX;
        int item = Grid.IdxY;
        int blocksPerRow = cols / Q8BlockElements;
        long firstBlock = (long)row * blocksPerRow;
        long x0 = (long)item * cols;
        float sum = 0f;
        for (int b = Group.IdxX; b < blocksPerRow; b += Group.DimX)
        {
            long block = firstBlock + b;
            long q0 = block * Q8BlockBytes + 2;
            long xb = x0 + (long)b * Q8BlockElements;
            float dot = 0f;
            for (int i = 0; i < Q8BlockElements; i++) dot += (sbyte)quants[q0 + i] * x[xb + i];
            sum += (float)scales[block * (Q8BlockBytes / 2)] * dot;
        }
        float total = GroupReduce.Sum(sum);
        if (Group.IsFirstThread) y[(long)item * rows + row] = total;
    }
}
