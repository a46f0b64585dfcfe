using Inference.Backends.Cpu;

namespace Inference.Models;

/// <summary>
/// Where a model's keys and values live: stores the batch's new K/V for a layer and computes causal attention of the
/// batch's queries over each sequence's cached tokens (the new ones included).
/// </summary>
public interface IKvAttention
{
    /// <summary>
    /// Appends <paramref name="k"/>/<paramref name="v"/> of every batch token at its position, then writes the attention
    /// output of every query to <paramref name="output"/>.
    /// </summary>
    /// <param name="layer">Layer index.</param>
    /// <param name="batch">The batch (positions and segments).</param>
    /// <param name="q">[tokenCount, heads, headDim], RoPE applied.</param>
    /// <param name="k">[tokenCount, kvHeads, headDim], RoPE applied.</param>
    /// <param name="v">[tokenCount, kvHeads, headDim].</param>
    /// <param name="output">[tokenCount, heads, headDim].</param>
    /// <param name="pool">Threads to spread the work over.</param>
    /// <param name="slidingWindow">
    /// The layer's attention window W: a query at position p sees positions p − W + 1 … p (see
    /// <see cref="Backends.Cpu.PagedAttentionShape.SlidingWindow"/>); 0 sees every position (<see cref="ModelConfig.LayerSlidingWindow"/>).
    /// </param>
    /// <param name="logitSoftCap">
    /// Attention logit soft-capping c (gemma2): each scaled score s becomes c · tanh(s / c); 0 leaves it (see
    /// <see cref="Backends.Cpu.PagedAttentionShape.LogitSoftCap"/>).
    /// </param>
    void Attend(int layer, ModelBatch batch, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, WorkerPool pool, int slidingWindow = 0, float logitSoftCap = 0f);
}
