namespace Inference.Kernels.Reference;

/// <summary>Plain greedy and top-k selection: larger value first, lower index on ties, NaN never selected.</summary>
public static class ReferenceSelection
{
    /// <summary>The index of the best element, or -1 when all are NaN.</summary>
    /// <param name="row">One row of logits.</param>
    /// <returns>The index.</returns>
    public static int ArgMax(ReadOnlySpan<float> row)
    {
        int best = -1;
        for (int i = 0; i < row.Length; i++)
            if (!float.IsNaN(row[i]) && (best < 0 || row[i] > row[best])) best = i;
        return best;
    }

    /// <summary>The indices of the <paramref name="k"/> best elements in rank order (-1 past the non-NaN elements).</summary>
    /// <param name="row">One row of logits.</param>
    /// <param name="k">Picks.</param>
    /// <returns>The indices.</returns>
    public static int[] TopK(ReadOnlySpan<float> row, int k)
    {
        var order = new List<int>(row.Length);
        for (int i = 0; i < row.Length; i++) if (!float.IsNaN(row[i])) order.Add(i);
        var values = row.ToArray();
        order.Sort((a, b) => values[a] != values[b] ? values[b].CompareTo(values[a]) : a.CompareTo(b));
        var result = new int[k];
        for (int i = 0; i < k; i++) result[i] = i < order.Count ? order[i] : -1;
        return result;
    }
}
