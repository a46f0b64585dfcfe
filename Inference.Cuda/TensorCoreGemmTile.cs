namespace Inference.Cuda;

/// <summary>
/// The tile shape of the tensor-core matrix product (<c>Ptx/gemm_tensor_core.ptx</c>): one description the PTX generator
/// (<see cref="TensorCoreGemmPtx"/>), the launcher (<see cref="PtxTensorCoreGemm"/>) and the tests' instruction-level
/// model all derive from.
/// </summary>
/// <remarks>
/// <code>
///  C[M, N] (f32) = A[M, K] (f16 or bf16, row-major) · W[N, K]ᵀ (f16 or bf16, row-major as stored), f32 accumulation
///  grid  = (ceil(N / BlockN), ceil(M / BlockM))      block = 32 · WarpsM · WarpsN threads
///  CTA tile BlockM × BlockN, stepping K by BlockK = 32 through Stages shared-memory stages filled by cp.async (16 bytes
///  per copy); warp (wm, wn) owns rows wm·WarpM .. +WarpM and columns wn·WarpN .. +WarpN of the CTA tile: WarpM / 16 × WarpN / 8
///  mma.m16n8k16 accumulators of 4 f32 per lane. Per 16-wide k step a warp loads its A fragments with one
///  ldmatrix.x4 per 16 rows and its B fragments with one ldmatrix.x4 per 16 columns.
///  shared rows are 32 elements = 64 bytes = four 16-byte chunks; chunk c of row r is stored at chunk c ^ ((r >> 1) &amp; 3),
///  so the eight row addresses of an ldmatrix 8×8 matrix fall in eight different 16-byte bank groups.
/// </code>
/// Edges are guarded, not padded in memory: cp.async copies 0 source bytes (the destination is zero-filled) for rows at or
/// beyond M or N and for 8-element chunks at or beyond K, and each output element is stored only where row &lt; M and
/// column &lt; N. K must be a multiple of 8 (whole 16-byte chunks; the launcher refuses others).
/// </remarks>
internal sealed record TensorCoreGemmTile(int BlockM, int BlockN, int WarpsM, int WarpsN, int Stages)
{
    /// <summary>The tile the module is generated with: 128 × 128 × 32, 8 warps of 64 × 32, 3 stages (48 KiB of shared memory).</summary>
    public static TensorCoreGemmTile Default { get; } = new(128, 128, 2, 4, 3);

    /// <summary>K elements per stage (one 64-byte shared row per matrix row; the swizzle assumes four 16-byte chunks).</summary>
    public int BlockK => 32;

    /// <summary>Bytes of one shared row (BlockK 2-byte elements).</summary>
    public int RowBytes => BlockK * 2;

    public int Threads => 32 * WarpsM * WarpsN;

    public int WarpM => BlockM / WarpsM;

    public int WarpN => BlockN / WarpsN;

    /// <summary>m16 fragments per warp along M.</summary>
    public int FragmentsM => WarpM / 16;

    /// <summary>n8 fragments per warp along N.</summary>
    public int FragmentsN => WarpN / 8;

    /// <summary>Bytes of the A tile of one stage; the W tile follows it.</summary>
    public int StageABytes => BlockM * RowBytes;

    public int StageBytes => (BlockM + BlockN) * RowBytes;

    public int SharedBytes => Stages * StageBytes;

    /// <summary>16-byte chunks of A (then of W) each thread copies per stage.</summary>
    public int ChunksAPerThread => BlockM * 4 / Threads;

    public int ChunksBPerThread => BlockN * 4 / Threads;

    /// <summary>Shared-memory position of 16-byte chunk <paramref name="chunk"/> (0..3) of tile row <paramref name="row"/>.</summary>
    public static int SwizzledOffset(int row, int chunk) => row * 64 + ((chunk ^ ((row >> 1) & 3)) * 16);

    /// <summary>Throws when the generator cannot emit this shape.</summary>
    public void Validate()
    {
        if (WarpM % 16 != 0 || WarpN % 16 != 0) throw new ArgumentException("warp tiles must be multiples of 16 in both dimensions");
        if (BlockM * 4 % Threads != 0 || BlockN * 4 % Threads != 0 || Threads / 4 % 8 != 0)
            throw new ArgumentException("each thread must copy whole 16-byte chunks and rows per pass must be a multiple of 8");
        if (Stages < 2) throw new ArgumentException("at least two stages");
        if (SharedBytes > 48 * 1024) throw new ArgumentException("static shared memory is limited to 48 KiB");
    }
}
