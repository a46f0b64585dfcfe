using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Kernels;

namespace Inference.Cuda;

/// <summary>
/// Launches the FlashAttention-2-style paged prefill of <c>Ptx/flash_prefill_f16.ptx</c> (see <see cref="FlashPrefillTile"/>):
/// query tiles of 64 rows per CTA, K/V tiles through shared memory, mma.sync for QKᵀ and PV, f16 KV cache.
/// </summary>
/// <remarks>
/// Computes <see cref="Inference.Kernels.Reference.ReferenceAttention.Prefill"/> without a window or soft-cap, with the
/// queries and the probabilities rounded to f16 for the tensor cores (f32 scores, sums and outputs). Enqueues on the
/// accelerator's default stream.
/// </remarks>
internal sealed unsafe class PtxFlashPrefillAttention : IDisposable
{
    private readonly CudaAccelerator _accelerator;
    private readonly PtxModule _module;
    private readonly IntPtr _function;
    private readonly FlashPrefillTile _tile;

    /// <exception cref="ArgumentException">The head dim has no tile.</exception>
    public PtxFlashPrefillAttention(CudaAccelerator accelerator, AttentionShape shape)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(shape);
        _tile = FlashPrefillTile.For(shape.HeadDim)
            ?? throw new ArgumentException($"the flash prefill kernel supports head dims 64 and 128, not {shape.HeadDim}.", nameof(shape));
        _accelerator = accelerator;
        Shape = shape;
        _module = PtxModule.Load(accelerator, FlashPrefillPtx.ModuleName);
        _function = _module.GetFunction(_tile.Entry);
    }

    /// <summary>The attention shape.</summary>
    public AttentionShape Shape { get; }

    /// <summary>Whether the kernel takes this shape (head dims 64 and 128).</summary>
    public static bool Supports(AttentionShape shape) => FlashPrefillTile.For(shape.HeadDim) is not null;

    /// <summary>The launch grid: (query-row tiles of the longest chunk, KV heads, sequences).</summary>
    internal static (int X, int Y, int Z) Grid(AttentionShape shape, int seqCount, int maxChunkLength) =>
        (checked((maxChunkLength * shape.KvMul + FlashPrefillTile.BlockQ - 1) / FlashPrefillTile.BlockQ), shape.KvHeadCount, seqCount);

    /// <summary>Enqueues the attention of every chunk token.</summary>
    /// <param name="q">Queries, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache, <c>[blockCount, blockSize, kvHeads, headDim]</c> of f16, holding the chunk's rows.</param>
    /// <param name="vCache">V cache, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="seqStarts">First token of each sequence, then the total, <c>[seqCount + 1]</c>.</param>
    /// <param name="contextLens">Positions of each sequence after the chunk, <c>[seqCount]</c>.</param>
    /// <param name="seqCount">Sequences.</param>
    /// <param name="maxChunkLength">The most tokens of one sequence.</param>
    /// <param name="output">Output, <c>[tokenCount, heads, headDim]</c>.</param>
    public void Run(ArrayView<float> q, ArrayView<ILGPU.Half> kCache, ArrayView<ILGPU.Half> vCache, ArrayView<int> blockTables,
        ArrayView<int> seqStarts, ArrayView<int> contextLens, int seqCount, int maxChunkLength, ArrayView<float> output)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(seqCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxChunkLength, 1);
        if (seqCount > 65535) throw new ArgumentOutOfRangeException(nameof(seqCount), seqCount, "at most 65,535 sequences per launch (grid.z)");
        var s = Shape;
        var grid = Grid(s, seqCount, maxChunkLength);
        IntPtr pq = q.LoadEffectiveAddressAsPtr(), pk = kCache.LoadEffectiveAddressAsPtr(), pv = vCache.LoadEffectiveAddressAsPtr();
        IntPtr pt = blockTables.LoadEffectiveAddressAsPtr(), ps = seqStarts.LoadEffectiveAddressAsPtr();
        IntPtr pc = contextLens.LoadEffectiveAddressAsPtr(), po = output.LoadEffectiveAddressAsPtr();
        uint heads = (uint)s.HeadCount, kvHeads = (uint)s.KvHeadCount, blockSize = (uint)s.BlockSize, maxBlocks = (uint)s.MaxBlocksPerSeq;
        float scaleLog2 = s.Scale * 1.4426950408889634f;
        void** args = stackalloc void*[FlashPrefillPtx.ArgumentCount];
        args[0] = &pq; args[1] = &pk; args[2] = &pv; args[3] = &pt; args[4] = &ps; args[5] = &pc; args[6] = &po;
        args[7] = &heads; args[8] = &kvHeads; args[9] = &blockSize; args[10] = &maxBlocks; args[11] = &scaleLog2;
        _accelerator.Bind();
        var stream = ((CudaStream)_accelerator.DefaultStream).StreamPtr;
        var error = CudaAPI.CurrentAPI.LaunchKernel(_function, grid.X, grid.Y, grid.Z, FlashPrefillTile.Threads, 1, 1, 0, stream, (IntPtr)args, IntPtr.Zero);
        if (error != CudaError.CUDA_SUCCESS)
            throw new InvalidOperationException($"launching {_tile.Entry} failed: {error} ({CudaAPI.CurrentAPI.GetErrorString(error)})");
    }

    /// <summary>Unloads the module.</summary>
    public void Dispose() => _module.Dispose();
}
