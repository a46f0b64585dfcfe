namespace Inference.Cuda;

/// <summary>
/// The tile shape of the FlashAttention-2-style paged prefill (<c>Ptx/flash_prefill_f16.ptx</c>) for one head dim: one
/// description the PTX generator (<see cref="FlashPrefillPtx"/>), the launcher (<see cref="PtxFlashPrefillAttention"/>)
/// and the tests derive from.
/// </summary>
/// <remarks>
/// <code>
///  a CTA = 4 warps = 64 query rows of one sequence and one KV head; row R of the sequence's chunk is token R / g,
///  query head kvHead · g + R % g (g = heads / kvHeads), so the g query heads of a group share every K/V tile (GQA, MQA);
///  warp w owns rows 16w .. 16w + 15 as one m16 fragment: Q (rounded to f16) stays in registers for the whole CTA.
///  K/V tiles of BlockKv positions (gathered through the block table, f16 rows of HeadDim) go through two shared-memory
///  stages filled with cp.async (16 bytes per copy); the tile after the current one loads while the current one computes.
///  shared rows are HeadDim · 2 bytes; 16-byte chunk c of tile row r is stored at chunk c ^ (r &amp; 7), so the eight row
///  addresses of every ldmatrix 8×8 matrix (K non-transposed, V transposed) fall in eight different 16-byte bank groups.
///  per tile and warp: S = Q·Kᵀ (mma.m16n8k16, f32), causal mask, online softmax in the log2 domain (row max and sum over
///  the four lanes of a row with shfl), P rounded to f16 straight from the S accumulators as the A fragments of O += P·V.
/// </code>
/// </remarks>
internal sealed record FlashPrefillTile(int HeadDim, int BlockKv)
{
    /// <summary>The tiles the module is generated with: head dim 64 with 64-position K/V tiles, 128 with 32.</summary>
    public static IReadOnlyList<FlashPrefillTile> All { get; } = [new(64, 64), new(128, 32)];

    /// <summary>The tile for <paramref name="headDim"/>, or null.</summary>
    public static FlashPrefillTile? For(int headDim)
    {
        foreach (var t in All)
            if (t.HeadDim == headDim) return t;
        return null;
    }

    /// <summary>Query rows per CTA (16 per warp).</summary>
    public const int BlockQ = 64;

    /// <summary>Threads per CTA.</summary>
    public const int Threads = 128;

    /// <summary>Entry point name.</summary>
    public string Entry => $"flash_prefill_f16_d{HeadDim}";

    /// <summary>Bytes of one K or V row in shared memory.</summary>
    public int RowBytes => HeadDim * 2;

    /// <summary>16-byte chunks of one row.</summary>
    public int ChunksPerRow => HeadDim / 8;

    /// <summary>Rows one pass of all threads copies (one chunk each).</summary>
    public int RowsPerPass => Threads / ChunksPerRow;

    /// <summary>Chunks of K (and as many of V) each thread copies per tile.</summary>
    public int CopiesPerThread => BlockKv / RowsPerPass;

    /// <summary>Bytes of the K tile of a stage; the V tile follows it.</summary>
    public int TileBytes => BlockKv * RowBytes;

    /// <summary>Bytes of a stage: the K tile, then the V tile.</summary>
    public int StageBytes => 2 * TileBytes;

    /// <summary>Shared-memory stages: the tile being computed and the tile being loaded.</summary>
    public const int Stages = 2;

    /// <summary>Bytes of shared memory per CTA.</summary>
    public int SharedBytes => Stages * StageBytes;

    /// <summary>Shared-memory position of 16-byte chunk <paramref name="chunk"/> of tile row <paramref name="row"/>.</summary>
    public int SwizzledOffset(int row, int chunk) => row * RowBytes + ((chunk ^ (row & 7)) * 16);

    /// <summary>Throws when the generator cannot emit this shape.</summary>
    public void Validate()
    {
        if (HeadDim is not (64 or 128)) throw new ArgumentException("head dims 64 and 128 only");
        if (BlockKv % 16 != 0 || BlockKv < 16) throw new ArgumentException("K/V tiles are whole 16-position mma steps");
        if (RowsPerPass % 8 != 0 || BlockKv % RowsPerPass != 0) throw new ArgumentException("each thread copies whole chunks; rows per pass keep the swizzle");
        if (SharedBytes > 48 * 1024) throw new ArgumentException("static shared memory is limited to 48 KiB");
    }
}
