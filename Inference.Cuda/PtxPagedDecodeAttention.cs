using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Kernels;

namespace Inference.Cuda;

/// <summary>
/// Paged decode attention (one query token per sequence) with the hand-written PTX kernels.
/// </summary>
/// <typeparam name="TKv">KV cache element: <see cref="float"/> or <see cref="ILGPU.Half"/>.</typeparam>
/// <remarks>
/// Effectively computes what <see cref="Inference.Kernels.Reference.ReferenceAttention.Decode"/> computes: for each
/// sequence s and query head h, softmax(q·Kᵀ/sqrt(headDim))·V over positions 0 .. contextLens[s] - 1 of KV head
/// h / kvMul. Long contexts are split into partitions of <see cref="PartitionSize"/> positions (Flash-Decoding) and merged
/// by a second kernel. Head dims 64 and 128; up to 32 query heads per KV head. Views must be 16-byte aligned (whole
/// buffers are). Not thread-safe.
/// </remarks>
public sealed class PtxPagedDecodeAttention<TKv> : IDisposable where TKv : unmanaged
{
    private readonly PtxPagedAttention _core;

    /// <summary>Loads the PTX modules into the accelerator's context.</summary>
    /// <param name="accelerator">The CUDA accelerator.</param>
    /// <param name="shape">Attention shape.</param>
    /// <param name="partitionSize">Positions per partition: a multiple of the block size spanning at most 512 blocks,
    /// or 0 (the default) to size partitions per launch so the grid fills the device.</param>
    /// <exception cref="ArgumentException">Unsupported element type, head dim, head ratio or partition size.</exception>
    public PtxPagedDecodeAttention(CudaAccelerator accelerator, AttentionShape shape, int partitionSize = 0) =>
        _core = new PtxPagedAttention(accelerator, shape, typeof(TKv), partitionSize);

    /// <summary>The attention shape.</summary>
    public AttentionShape Shape => _core.Shape;

    /// <summary>Positions per partition, or 0 when chosen per launch.</summary>
    public int PartitionSize => _core.PartitionSize;

    /// <summary>Enqueues decode attention on the accelerator's default stream.</summary>
    /// <param name="q">Queries, <c>[seqCount, heads, headDim]</c>.</param>
    /// <param name="kCache">K cache, <c>[blockCount, blockSize, kvHeads, headDim]</c>.</param>
    /// <param name="vCache">V cache, same shape.</param>
    /// <param name="blockTables">Block tables, <c>[seqCount, maxBlocksPerSeq]</c>.</param>
    /// <param name="contextLens">Context lengths (≥ 1), <c>[seqCount]</c>.</param>
    /// <param name="seqCount">Sequences.</param>
    /// <param name="maxContextLength">Upper bound of <paramref name="contextLens"/>.</param>
    /// <param name="output">Output, <c>[seqCount, heads, headDim]</c>.</param>
    /// <param name="slidingWindow">A window W: the query at position p sees p − W + 1 … p only; 0 (the default) for none.</param>
    /// <exception cref="ArgumentOutOfRangeException">A count is out of range.</exception>
    public void Run(ArrayView<float> q, ArrayView<TKv> kCache, ArrayView<TKv> vCache, ArrayView<int> blockTables,
        ArrayView<int> contextLens, int seqCount, int maxContextLength, ArrayView<float> output, int slidingWindow = 0) =>
        _core.Run(q.LoadEffectiveAddressAsPtr(), kCache.LoadEffectiveAddressAsPtr(), vCache.LoadEffectiveAddressAsPtr(),
            blockTables.LoadEffectiveAddressAsPtr(), contextLens.LoadEffectiveAddressAsPtr(), IntPtr.Zero, IntPtr.Zero,
            seqCount, maxContextLength, output, slidingWindow);

    /// <summary>Unloads the modules and frees the partial buffers.</summary>
    public void Dispose() => _core.Dispose();
}
