using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>Greedy and top-k selection over rows of logits.</summary>
/// <remarks>Ranking: larger value first, lower index on ties. NaN elements are never selected.</remarks>
public static class SelectionKernels
{
    /// <summary>Threads per group on GPUs; the kernels work with any power of two up to 64.</summary>
    public const int GroupSize = 64;

    /// <summary>Index of the largest element per row. Grid <c>(rows)</c>, group <c>(GroupSize)</c>.</summary>
    /// <param name="logits">Input, <c>[rows, cols]</c>.</param>
    /// <param name="indices">Output, <c>[rows]</c> (-1 when a row is all NaN).</param>
    /// <param name="cols">Row length.</param>
    public static void ArgMax(ArrayView<float> logits, ArrayView<int> indices, int cols)
    {
        long row0 = (long)Grid.IdxX * cols;
        float best = 0f;
        int bestIndex = -1;
        for (int c = Group.IdxX; c < cols; c += Group.DimX)
        {
            float v = logits[row0 + c];
            if (!float.IsNaN(v) && GroupReduce.Better(v, c, best, bestIndex))
            {
                best = v;
                bestIndex = c;
            }
        }
        GroupReduce.ArgMax(ref best, ref bestIndex);
        if (Group.IsFirstThread) indices[Grid.IdxX] = bestIndex;
    }

    /// <summary>
    /// The <c>k</c> best elements per row in rank order. Grid <c>(rows)</c>, group <c>(GroupSize)</c>.
    /// </summary>
    /// <remarks>
    /// Round r picks the best element ranked strictly after pick r-1, so it costs k passes over the row: meant for the
    /// small k of top-k sampling (≤ 100), not for sorting.
    /// </remarks>
    /// <param name="logits">Input, <c>[rows, cols]</c>.</param>
    /// <param name="values">Output values, <c>[rows, k]</c>.</param>
    /// <param name="indices">Output indices, <c>[rows, k]</c> (-1 past the non-NaN elements).</param>
    /// <param name="cols">Row length.</param>
    /// <param name="k">Picks per row.</param>
    public static void TopK(ArrayView<float> logits, ArrayView<float> values, ArrayView<int> indices, int cols, int k)
    {
        long row0 = (long)Grid.IdxX * cols;
        long out0 = (long)Grid.IdxX * k;
        float previous = float.PositiveInfinity;
        int previousIndex = -1;
        for (int r = 0; r < k; r++)
        {
            float best = 0f;
            int bestIndex = -1;
            for (int c = Group.IdxX; c < cols; c += Group.DimX)
            {
                float v = logits[row0 + c];
                bool after = v < previous || (v == previous && c > previousIndex);
                if (!float.IsNaN(v) && after && GroupReduce.Better(v, c, best, bestIndex))
                {
                    best = v;
                    bestIndex = c;
                }
            }
            GroupReduce.ArgMax(ref best, ref bestIndex);
            if (Group.IsFirstThread)
            {
                values[out0 + r] = bestIndex < 0 ? float.NaN : best;
                indices[out0 + r] = bestIndex;
            }
            if (bestIndex < 0)
            {
                previous = float.NegativeInfinity;
                previousIndex = int.MaxValue;
            }
            else
            {
                previous = best;
                previousIndex = bestIndex;
            }
        }
    }
}
