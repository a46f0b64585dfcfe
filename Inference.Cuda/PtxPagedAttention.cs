using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Kernels;

namespace Inference.Cuda;

/// <summary>
/// Shared launch code of the hand-written PTX paged attention (<c>Ptx/paged_attention_{f32,f16}.ptx</c> and
/// <c>Ptx/paged_attention_reduce.ptx</c>): pass 1 writes per-partition partials, pass 2 merges them.
/// </summary>
internal sealed unsafe class PtxPagedAttention : IDisposable
{
    /// <summary>Parameters of the pass-1 entry points (<c>paged_attention_{f32,f16}</c>), the window last.</summary>
    internal const int PartialArgumentCount = 17;

    /// <summary>Entries of the shared-memory block-table stage in the PTX (<c>s_blocks[512]</c>).</summary>
    public const int MaxBlocksPerPartition = 512;

    private readonly CudaAccelerator _accelerator;
    private readonly PtxModule _partialModule;
    private readonly PtxModule _reduceModule;
    private readonly IntPtr _partial;
    private readonly IntPtr _reduce;
    private MemoryBuffer1D<float, Stride1D.Dense>? _partialOut;  // [tokens, heads, partitions, headDim]
    private MemoryBuffer1D<float, Stride1D.Dense>? _partialMl;   // [tokens, heads, partitions, 2]

    public PtxPagedAttention(CudaAccelerator accelerator, AttentionShape shape, Type kvType, int partitionSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(shape);
        string module = kvType == typeof(float) ? "paged_attention_f32"
            : kvType == typeof(ILGPU.Half) ? "paged_attention_f16"
            : throw new ArgumentException($"KV element type {kvType.Name} is not supported (float or ILGPU.Half).", nameof(kvType));
        if (shape.HeadDim is not (64 or 128))
            throw new ArgumentException($"the PTX kernels support head dims 64 and 128, not {shape.HeadDim}.", nameof(shape));
        if (shape.KvMul > 32)
            throw new ArgumentException("the PTX kernels support at most 32 query heads per KV head.", nameof(shape));
        if (partitionSize < 0 || (partitionSize > 0 && !IsValidPartitionSize(shape, partitionSize)))
            throw new ArgumentException(
                $"partitionSize must be 0 (automatic) or a positive multiple of the block size spanning at most {MaxBlocksPerPartition} blocks.",
                nameof(partitionSize));
        _accelerator = accelerator;
        Shape = shape;
        PartitionSize = partitionSize;
        _partialModule = PtxModule.Load(accelerator, module);
        _reduceModule = PtxModule.Load(accelerator, "paged_attention_reduce");
        _partial = _partialModule.GetFunction(module);
        _reduce = _reduceModule.GetFunction("paged_attention_reduce");
    }

    public AttentionShape Shape { get; }

    /// <summary>Positions per partition, or 0 to choose per launch (see <see cref="ChoosePartitionSize"/>).</summary>
    public int PartitionSize { get; }

    private static bool IsValidPartitionSize(AttentionShape shape, int size) =>
        size > 0 && size % shape.BlockSize == 0 && size / shape.BlockSize <= MaxBlocksPerPartition;

    /// <summary>Thread blocks per multiprocessor the automatic partition size aims for.</summary>
    internal const int CtasPerMultiprocessor = 8;

    /// <summary>Fewest positions in an automatic partition (so the merge pass stays cheap).</summary>
    internal const int MinPartitionPositions = 64;

    /// <summary>Most positions in an automatic partition (more, smaller partitions measured faster up to here).</summary>
    internal const int MaxPartitionPositions = 256;

