namespace Inference.KvCache;

/// <summary>
/// Measures the KV memory a paged cache wastes on a mix of prompt and output lengths, against contiguous reservations
/// (a full context per sequence, or prompt + max_new per sequence). Used by the tests and the <c>kv-waste</c> benchmark.
/// </summary>
internal static class KvWasteMeasurement
{
    /// <summary>The result: wasted fractions of reserved slots.</summary>
    public sealed record Report(int Sequences, long Tokens, int BlockSize, double PagedWaste, double ContiguousContextWaste, double ContiguousMaxNewWaste);

    /// <summary>
    /// A chat-like mix: log-normal prompt and output lengths (medians ≈ 300 and ≈ 150 tokens, clients asking for at least
    /// 256 new tokens), decoded one slot per step through a real <see cref="KvCacheManager"/>.
    /// </summary>
    public static Report Run(int sequenceCount = 300, int maxContext = 4096, int blockSize = 16, int seed = 2026)
    {
        var rng = new Random(seed);
        int LogNormal(double median, double sigma, int min, int max)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            double z = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
            return (int)Math.Clamp(median * Math.Exp(sigma * z), min, max);
        }

        int blocks = sequenceCount * ((maxContext + blockSize - 1) / blockSize);
        var m = new KvCacheManager(blocks, new KvCacheOptions { BlockSize = blockSize, PoolBytes = 1, PrefixCaching = PrefixCachingMode.Disabled });
        long tokens = 0, requestedMax = 0;
        var decodeToken = new int[1];
        for (int id = 0; id < sequenceCount; id++)
        {
            int prompt = LogNormal(300, 1.0, 4, 3000);
            int output = LogNormal(150, 1.0, 1, maxContext - prompt);
            int maxNew = Math.Min(maxContext - prompt, Math.Max(output, 256));
            var promptIds = new int[prompt];
            for (int i = 0; i < prompt; i++) promptIds[i] = rng.Next(32000);
            if (!m.TryAllocate(id, promptIds, out _)) throw new InvalidOperationException("pool too small");
            for (int t = 0; t < output; t++)
            {
                decodeToken[0] = rng.Next(32000);
                if (!m.TryAppendSlots(id, decodeToken)) throw new InvalidOperationException("pool too small");
            }
            tokens += prompt + output;
            requestedMax += prompt + maxNew;
        }
        long pagedSlots = (long)m.UsedBlockCount * blockSize;
        return new Report(sequenceCount, tokens, blockSize,
            1 - (double)tokens / pagedSlots,
            1 - (double)tokens / ((long)sequenceCount * maxContext),
            1 - (double)tokens / requestedMax);
    }
}
