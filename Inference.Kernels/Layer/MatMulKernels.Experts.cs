using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>
/// The products of a mixture-of-experts block driven by the routing on the device: one launch multiplies every expert's
/// rows by that expert's matrix, each group reading its expert's row range from device memory.
/// </summary>
/// <remarks>
/// <code>
/// weights  [experts, rows, cols]        the experts' matrices stacked (expert e at e · expertStride units)
/// x        [Σ counts, cols]             input rows grouped by expert: expert e's are rows starts[e] … starts[e + 1] − 1
/// y        [Σ counts, rows]             output rows, the same grouping
/// grid     (⌈rows / rowsPerGroup⌉, ⌈maxRows / BatchChunk⌉, experts)     row kernels
///          (rows, maxRows, experts)                                   simple kernels
/// </code>
/// The launch depends only on the shapes and <c>maxRows</c> (the most rows one expert can get: the step's token count,
/// as a token picks distinct experts), never on the routing, so it can be recorded once for a token count. A group whose
/// expert has no rows in its range returns before reading any weight, so a decode step reads only the chosen experts'
/// matrices. Each expert runs the same row kernel as an ordinary product over its rows (<see cref="MatMulF32"/>,
/// <see cref="MatMulF16"/>, <see cref="MatMulQ8_0"/>, <see cref="MatMulBlocks{TBlock}"/>, or the simple kernels), so a
/// row's bits are those of the plain product of its expert's matrix and do not depend on the other rows.
/// </remarks>
public static partial class MatMulKernels
{
    /// <summary>Expert <c>Grid.IdxZ</c>'s first row and row count, or false when this group has none of its rows to do.</summary>
    private static bool ExpertRows(ArrayView<int> starts, int firstItem, out int expert, out int first, out int count)
    {
        expert = Grid.IdxZ;
        first = starts[expert];
        count = starts[expert + 1] - first;
        return firstItem < count;
    }

    /// <summary><see cref="MatMulF32"/> per expert (see the class remarks).</summary>
    /// <param name="weights">Stacked weights, <c>[experts, rows, cols]</c>, 16-byte aligned.</param>
    /// <param name="x">Input rows grouped by expert, <c>[Σ counts, cols]</c>, 16-byte aligned.</param>
    /// <param name="y">Output rows, <c>[Σ counts, rows]</c>.</param>
    /// <param name="starts">First row of each expert, <c>[experts + 1]</c> (the last is the total).</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 4.</param>
    /// <param name="lanesPerRow">Threads per row.</param>
    internal static void ExpertsF32(ArrayView<float> weights, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts, int rows, int cols, int lanesPerRow)
    {
        if (!ExpertRows(starts, Grid.IdxY * BatchChunk, out int e, out int first, out int count)) return;
        long size = (long)rows * cols;
        MatMulF32(weights.SubView(e * size, size), x.SubView((long)first * cols, (long)count * cols), y.SubView((long)first * rows, (long)count * rows),
            rows, cols, count, lanesPerRow);
    }

    /// <summary><see cref="MatMulF16"/> per expert (see the class remarks).</summary>
    /// <param name="weights">Stacked weights, <c>[experts, rows, cols]</c>, 16-byte aligned.</param>
    /// <param name="x">Input rows grouped by expert, <c>[Σ counts, cols]</c>, 16-byte aligned.</param>
    /// <param name="y">Output rows, <c>[Σ counts, rows]</c>.</param>
    /// <param name="starts">First row of each expert, <c>[experts + 1]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 8.</param>
    /// <param name="lanesPerRow">Threads per row.</param>
    internal static void ExpertsF16(ArrayView<ILGPU.Half> weights, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts, int rows, int cols, int lanesPerRow)
    {
        if (!ExpertRows(starts, Grid.IdxY * BatchChunk, out int e, out int first, out int count)) return;
        long size = (long)rows * cols;
        MatMulF16(weights.SubView(e * size, size), x.SubView((long)first * cols, (long)count * cols), y.SubView((long)first * rows, (long)count * rows),
            rows, cols, count, lanesPerRow);
    }