    /// <summary>
    /// Automatic partition size: enough partitions that the grid has about <see cref="CtasPerMultiprocessor"/> CTAs per
    /// multiprocessor, each partition a whole number of blocks of at least <see cref="MinPartitionPositions"/> positions,
    /// at most <see cref="MaxPartitionPositions"/> while the tokens alone do not fill the grid, and at most
    /// <see cref="MaxBlocksPerPartition"/> blocks.
    /// </summary>
    /// <remarks>
    /// NOTE: the loads in flight grow with the warps on the device. These sizes were measured when a warp waited for each
    /// step's K/V loads before it issued the next: on an H100, a 1k-token sequence in partitions of 256 positions (32 CTAs
    /// for 8 KV heads, about one warp per multiprocessor) took 65 µs, in partitions of 64 positions 22 µs; 64 sequences of
    /// 4k tokens took 794 µs in partitions of 256 positions and 1,079 µs in three partitions of 1,376
    /// (docs/gpu-results.md). The main loop now keeps the next step's loads in flight while a step computes; the sizes
    /// have not been measured again since.
    /// </remarks>
    internal static int ChoosePartitionSize(AttentionShape shape, int tokenCount, int maxContextLength, int multiprocessors)
    {
        long ctas = (long)tokenCount * shape.KvHeadCount;
        long target = (long)CtasPerMultiprocessor * multiprocessors;
        long wanted = Math.Max(1, (target + ctas - 1) / ctas);
        long size = (maxContextLength + wanted - 1) / wanted;
        // NOTE: no upper bound once the grid is full without partitions (a long prefill chunk): the partial buffers grow
        // with tokens × partitions.
        size = ctas < target ? Math.Clamp(size, MinPartitionPositions, MaxPartitionPositions) : Math.Max(size, MinPartitionPositions);
        size = (size + shape.BlockSize - 1) / shape.BlockSize * shape.BlockSize;
        return (int)Math.Min(size, (long)MaxBlocksPerPartition * shape.BlockSize);
    }

    /// <summary>
    /// Enqueues both passes on the accelerator's default stream. <paramref name="tokenSeqs"/> = 0 selects decode
    /// (token t is sequence t at position contextLens[t] - 1).
    /// </summary>
    /// <remarks>
    /// A sliding window W &gt; 0 starts each query's partitions at its position − W + 1: partitions wholly before it
    /// report (−∞, 0) like those past the position, and their K/V rows are never read.
    /// </remarks>
    public void Run(IntPtr q, IntPtr kCache, IntPtr vCache, IntPtr blockTables, IntPtr contextLens, IntPtr tokenSeqs,
        IntPtr tokenPositions, int tokenCount, int maxContextLength, ArrayView<float> output, int slidingWindow)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(slidingWindow);
        ArgumentOutOfRangeException.ThrowIfLessThan(tokenCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxContextLength, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxContextLength, Shape.MaxContextLength);
        var s = Shape;
        var scratch = Scratch(s, PartitionSize, tokenCount, maxContextLength, _accelerator.NumMultiprocessors);
        int partitionSize = scratch.PartitionSize, partitionCount = scratch.PartitionCount;
        if (partitionCount > 65535) throw new ArgumentOutOfRangeException(nameof(maxContextLength), "too many partitions for grid.z");
        EnsureScratch(scratch);
        _accelerator.Bind();
        var stream = ((CudaStream)_accelerator.DefaultStream).StreamPtr;

        // pass 1 — argument order of paged_attention_{f32,f16}
        IntPtr partialOut = ((ArrayView<float>)_partialOut!.View).LoadEffectiveAddressAsPtr();
        IntPtr partialMl = ((ArrayView<float>)_partialMl!.View).LoadEffectiveAddressAsPtr();
        uint heads = (uint)s.HeadCount, kvHeads = (uint)s.KvHeadCount, headDim = (uint)s.HeadDim, blockSize = (uint)s.BlockSize;
        uint maxBlocks = (uint)s.MaxBlocksPerSeq, partitionPositions = (uint)partitionSize;
        float scaleLog2 = s.Scale * 1.4426950408889634f;   // scores in the log2 domain: exp(x) = 2^(x log2 e)
        uint window = (uint)slidingWindow;
        void** args = stackalloc void*[PartialArgumentCount];
        args[0] = &q; args[1] = &kCache; args[2] = &vCache; args[3] = &blockTables; args[4] = &contextLens;
        args[5] = &tokenSeqs; args[6] = &tokenPositions; args[7] = &partialOut; args[8] = &partialMl;
        args[9] = &heads; args[10] = &kvHeads; args[11] = &headDim; args[12] = &blockSize; args[13] = &maxBlocks;
        args[14] = &partitionPositions; args[15] = &scaleLog2; args[16] = &window;
        Check(CudaAPI.CurrentAPI.LaunchKernel(_partial, tokenCount, s.KvHeadCount, partitionCount, 32 * s.KvMul, 1, 1, 0,
            stream, (IntPtr)args, IntPtr.Zero), "paged_attention partial");

