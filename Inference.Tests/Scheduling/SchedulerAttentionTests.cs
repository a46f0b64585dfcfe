using Inference.Backends.Cpu;
using Inference.KvCache;
using Inference.Scheduling;

namespace Inference.Tests.Scheduling;

/// <summary>
/// Scheduler, KV cache manager, KV storage and paged attention together, with a stand-in model whose key and value at
/// position p depend on the whole prefix 0..p (as real ones do). Every chunk's attention must equal the reference over
/// keys and values computed from scratch, through prefix hits, chunking, preemption and recomputation.
/// </summary>
public class SchedulerAttentionTests
{
    [TestCase(KvCacheDataType.Float32)]
    [TestCase(KvCacheDataType.Float16)]
    public void AttentionThroughTheSchedulerMatchesFreshComputation(KvCacheDataType dataType)
    {
        const int layers = 2, blockSize = 4;
        var shape = new PagedAttentionShape(4, 2, 16, blockSize);
        using var storage = new KvCacheStorage(layers, 24, blockSize, shape.KvHeadCount, shape.HeadDim, dataType);
        var kv = new KvCacheManager(storage.BlockCount, new KvCacheOptions { BlockSize = blockSize, DataType = dataType, PoolBytes = 1 },
            BlockHash.CreateSalt("stand-in", "ids", "none", dataType));
        var s = new Scheduler(new SchedulerOptions { MaxNumSeqs = 6, MaxNumBatchedTokens = 40, LongPrefillTokenThreshold = 12 }, kv);
        var rng = new Random(17);
        var shared = Enumerable.Range(0, 11).Select(_ => rng.Next(3)).ToArray(); // a tiny vocabulary: equal blocks at different positions are common
        var requests = new List<SchedulerRequest>();
        for (int i = 0; i < 40; i++)
        {
            var prompt = (i % 3 == 0 ? [] : shared).Concat(Enumerable.Range(0, 1 + rng.Next(20)).Select(_ => rng.Next(3))).ToArray();
            requests.Add(new SchedulerRequest(i + 1, prompt, 1 + rng.Next(30)));
        }
        int next = 0, checkedChunks = 0;
        var key = new float[shape.KvStride];
        var value = new float[shape.KvStride];
        while (next < requests.Count || s.HasUnfinishedRequests)
        {
            if (next < requests.Count && rng.Next(2) == 0) s.AddRequest(requests[next++]);
            var o = s.Schedule();
            storage.CopyBlocks(o.BlockCopies);
            foreach (var chunk in o.Chunks)
            {
                var r = chunk.Request;
                var table = kv.GetBlockTable(r.RequestId);
                int context = chunk.StartPosition + chunk.TokenCount;
                for (int layer = 0; layer < layers; layer++)
                {
                    for (int p = chunk.StartPosition; p < context; p++)
                    {
                        StandInKv(r.TokenIds[..(p + 1)], layer, key, value);
                        storage.Write(layer, table[p / blockSize], p % blockSize, key, value);
                    }
                    var q = Enumerable.Range(0, chunk.TokenCount * shape.QueryStride).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
                    var fast = new float[q.Length];
                    Array.Fill(fast, float.NaN);
                    var scratch = new float[PagedAttention.GetScratchLength(shape, context)];
                    if (dataType == KvCacheDataType.Float32)
                        PagedAttention.Forward<float>(shape, q, storage.GetKeys<float>(layer), storage.GetValues<float>(layer), table, chunk.StartPosition, fast, scratch);
                    else
                        PagedAttention.Forward<Half>(shape, q, storage.GetKeys<Half>(layer), storage.GetValues<Half>(layer), table, chunk.StartPosition, fast, scratch);

                    // Fresh keys and values for the whole context, rounded like the storage rounds them.
                    var k = new float[context * shape.KvStride];
                    var v = new float[context * shape.KvStride];
                    for (int p = 0; p < context; p++)
                    {
                        StandInKv(r.TokenIds[..(p + 1)], layer, key, value);
                        for (int e = 0; e < shape.KvStride; e++)
                        {
                            k[p * shape.KvStride + e] = dataType == KvCacheDataType.Float32 ? key[e] : (float)(Half)key[e];
                            v[p * shape.KvStride + e] = dataType == KvCacheDataType.Float32 ? value[e] : (float)(Half)value[e];
                        }
                    }
                    var expected = new float[q.Length];
                    PagedAttentionReference.Forward(shape, q, k, v, chunk.StartPosition, expected);
                    for (int e = 0; e < q.Length; e++)
                        if (!(Math.Abs(fast[e] - expected[e]) <= 1e-5 * Math.Max(1, Math.Abs(expected[e]))))
                            Assert.Fail($"request {r.RequestId} chunk {chunk.StartPosition}+{chunk.TokenCount} layer {layer}: {fast[e]} vs {expected[e]} (cached {r.CachedTokenCount}, preempted {r.PreemptionCount}x)");
                }
                checkedChunks++;
            }
            foreach (var chunk in o.Chunks.ToArray())
                if (chunk.SamplesToken) s.Update(chunk.Request, rng.Next(3));
        }
        var stats = kv.GetStats();
        TestContext.Out.WriteLine($"{dataType}: {checkedChunks} chunks checked, {s.PreemptionCount} preemptions, prefix hit rate {stats.PrefixHitRate:P1}");
        Assert.That(stats.PrefixHitTokenCount, Is.GreaterThan(0), "prefix hits must be exercised");
        Assert.That(s.PreemptionCount, Is.GreaterThan(0), "preemption must be exercised");
        Assert.That(kv.UsedBlockCount, Is.Zero);
    }

    /// <summary>Key and value [kvHeads, headDim] of the last token of <paramref name="prefix"/>: a function of the whole prefix.</summary>
    private static void StandInKv(ReadOnlySpan<int> prefix, int layer, Span<float> key, Span<float> value)
    {
        ulong h = 1469598103934665603UL + (ulong)layer;
        foreach (int t in prefix) h = (h ^ (uint)t) * 1099511628211UL;
        var rng = new Random((int)(h ^ (h >> 32)));
        for (int e = 0; e < key.Length; e++)
        {
            key[e] = (float)(rng.NextDouble() * 2 - 1);
            value[e] = (float)(rng.NextDouble() * 2 - 1);
        }
    }
}
