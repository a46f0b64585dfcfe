using Inference.Engine;

namespace Inference.Cuda;

/// <summary>Which paged attention kernels the CUDA executor runs.</summary>
public enum CudaAttentionKernels
{
    /// <summary>The hand-written PTX kernels (head dims 64 and 128, up to 32 query heads per KV head; other shapes use ILGPU's).</summary>
    Ptx,
    /// <summary>The ILGPU kernels (any shape): for comparison.</summary>
    Ilgpu,
}

/// <summary>How <see cref="Device.Cuda"/> runs. Immutable.</summary>
public sealed record CudaOptions
{
    private readonly int _deviceIndex;

    /// <summary>Index among the CUDA devices. Default 0.</summary>
    public int DeviceIndex { get => _deviceIndex; init => _deviceIndex = value >= 0 ? value : throw new ArgumentOutOfRangeException(nameof(DeviceIndex), value, "DeviceIndex must be ≥ 0."); }

    /// <summary>The attention kernels. Default <see cref="CudaAttentionKernels.Ptx"/>.</summary>
    public CudaAttentionKernels Attention { get; init; } = CudaAttentionKernels.Ptx;

    /// <summary>
    /// Whether F16 matrix products of 16 or more rows (prefill, batched decode) run on the hand-written tensor-core kernel
    /// (mma.sync with f32 accumulation; activations are rounded to f16 first), F16 expert stacks of steps of 16 or more
    /// tokens on its grouped form. Default false: the kernel is verified
    /// against a model of the instruction set but not yet on a device (docs/gpu-results.md), and with it a row's bits
    /// depend on how many rows share its step (f16 activations from 16 rows on); false keeps every product on the
    /// batch-invariant row kernels.
    /// </summary>
    public bool TensorCoreMatMul { get; init; }

    /// <summary>
    /// Whether products of 64 or more rows (prefill, large decode batches) with Q8_0 or block-type weights (Q4_0 … Q6_K,
    /// IQ4_NL, IQ4_XS) run on the hand-written tensor-core kernel with f32 accumulation (activations rounded to f16
    /// first), the weights as exactly the values an F16 upload of the matrix holds: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
    /// Q5_K and Q6_K blocks are widened to f16 inside the kernel, the other block types (IQ4_NL, Q2_K, Q3_K, IQ4_XS) on
    /// the device a slab of rows at a time (at most 32 MiB, one workspace for the whole model). Default false: the
    /// dequantizers and the products are verified on ILGPU's CPU accelerator and against a model of the instruction set,
    /// but not yet on a device (docs/gpu-results.md); like <see cref="TensorCoreMatMul"/>, a row's bits then depend on how
    /// many rows share its step. Independent of <see cref="TensorCoreMatMul"/> (F16 weights).
    /// </summary>
    public bool QuantizedTensorCoreMatMul { get; init; }

    /// <summary>
    /// Whether prefill and chunk attention over an f16 KV cache (head dims 64 and 128, no sliding window) runs on the
    /// FlashAttention-2-style PTX kernel: 64 query rows of one KV head group per thread block, K/V tiles through shared
    /// memory, mma.sync for QKᵀ and PV with the queries and probabilities rounded to f16. Default false: the kernel is
    /// verified against a model of the instruction set but not yet on a device (docs/gpu-results.md); false keeps
    /// prefill on the per-token PTX kernel. Decode steps run the decode kernel either way.
    /// </summary>
    public bool FlashPrefill { get; init; }

    /// <summary>
    /// Whether requests that need no full logits (no logprobs, no constraint) have their tokens chosen on the device, so
    /// that only token ids come back each step. The device makes the host sampler's choice for the same seed. Default true.
    /// </summary>
    public bool DeviceSampling { get; init; } = true;

    /// <summary>
    /// Whether every step launches its kernels one by one (vLLM's <c>enforce_eager</c>). When false, a pure decode step
    /// (every sequence one token; at most <see cref="MaxCaptureSize"/> sequences, contexts up to
    /// <see cref="MaxSeqLenToCapture"/>) is padded to a captured batch size (1, 2, 4, …) and replayed as a CUDA graph
    /// captured on its first use, with the attention split over <see cref="MaxSeqLenToCapture"/> positions and its
    /// matrix products on the row kernels; prefill and mixed steps stay eager, and so does every step of a
    /// mixture-of-experts model; a failed capture falls back to eager (<c>InferenceEngine.DeviceName</c> says which and
    /// why). Default true: replay has not yet been checked against eager decoding on a device (docs/gpu-results.md).
    /// </summary>
    public bool EnforceEager { get; init; } = true;

    private readonly int _maxCaptureSize = 64;

    /// <summary>
    /// The largest decode batch captured as a CUDA graph (vLLM's <c>max_capture_size</c>); larger batches run eagerly. 1 to
    /// 512, default 64. An engine whose <c>EngineOptions.MaxNumSeqs</c> is smaller captures up to that limit rounded up to
    /// a batch size (1, 2, 4, …) instead, so its static buffers are sized for the batches it can run.
    /// </summary>
    public int MaxCaptureSize
    {
        get => _maxCaptureSize;
        init => _maxCaptureSize = value is >= 1 and <= 512 ? value : throw new ArgumentOutOfRangeException(nameof(MaxCaptureSize), value, "MaxCaptureSize must be 1 to 512.");
    }

    private readonly int _maxSeqLenToCapture = 8192;

    /// <summary>
    /// The longest context a captured decode step covers (vLLM's <c>max_seq_len_to_capture</c>): a step with a longer
    /// sequence runs eagerly. A captured step's attention is split over this many positions whatever the contexts, so a
    /// larger value costs short contexts more empty partitions. At least 1, default 8192 (capped by the context length).
    /// </summary>
    public int MaxSeqLenToCapture
    {
        get => _maxSeqLenToCapture;
        init => _maxSeqLenToCapture = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(MaxSeqLenToCapture), value, "MaxSeqLenToCapture must be ≥ 1.");
    }

    /// <summary>
    /// Whether a step runs the fused kernels where the model's graph allows: the residual add with the next RMSNorm, RoPE
    /// of Q and K with the K/V write to the pool (f32 and f16 KV caches), and the gate/up products with SwiGLU or GeGLU in
    /// their epilogue (on the row kernels; products on the tensor-core kernel keep the separate activation). Same
    /// arithmetic in fewer launches (llama: 9 instead of 15 per layer besides attention). Default true; false runs every
    /// operation of the graph on its own kernel.
    /// </summary>
    public bool FusedKernels { get; init; } = true;
}

/// <summary>Selects the CUDA executor with explicit <see cref="CudaOptions"/>.</summary>
/// <remarks>
/// Not needed for the defaults: with this package installed, <see cref="Device.Cuda"/> and <see cref="Device.Auto"/>
/// find the CUDA executor by themselves.
/// </remarks>
public static class CudaEngineOptionsExtensions
{
    /// <summary>
    /// <paramref name="options"/> with <see cref="EngineOptions.Device"/> = <see cref="Device.Cuda"/>, run as
    /// <paramref name="cuda"/> says.
    /// </summary>
    /// <example><c>new EngineOptions().UseCuda(new CudaOptions { Attention = CudaAttentionKernels.Ilgpu })</c></example>
    public static EngineOptions UseCuda(this EngineOptions options, CudaOptions? cuda = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options with { Device = Device.Cuda, ExecutorFactory = new CudaForwardExecutorFactory(cuda ?? new CudaOptions()) };
    }
}