        // pass 2 — argument order of paged_attention_reduce
        IntPtr outPtr = output.LoadEffectiveAddressAsPtr();
        uint partitions = (uint)partitionCount;
        void** reduceArgs = stackalloc void*[5];
        reduceArgs[0] = &partialOut; reduceArgs[1] = &partialMl; reduceArgs[2] = &outPtr; reduceArgs[3] = &headDim;
        reduceArgs[4] = &partitions;
        Check(CudaAPI.CurrentAPI.LaunchKernel(_reduce, tokenCount * s.HeadCount, 1, 1, s.HeadDim, 1, 1, 0,
            stream, (IntPtr)reduceArgs, IntPtr.Zero), "paged_attention_reduce");
    }

    /// <summary>Grows the partial buffers to what <see cref="Run"/> with these counts needs (see <see cref="PtxPagedPrefillAttention{TKv}.Reserve"/>).</summary>
    public void Reserve(int tokenCount, int maxContextLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokenCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxContextLength, 1);
        EnsureScratch(Scratch(Shape, PartitionSize, tokenCount, maxContextLength, _accelerator.NumMultiprocessors));
    }

    /// <summary>The partitions and partial buffers of one launch (<see cref="Scratch"/>).</summary>
    /// <param name="PartitionSize">Positions per partition.</param>
    /// <param name="PartitionCount">Partitions per (token, head).</param>
    /// <param name="OutFloats">Floats of the partial outputs, <c>[tokens, heads, partitions, headDim]</c>.</param>
    /// <param name="MlFloats">Floats of the partial max and sum, <c>[tokens, heads, partitions, 2]</c>.</param>
    internal readonly record struct PartialScratch(int PartitionSize, int PartitionCount, long OutFloats, long MlFloats);

    /// <summary>
    /// The one sizing of a launch's partitions and partial buffers, for <see cref="Run"/> and <see cref="Reserve"/>
    /// alike (a captured CUDA graph keeps the buffers' addresses, so a run after a reserve of its counts must not grow them).
    /// </summary>
    /// <param name="shape">The attention shape.</param>
    /// <param name="partitionSize">The launcher's fixed partition size, or 0 for <see cref="ChoosePartitionSize"/>.</param>
    /// <param name="tokenCount">Query tokens.</param>
    /// <param name="maxContextLength">The bound of the context lengths.</param>
    /// <param name="multiprocessors">The device's multiprocessors.</param>
    internal static PartialScratch Scratch(AttentionShape shape, int partitionSize, int tokenCount, int maxContextLength, int multiprocessors)
    {
        int size = partitionSize > 0 ? partitionSize : ChoosePartitionSize(shape, tokenCount, maxContextLength, multiprocessors);
        int count = (maxContextLength + size - 1) / size;
        long rows = (long)tokenCount * shape.HeadCount * count;
        return new PartialScratch(size, count, rows * shape.HeadDim, rows * 2);
    }

    private void EnsureScratch(in PartialScratch scratch)
    {
        Ensure(ref _partialOut, scratch.OutFloats);
        Ensure(ref _partialMl, scratch.MlFloats);
    }

    private void Ensure(ref MemoryBuffer1D<float, Stride1D.Dense>? buffer, long length)
    {
        if (buffer is not null && buffer.Length >= length) return;
        buffer?.Dispose();
        buffer = _accelerator.Allocate1D<float>(length);
    }

    private static void Check(CudaError error, string what)
    {
        if (error != CudaError.CUDA_SUCCESS)
            throw new InvalidOperationException($"launching {what} failed: {error} ({CudaAPI.CurrentAPI.GetErrorString(error)})");
    }

    public void Dispose()
    {
        _partialOut?.Dispose();
        _partialMl?.Dispose();
        _partialModule.Dispose();
        _reduceModule.Dispose();
    }
}
