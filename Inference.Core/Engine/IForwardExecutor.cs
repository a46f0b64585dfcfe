using Inference.Sampling;
using Inference.KvCache;
using Inference.Models;

namespace Inference.Engine;

/// <summary>
/// Runs the model's forward pass over the paged KV cache on one kind of hardware: the seam between the engine loop
/// (scheduler, KV cache manager, sampling — shared by every device) and the arithmetic.
/// </summary>
/// <remarks>
/// <code>
///  engine loop:  schedule → Storage.CopyBlocks(copy-on-write) → Forward(batch, logits) → sample → update
///  executor:     block tables come from the KvCacheManager it was created with, read during Forward;
///                K/V live in Storage, indexed by the physical block ids that manager hands out
/// </code>
/// Used by the engine thread only. <see cref="CpuForwardExecutor"/> is the CPU path; a GPU assembly provides another
/// through an <see cref="IForwardExecutorFactory"/>.
/// </remarks>
internal interface IForwardExecutor : IDisposable
{
    /// <summary><see cref="Engine.Device.Cpu"/> or <see cref="Engine.Device.Cuda"/>.</summary>
    Device Device { get; }

    /// <summary>Names the hardware, e.g. "CPU, 4 threads" or "CUDA: NVIDIA H100 80GB HBM3".</summary>
    string DeviceName { get; }

    /// <summary>The memory of the KV cache.</summary>
    IKvBlockStorage Storage { get; }

    /// <summary>
    /// Runs <paramref name="batch"/> (its block tables already cover every position) and writes the logits of the
    /// segments that want them to <paramref name="logits"/> (<c>[batch.LogitCount, vocab]</c>).
    /// </summary>
    void Forward(ModelBatch batch, Span<float> logits);

    /// <summary>Whether <see cref="Forward(ModelBatch, Span{float}, DeviceSamplingRows)"/> chooses tokens on the device.</summary>
    bool SamplesOnDevice => false;

    /// <summary>
    /// <see cref="Forward(ModelBatch, Span{float})"/>, then chooses the token of each row of <paramref name="rows"/> on
    /// the device (into <c>rows.Tokens</c>, as <see cref="Sampler"/> would); the logits rows those sample are not
    /// copied to <paramref name="logits"/> (their contents are unspecified), the others are.
    /// </summary>
    void Forward(ModelBatch batch, Span<float> logits, DeviceSamplingRows rows) =>
        throw new NotSupportedException("this executor does not sample on its device");
}

/// <summary>Creates the executors of one kind of hardware; found by <see cref="ForwardExecutors"/>.</summary>
internal interface IForwardExecutorFactory
{
    /// <summary>Why no executor can be created on this machine (one line), or null when one can.</summary>
    string? UnavailableReason { get; }

    /// <summary>
    /// Free and total memory of the device the executor will run on, before anything is loaded, for sizing the KV pool
    /// (<see cref="KvCache.KvMemoryPlan"/>); null when the host's memory is the limit.
    /// </summary>
    (long Free, long Total)? GetDeviceMemory() => null;

    /// <summary>Creates an executor with the model's weights and a KV pool of <see cref="ForwardExecutorContext.BlockCount"/> blocks.</summary>
    IForwardExecutor Create(ForwardExecutorContext context);
}

/// <summary>What an executor is created with.</summary>
/// <param name="Model">The model (its configuration, weights and RoPE frequencies).</param>
/// <param name="KvCache">The manager whose block tables the executor reads.</param>
/// <param name="KvOptions">Block size and element type of the pool.</param>
/// <param name="BlockCount">Blocks of the pool (the manager's <see cref="KvCacheManager.TotalBlockCount"/>).</param>
/// <param name="ContextLength">Most positions of one sequence.</param>
/// <param name="MaxBatchTokenCount">Most tokens of one forward pass (the scheduler's budget; evaluation chunks obey it too).</param>
/// <param name="MaxSequenceCount">Most sequences of one forward pass.</param>
/// <param name="Threads">CPU threads the engine may use.</param>
internal sealed record ForwardExecutorContext(
    LlamaModel Model, KvCacheManager KvCache, KvCacheOptions KvOptions, int BlockCount, int ContextLength,
    int MaxBatchTokenCount, int MaxSequenceCount, int Threads);
