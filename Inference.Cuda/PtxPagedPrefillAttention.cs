using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Kernels;

namespace Inference.Cuda;

/// <summary>
/// Paged prefill / chunk attention with the hand-written PTX kernels: every query token attends causally to its
/// sequence's positions 0 .. its own position (with a sliding window W, its last W positions), prefix and chunk alike,
/// read through the block table.
/// </summary>
/// <typeparam name="TKv">KV cache element: <see cref="float"/> or <see cref="ILGPU.Half"/>.</typeparam>
/// <remarks>
/// Effectively computes <see cref="Inference.Kernels.Reference.ReferenceAttention.Prefill"/>. Tokens are described one
/// by one (sequence row and absolute position), so chunks of several sequences can share a launch.
/// NOTE: this runs the same partitioned kernel as decode with one CTA per (token, KV head, partition); K/V rows are
/// re-read per query token (from L2 for neighbouring tokens). A query-tiled PTX prefill is future work; the ILGPU
/// <see cref="Inference.Kernels.Attention.PagedPrefillAttentionKernels"/> is the tiled one.
/// </remarks>
public sealed class PtxPagedPrefillAttention<TKv> : IDisposable where TKv : unmanaged
{
    private readonly PtxPagedAttention _core;

    /// <summary>Loads the PTX modules into the accelerator's context.</summary>
    /// <param name="accelerator">The CUDA accelerator.</param>
    /// <param name="shape">Attention shape.</param>
    /// <param name="partitionSize">Positions per partition: a multiple of the block size spanning at most 512 blocks,
    /// or 0 (the default) to size partitions per launch so the grid fills the device.</param>
    /// <exception cref="ArgumentException">Unsupported element type, head dim, head ratio or partition size.</exception>
    public PtxPagedPrefillAttention(CudaAccelerator accelerator, AttentionShape shape, int partitionSize = 0) =>
        _core = new PtxPagedAttention(accelerator, shape, typeof(TKv), partitionSize);

    /// <summary>The attention shape.</summary>
    public AttentionShape Shape => _core.Shape;

    /// <summary>Enqueues chunk attention on the accelerator's default stream.</summary>
    /// <param name="q">Queries, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache, <c>[blockCount, blockSize, kvHeads, headDim]</c>, holding the chunk's rows.</param>
    /// <param name="vCache">V cache, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="tokenSeqs">Block-table row of each token, <c>[tokenCount]</c>.</param>
    /// <param name="tokenPositions">Absolute position of each token, <c>[tokenCount]</c>.</param>
    /// <param name="tokenCount">Query tokens.</param>
    /// <param name="maxContextLength">An upper bound of every position + 1.</param>
    /// <param name="output">Output, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="slidingWindow">A window W: the query at position p sees p − W + 1 … p only; 0 (the default) for none.</param>
    /// <exception cref="ArgumentOutOfRangeException">A count is out of range.</exception>
    public void Run(ArrayView<float> q, ArrayView<TKv> kCache, ArrayView<TKv> vCache, ArrayView<int> blockTables,
        ArrayView<int> tokenSeqs, ArrayView<int> tokenPositions, int tokenCount, int maxContextLength, ArrayView<float> output,
        int slidingWindow = 0) =>
        _core.Run(q.LoadEffectiveAddressAsPtr(), kCache.LoadEffectiveAddressAsPtr(), vCache.LoadEffectiveAddressAsPtr(),
            blockTables.LoadEffectiveAddressAsPtr(), IntPtr.Zero, tokenSeqs.LoadEffectiveAddressAsPtr(),
            tokenPositions.LoadEffectiveAddressAsPtr(), tokenCount, maxContextLength, output, slidingWindow);

    /// <summary>
    /// Grows the partial buffers to what <see cref="Run"/> with <paramref name="tokenCount"/> and
    /// <paramref name="maxContextLength"/> needs, so that such runs allocate nothing (a captured CUDA graph keeps the
    /// buffers' addresses).
    /// </summary>
    /// <param name="tokenCount">Query tokens.</param>
    /// <param name="maxContextLength">The bound of every position + 1.</param>
    public void Reserve(int tokenCount, int maxContextLength) => _core.Reserve(tokenCount, maxContextLength);

    /// <summary>Unloads the modules and frees the partial buffers.</summary>
    public void Dispose() => _core.Dispose();
}
