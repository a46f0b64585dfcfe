using ILGPU;
using ILGPU.Runtime.Cuda;
using Inference.Kernels;
using Inference.Kernels.Attention;

namespace Inference.Cuda.Runner;

/// <summary>The metadata of one step's attention, in device memory (see <see cref="DeviceForwardExecutor"/>).</summary>
/// <param name="BlockTables">[seqCount, maxBlocksPerSeq] physical block ids.</param>
/// <param name="ContextLens">[seqCount] positions after this step.</param>
/// <param name="SeqStarts">[seqCount + 1] first token of each sequence, then the total.</param>
/// <param name="TokenSeqs">[tokenCount] block-table row of each token.</param>
/// <param name="Positions">[tokenCount] absolute position of each token.</param>
/// <param name="TokenCount">Query tokens.</param>
/// <param name="SeqCount">Sequences.</param>
/// <param name="MaxContextLength">The longest context after this step.</param>
/// <param name="MaxChunkLength">The most tokens of one sequence in this step (1: decode only).</param>
internal readonly record struct AttentionStep(
    ArrayView<int> BlockTables, ArrayView<int> ContextLens, ArrayView<int> SeqStarts, ArrayView<int> TokenSeqs,
    ArrayView<int> Positions, int TokenCount, int SeqCount, int MaxContextLength, int MaxChunkLength);

/// <summary>Paged attention of one layer over the device KV pool: queries <c>[tokenCount, heads, headDim]</c> → output, same shape.</summary>
internal interface IDeviceAttention : IDisposable
{
    /// <summary>"PTX" or "ILGPU".</summary>
    string Name { get; }

    /// <summary>
    /// Runs one layer; <paramref name="slidingWindow"/> is the layer's window (0: none), <paramref name="logitSoftCap"/>
    /// its score cap (0: none).
    /// </summary>
    void Run(in AttentionStep step, ArrayView<byte> kCache, ArrayView<byte> vCache, ArrayView<float> q, ArrayView<float> output, int slidingWindow, float logitSoftCap);

    /// <summary>
    /// Grows the scratch buffers to what a decode step of <paramref name="tokenCount"/> tokens with
    /// <see cref="AttentionStep.MaxContextLength"/> = <paramref name="maxContextLength"/> needs, so that such steps
    /// allocate nothing and keep the scratch addresses a captured CUDA graph holds.
    /// </summary>
    void ReserveDecode(int tokenCount, int maxContextLength);
}

/// <summary>The ILGPU kernels (any accelerator): decode kernel when every sequence has one token, else the tiled prefill kernel.</summary>
internal sealed class IlgpuDeviceAttention<TKv, TConv> : IDeviceAttention
    where TKv : unmanaged
    where TConv : struct, IKvRowFormat<TKv>
{
    private readonly PagedDecodeAttention<TKv, TConv> _decode;
    private readonly PagedPrefillAttention<TKv, TConv> _prefill;

    public IlgpuDeviceAttention(ILGPU.Runtime.Accelerator accelerator, AttentionShape shape)
    {
        _decode = new PagedDecodeAttention<TKv, TConv>(accelerator, shape);
        _prefill = new PagedPrefillAttention<TKv, TConv>(accelerator, shape);
    }

    public string Name => "ILGPU";

    public void Run(in AttentionStep s, ArrayView<byte> kCache, ArrayView<byte> vCache, ArrayView<float> q, ArrayView<float> output, int slidingWindow, float logitSoftCap)
    {
        var k = kCache.Cast<TKv>();
        var v = vCache.Cast<TKv>();
        if (s.MaxChunkLength == 1)
            _decode.Run(q, k, v, s.BlockTables, s.ContextLens, s.SeqCount, s.MaxContextLength, output, slidingWindow, logitSoftCap);
        else
            _prefill.Run(q, k, v, s.BlockTables, s.SeqStarts, s.ContextLens, s.SeqCount, s.MaxChunkLength, output, slidingWindow, logitSoftCap);
    }

    public void ReserveDecode(int tokenCount, int maxContextLength) => _decode.Reserve(tokenCount, maxContextLength);

    public void Dispose() => _decode.Dispose();
}

/// <summary>
/// The hand-written PTX kernels (CUDA only): every token described by its sequence row and position, one launch; with
/// <c>flashPrefill</c> and an f16 cache, steps with a chunk of several tokens and no window run the flash prefill kernel.
/// </summary>
internal sealed class PtxDeviceAttention<TKv> : IDeviceAttention where TKv : unmanaged
{
    private readonly PtxPagedPrefillAttention<TKv> _attention;
    private readonly PtxFlashPrefillAttention? _flash;

    public PtxDeviceAttention(CudaAccelerator accelerator, AttentionShape shape, bool flashPrefill = false)
    {
        _attention = new PtxPagedPrefillAttention<TKv>(accelerator, shape);
        if (flashPrefill && typeof(TKv) == typeof(ILGPU.Half) && PtxFlashPrefillAttention.Supports(shape))
        {
            try { _flash = new PtxFlashPrefillAttention(accelerator, shape); }
            catch
            {
                _attention.Dispose();
                throw;
            }
        }
    }

    public string Name => "PTX";

    /// <summary>Whether chunks run on the flash prefill kernel.</summary>
    public bool FlashPrefill => _flash is not null;

    /// <summary>Whether the PTX kernels take this shape (head dims 64 and 128, at most 32 query heads per KV head).</summary>
    /// <remarks>NOTE: they have no score soft-capping yet: models with capped scores (gemma2) run the ILGPU kernels.</remarks>
    public static bool Supports(AttentionShape shape) => shape.HeadDim is 64 or 128 && shape.KvMul <= 32;

    public void Run(in AttentionStep s, ArrayView<byte> kCache, ArrayView<byte> vCache, ArrayView<float> q, ArrayView<float> output, int slidingWindow, float logitSoftCap)
    {
        if (logitSoftCap != 0f) throw new NotSupportedException("the PTX attention kernels have no score soft-capping");
        if (_flash is not null && s.MaxChunkLength > 1 && slidingWindow == 0)
        {
            _flash.Run(q, kCache.Cast<ILGPU.Half>(), vCache.Cast<ILGPU.Half>(), s.BlockTables, s.SeqStarts, s.ContextLens, s.SeqCount,
                s.MaxChunkLength, output);
            return;
        }
        _attention.Run(q, kCache.Cast<TKv>(), vCache.Cast<TKv>(), s.BlockTables, s.TokenSeqs, s.Positions, s.TokenCount,
            s.MaxContextLength, output, slidingWindow);
    }

    public void ReserveDecode(int tokenCount, int maxContextLength) => _attention.Reserve(tokenCount, maxContextLength);

    public void Dispose()
    {
        _flash?.Dispose();
        _attention.Dispose();
    }
}
