using System.Globalization;

namespace Inference.KvCache;

/// <summary>
/// How big the KV pool is and why: vLLM's <c>gpu_memory_utilization</c> rule, pool = fraction × total − weights −
/// activations, where total is the device's memory on a GPU and the memory available to the process on the CPU, then
/// capped at what the engine's sequences can ever use. Or an explicit <see cref="KvCacheOptions.PoolBytes"/>.
/// </summary>
/// <param name="Fraction">The fraction of <paramref name="TotalBytes"/> the engine may use (<see cref="KvCacheOptions.MemoryFraction"/>).</param>
/// <param name="TotalBytes">Device memory (GPU) or memory available to the process (CPU).</param>
/// <param name="WeightBytes">The model's weights as bound.</param>
/// <param name="ActivationBytes">Activation buffers of a full step (the engine's token budget through every buffer).</param>
/// <param name="ExplicitPoolBytes">The <see cref="KvCacheOptions.PoolBytes"/> given instead of the rule, or null.</param>
/// <param name="CapBytes">Most the engine's sequences can use (twice max-num-seqs full contexts).</param>
/// <param name="BlockBytes">One block, all layers, keys and values.</param>
/// <param name="BlockSize">Tokens per block.</param>
public sealed record KvMemoryPlan(double Fraction, long TotalBytes, long WeightBytes, long ActivationBytes, long? ExplicitPoolBytes, long CapBytes, long BlockBytes, int BlockSize)
{
    /// <summary>fraction × total − weights − activations (may be negative: nothing left for the KV cache).</summary>
    public long RuleBytes => (long)(Fraction * TotalBytes) - WeightBytes - ActivationBytes;

    /// <summary>Bytes of the pool: the explicit budget or the rule, capped at <see cref="CapBytes"/>.</summary>
    public long PoolBytes => Math.Min(ExplicitPoolBytes ?? RuleBytes, CapBytes);

    /// <summary>Blocks of the pool.</summary>
    public int BlockCount => (int)Math.Clamp(PoolBytes / BlockBytes, 0, int.MaxValue);

    /// <summary>Tokens the pool holds.</summary>
    public long TokenCapacity => (long)BlockCount * BlockSize;

    /// <summary>Sequences of <paramref name="tokens"/> tokens that fit at once (whole blocks each).</summary>
    public long SequencesOf(int tokens) => BlockCount / Math.Max(1, (tokens + BlockSize - 1) / BlockSize);

    /// <summary>
    /// The plan for <paramref name="options"/>: throws <see cref="ArgumentException"/> (one line, the formula with its
    /// numbers) when the rule leaves less than one block.
    /// </summary>
    /// <param name="options">Fraction, explicit budget and block size.</param>
    /// <param name="totalBytes">Device memory (GPU) or memory available to the process (CPU).</param>
    /// <param name="freeBytes">Free device memory before the weights are loaded (GPU), or null (CPU). Like vLLM, the
    /// engine refuses to start when it is below fraction × total.</param>
    /// <param name="weightBytes">The weights.</param>
    /// <param name="activationBytes">The activations of a full step.</param>
    /// <param name="capBytes">Most the sequences can use.</param>
    /// <param name="blockBytes">One block, all layers, keys and values.</param>
    public static KvMemoryPlan Create(KvCacheOptions options, long totalBytes, long? freeBytes, long weightBytes, long activationBytes, long capBytes, long blockBytes)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfNegative(totalBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(weightBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(activationBytes);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockBytes, 1L);
        var plan = new KvMemoryPlan(options.MemoryFraction, totalBytes, weightBytes, activationBytes, options.PoolBytes, capBytes, blockBytes, options.BlockSize);
        if (options.PoolBytes is null)
        {
            if (freeBytes is long free && free < (long)(options.MemoryFraction * totalBytes))
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                    $"--gpu-memory-utilization {options.MemoryFraction:G} asks for {Gib((long)(options.MemoryFraction * totalBytes))} of the device's {Gib(totalBytes)}, but only {Gib(free)} is free; lower it"));
            if (plan.RuleBytes < blockBytes)
                throw new ArgumentException($"no room for the KV cache: {plan.Formula()}, less than one block of {blockBytes:N0} bytes; raise --gpu-memory-utilization");
        }
        return plan;
    }

    /// <summary>The rule with its numbers, e.g. "0.25 × 23.4 GiB − 1.2 MiB weights − 3.0 MiB activations = 5.8 GiB".</summary>
    public string Formula() => ExplicitPoolBytes is long explicitBytes
        ? $"explicit budget {Gib(explicitBytes)}"
        : string.Create(CultureInfo.InvariantCulture, $"{Fraction:G} × {Gib(TotalBytes)} − {Gib(WeightBytes)} weights − {Gib(ActivationBytes)} activations = {Gib(RuleBytes)}");

    /// <summary>Bytes in the largest binary unit that keeps a whole number in front, one decimal.</summary>
    public static string Gib(long bytes)
    {
        double b = Math.Abs((double)bytes);
        string sign = bytes < 0 ? "−" : "";
        return b >= 1 << 30 ? string.Create(CultureInfo.InvariantCulture, $"{sign}{b / (1 << 30):F1} GiB")
            : b >= 1 << 20 ? string.Create(CultureInfo.InvariantCulture, $"{sign}{b / (1 << 20):F1} MiB")
            : string.Create(CultureInfo.InvariantCulture, $"{sign}{b / 1024:F1} KiB");
    }
}