    /// <summary><see cref="MatMulQ8_0"/> per expert (see the class remarks).</summary>
    /// <param name="words">Stacked Q8_0 bytes as 16-bit words, <c>[experts, rows, cols / 32, 17]</c>.</param>
    /// <param name="x">Input rows grouped by expert, <c>[Σ counts, cols]</c>, 16-byte aligned.</param>
    /// <param name="y">Output rows, <c>[Σ counts, rows]</c>.</param>
    /// <param name="starts">First row of each expert, <c>[experts + 1]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 32.</param>
    /// <param name="lanesPerRow">Threads per row.</param>
    internal static void ExpertsQ8_0(ArrayView<ushort> words, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts, int rows, int cols, int lanesPerRow)
    {
        if (!ExpertRows(starts, Grid.IdxY * BatchChunk, out int e, out int first, out int count)) return;
        long size = (long)rows * (cols / Q8BlockElements) * (Q8BlockBytes / 2);
        MatMulQ8_0(words.SubView(e * size, size), x.SubView((long)first * cols, (long)count * cols), y.SubView((long)first * rows, (long)count * rows),
            rows, cols, count, lanesPerRow);
    }

    /// <summary><see cref="MatMulBlocks{TBlock}"/> per expert (see the class remarks).</summary>
    /// <typeparam name="TBlock">The block type.</typeparam>
    /// <param name="words">Stacked raw blocks as 16-bit words, <c>[experts, rows, cols / blockElements, blockBytes / 2]</c>.</param>
    /// <param name="x">Input rows grouped by expert, <c>[Σ counts, cols]</c>.</param>
    /// <param name="y">Output rows, <c>[Σ counts, rows]</c>.</param>
    /// <param name="starts">First row of each expert, <c>[experts + 1]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of the block's elements.</param>
    /// <param name="lanesPerRow">Threads per row.</param>
    internal static void ExpertsBlocks<TBlock>(ArrayView<ushort> words, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts, int rows, int cols, int lanesPerRow)
        where TBlock : struct, IWeightBlock
    {
        if (!ExpertRows(starts, Grid.IdxY * BatchChunk, out int e, out int first, out int count)) return;
        TBlock f = default;
        long size = (long)rows * (cols / f.Elements) * (f.Bytes / 2);
        MatMulBlocks<TBlock>(words.SubView(e * size, size), x.SubView((long)first * cols, (long)count * cols), y.SubView((long)first * rows, (long)count * rows),
            rows, cols, count, lanesPerRow);
    }

    /// <summary><see cref="MatMul{TW, TConv}"/> per expert: grid <c>(rows, maxRows, experts)</c>, group <c>(GroupSize)</c>.</summary>
    /// <typeparam name="TW">Stored weight type.</typeparam>
    /// <typeparam name="TConv">Widens <typeparamref name="TW"/> to f32.</typeparam>
    /// <param name="weights">Stacked weights, <c>[experts, rows, cols]</c>.</param>
    /// <param name="x">Input rows grouped by expert, <c>[Σ counts, cols]</c>.</param>
    /// <param name="y">Output rows, <c>[Σ counts, rows]</c>.</param>
    /// <param name="starts">First row of each expert, <c>[experts + 1]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    internal static void ExpertsSimple<TW, TConv>(ArrayView<TW> weights, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts, int rows, int cols)
        where TW : unmanaged
        where TConv : struct, IElementConverter<TW>
    {
        if (!ExpertRows(starts, Grid.IdxY, out int e, out int first, out int count)) return;
        long size = (long)rows * cols;
        MatMul<TW, TConv>(weights.SubView(e * size, size), x.SubView((long)first * cols, (long)count * cols), y.SubView((long)first * rows, (long)count * rows),
            rows, cols);
    }

    /// <summary><see cref="MatMulQ8_0Simple"/> per expert: grid <c>(rows, maxRows, experts)</c>, group <c>(GroupSize)</c>.</summary>
    /// <param name="quants">Stacked Q8_0 bytes, <c>[experts, rows, cols / 32, 34]</c>.</param>
    /// <param name="scales">The same memory viewed as f16.</param>
    /// <param name="x">Input rows grouped by expert, <c>[Σ counts, cols]</c>.</param>
    /// <param name="y">Output rows, <c>[Σ counts, rows]</c>.</param>
    /// <param name="starts">First row of each expert, <c>[experts + 1]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 32.</param>
    internal static void ExpertsQ8_0Simple(ArrayView<byte> quants, ArrayView<ILGPU.Half> scales, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts, int rows, int cols)
    {
        if (!ExpertRows(starts, Grid.IdxY, out int e, out int first, out int count)) return;
        long size = (long)rows * (cols / Q8BlockElements) * Q8BlockBytes;
        MatMulQ8_0Simple(quants.SubView(e * size, size), scales.SubView(e * size / 2, size / 2), x.SubView((long)first * cols, (long)count * cols),
            y.SubView((long)first * rows, (long)count * rows), rows, cols);
    }
}
