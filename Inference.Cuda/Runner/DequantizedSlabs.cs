namespace Inference.Cuda.Runner;

/// <summary>
/// How a quantized matrix is widened to f16 for the tensor-core product: its rows in slabs of at most
/// <see cref="WorkspaceElements"/> halves, each widened into the executor's one workspace
/// (<see cref="PtxTensorCoreGemm.Workspace"/>) and multiplied into its columns of the output before the next.
/// </summary>
internal static class DequantizedSlabs
{
    /// <summary>Most halves of one slab (32 MiB): the bound on the workspace, whatever the matrix.</summary>
    public const long WorkspaceElements = 16L << 20;

    /// <summary>
    /// Rows per slab of a <paramref name="rows"/> × <paramref name="cols"/> matrix: as many as
    /// <paramref name="workspaceElements"/> halves hold, rounded down to whole output tiles of the product
    /// (<see cref="TensorCoreGemmTile.BlockN"/> rows) where at least one fits, never more than the matrix, at least one.
    /// </summary>
    public static int SlabRows(int rows, int cols, long workspaceElements = WorkspaceElements)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(cols, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(workspaceElements, 1);
        long fit = Math.Max(1, workspaceElements / cols);
        int tile = PtxTensorCoreGemm.Tile.BlockN;
        if (fit >= tile) fit -= fit % tile;
        return (int)Math.Min(rows, fit);
    }

    /// <summary>Slabs of <paramref name="slabRows"/> rows that cover <paramref name="rows"/>.</summary>
    public static int Count(int rows, int slabRows) => (rows + slabRows - 1) / slabRows;

    /// <summary>Slab <paramref name="index"/>: its first row and row count (the last may be shorter).</summary>
    public static (int First, int Count) Slab(int rows, int slabRows, int index)
    {
        int first = index * slabRows;
        return (first, Math.Min(slabRows, rows - first));
    }
}
