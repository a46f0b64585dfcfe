using Inference.Backends.Cpu;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;
using Inference.Models.Graph;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.KvCache;

/// <summary>
/// Generation past the context window (<see cref="KvEvictionOptions"/>): which tokens go, that kept keys are re-based
/// to their new cache positions, that KV use stays bounded, and that nothing leaks under batching and preemption.
/// </summary>
public class KvEvictionTests
{
    private static KvCacheManager Create(int blocks, int blockSize, KvEvictionOptions eviction) =>
        new(blocks, new KvCacheOptions { BlockSize = blockSize, PoolBytes = 1 }, 1, eviction: eviction);

    private static int[] CachedTokens(KvCacheManager m, long id)
    {
        int n = m.GetTokenCount(id), bs = m.BlockSize;
        var table = m.GetBlockTable(id);
        var result = new int[n];
        for (int i = 0; i < n; i++) result[i] = m.Pool.TokenIds(table[i / bs])[i % bs];
        return result;
    }

    [Test]
    public void AttentionSinks_KeepTheFirstAndTheLatestTokens_ABlockAtATime()
    {
        var eviction = new KvEvictionOptions { SinkTokens = 3, RecentTokens = 10 };
        var m = Create(16, 4, eviction);
        int[] prompt = [.. Enumerable.Range(100, 9)];
        Assert.That(m.TryAllocate(1, prompt, out _), Is.True);
        var text = new List<int>(prompt);
        int evictedTotal = 0, most = 0;
        for (int t = 0; t < 60; t++)
        {
            int token = 200 + t;
            Assert.That(m.TryEvict(1, 1, out int evicted), Is.True);
            evictedTotal += evicted;
            Assert.That(m.TryAppendSlots(1, [token]), Is.True);
            text.Add(token);
            m.CheckInvariants();
            most = Math.Max(most, m.UsedBlockCount);
            // 13 kept; up to 13 + a block (4) before an eviction.
            Assert.That(m.GetTokenCount(1), Is.InRange(Math.Min(text.Count, 13), 17));
            int[] expected = [.. text.Take(3), .. text.Skip(3 + evictedTotal)];
            Assert.That(CachedTokens(m, 1), Is.EqualTo(expected), $"after token {t}");
            if (evicted > 0) Assert.That(evicted, Is.EqualTo(5), "17 cached + 1 new → 13: five go at once");
        }
        Assert.That(most, Is.LessThanOrEqualTo(5));
        Assert.That(m.HasEvicted(1), Is.True);
        m.Free(1);
        m.CheckInvariants();
        Assert.That(m.UsedBlockCount, Is.Zero);
    }

    [Test]
    public void HeavyHitters_KeepTheMostAttendedTokens_BesidesSinksAndRecent()
    {
        var eviction = new KvEvictionOptions { Policy = KvEvictionPolicy.HeavyHitters, SinkTokens = 1, RecentTokens = 4, HeavyHitterTokens = 3 };
        var m = Create(16, 4, eviction);
        int[] prompt = [.. Enumerable.Range(100, 12)];
        Assert.That(m.TryAllocate(1, prompt, out _), Is.True);
        var scores = m.GetAttentionScores(1);
        Assert.That(scores.Length, Is.EqualTo(12));
        // Positions 2, 5 and 7 are heavy; 9 too, but it is in the recent window (after the new token: 9, 10, 11 + new).
        float[] given = [9, 0.5f, 3, 0.1f, 0.2f, 4, 0.3f, 5, 0.05f, 8, 0.4f, 0.6f];
        given.CopyTo(scores);
        Assert.That(m.TryEvict(1, 1, out int evicted), Is.True);
        Assert.That(evicted, Is.EqualTo(12 + 1 - 8));
        Assert.That(CachedTokens(m, 1), Is.EqualTo(new[] { 100, 102, 105, 107, 109, 110, 111 }));
        // The kept tokens' scores moved with them.
        Assert.That(m.GetAttentionScores(1).ToArray(), Is.EqualTo(new[] { 9f, 3, 4, 5, 8, 0.4f, 0.6f }));
        var compaction = m.PendingCompactions[0];
        Assert.That(compaction.FirstIndex, Is.EqualTo(0));
        Assert.That(compaction.Sources, Is.EqualTo(new[] { 0, 2, 5, 7, 9, 10, 11 }));
        Assert.That(m.TryAppendSlots(1, [300]), Is.True);
        Assert.That(m.GetAttentionScores(1)[7], Is.Zero);
        m.CheckInvariants();
        m.Free(1);
        Assert.That(m.UsedBlockCount, Is.Zero);
    }

    [Test]
    public void Eviction_CopiesSharedBlocks_StopsOfferingItsBlocks_AndFreesCleanly()
    {
        var eviction = new KvEvictionOptions { SinkTokens = 2, RecentTokens = 6 };
        var m = Create(16, 4, eviction);
        int[] prompt = [.. Enumerable.Range(100, 12)];
        Assert.That(m.TryAllocate(1, prompt, out _), Is.True);
        Assert.That(m.TryAllocate(2, prompt, out int hit), Is.True);
        Assert.That(hit, Is.EqualTo(8), "two full blocks shared");
        var shared = m.GetBlockTable(2)[..2].ToArray();
        // 12 cached + 1 > 8 + 4: sequence 2 evicts 5 tokens after the sinks, rewriting its shared blocks.
        Assert.That(m.TryEvict(2, 1, out int evicted), Is.True);
        Assert.That(evicted, Is.EqualTo(5));
        Assert.That(m.GetBlockTable(2)[0], Is.Not.EqualTo(shared[0]), "the rewritten shared block got a private copy");
        Assert.That(m.GetBlockTable(1)[..2].ToArray(), Is.EqualTo(shared), "the other sequence keeps its blocks");
        Assert.That(CachedTokens(m, 1), Is.EqualTo(prompt));
        Assert.That(m.GetBlockTable(2)[1], Is.Not.EqualTo(shared[1]));
        Assert.That(CachedTokens(m, 2), Is.EqualTo(new[] { 100, 101, 107, 108, 109, 110, 111 }));
        m.CheckInvariants();
        for (int t = 0; t < 8; t++)
        {
            Assert.That(m.TryEvict(2, 1, out _), Is.True);
            Assert.That(m.TryAppendSlots(2, [500 + t]), Is.True);
        }
        // The evicted sequence's blocks are not offered to others: its cached tokens as a prompt find nothing.
        Assert.That(m.GetCachedPrefixTokenCount([.. CachedTokens(m, 2), 1]), Is.Zero);
        m.CheckInvariants();
        m.Free(1);
        m.Free(2);
        m.CheckInvariants();
        Assert.That(m.UsedBlockCount, Is.Zero);
    }

    [Test]
    public void Options_AreValidated()
    {
        Assert.That(() => new KvEvictionOptions { RecentTokens = 0 }, Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new KvEvictionOptions { SinkTokens = -1 }, Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new KvEvictionOptions { Policy = KvEvictionPolicy.HeavyHitters }.Validate(4096, 16), Throws.ArgumentException);
        Assert.That(() => new KvEvictionOptions { HeavyHitterTokens = 3 }.Validate(4096, 16), Throws.ArgumentException);
        Assert.That(() => new KvEvictionOptions { RecentTokens = 120 }.Validate(128, 16), Throws.ArgumentException.With.Message.Contains("context"));
        Assert.That(() => new KvEvictionOptions { RecentTokens = 108 }.Validate(128, 16), Throws.Nothing);
    }

    /// <summary>
    /// The reference: keys kept unrotated (the model's rotation undone in double), rotated at every read by their
    /// current place in the cache, attention in double. Evictions drop the same cache entries as the paged cache.
    /// </summary>
    private sealed class ReRotatingReference(ModelConfig config, RopeTable?[] ropes) : IKvAttention
    {
        private readonly List<double[]>[] _keys = [.. Enumerable.Range(0, config.LayerCount).Select(_ => new List<double[]>())];
        private readonly List<float[]>[] _values = [.. Enumerable.Range(0, config.LayerCount).Select(_ => new List<float[]>())];

        public void Keep(int[] sourcesFrom, int firstIndex)
        {
            for (int l = 0; l < config.LayerCount; l++)
            {
                var k = _keys[l];
                var v = _values[l];
                var keptK = sourcesFrom.Select(i => k[i]).ToList();
                var keptV = sourcesFrom.Select(i => v[i]).ToList();
                k.RemoveRange(firstIndex, k.Count - firstIndex);
                v.RemoveRange(firstIndex, v.Count - firstIndex);
                k.AddRange(keptK);
                v.AddRange(keptV);
            }
        }

        private static void Rotate(Span<double> row, RopeTable? rope, int heads, int hd, double position)
        {
            if (rope is null) return;
            int half = rope.RopeDim / 2;
            bool neox = rope.Layout == RopeLayout.Neox;
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++)
                {
                    int i0 = h * hd + (neox ? i : 2 * i), i1 = h * hd + (neox ? i + half : 2 * i + 1);
                    double c = Math.Cos(position * rope.InvFreq[i]), s = Math.Sin(position * rope.InvFreq[i]);
                    double x0 = row[i0], x1 = row[i1];
                    row[i0] = x0 * c - x1 * s;
                    row[i1] = x0 * s + x1 * c;
                }
        }

        public void Attend(int layer, ModelBatch batch, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, WorkerPool pool, int slidingWindow = 0, float logitSoftCap = 0f)
        {
            int kvDim = config.KvDim, hd = config.HeadDim, heads = config.HeadCount, kvHeads = config.KvHeadCount;
            var seg = batch.Segments.Single();
            Assert.That(seg.StartPosition, Is.EqualTo(_keys[layer].Count), "the batch starts where the cache ends");
            for (int t = 0; t < seg.TokenCount; t++)
            {
                var key = k.Slice(t * kvDim, kvDim).ToArray().Select(x => (double)x).ToArray();
                Rotate(key, ropes[layer], kvHeads, hd, -(seg.StartPosition + t));
                _keys[layer].Add(key);
                _values[layer].Add(v.Slice(t * kvDim, kvDim).ToArray());
            }
            for (int t = 0; t < seg.TokenCount; t++)
            {
                int visible = seg.StartPosition + t + 1;
                var rotated = new double[visible][];
                for (int j = 0; j < visible; j++)
                {
                    rotated[j] = (double[])_keys[layer][j].Clone();
                    Rotate(rotated[j], ropes[layer], kvHeads, hd, j);
                }
                for (int h = 0; h < heads; h++)
                {
                    int g = h / (heads / kvHeads);
                    var scores = new double[visible];
                    for (int j = 0; j < visible; j++)
                    {
                        double dot = 0;
                        for (int d = 0; d < hd; d++) dot += q[(t * heads + h) * hd + d] * rotated[j][g * hd + d];
                        scores[j] = dot / Math.Sqrt(hd);
                    }
                    double max = scores.Max(), sum = 0;
                    for (int j = 0; j < visible; j++) sum += scores[j] = Math.Exp(scores[j] - max);
                    for (int d = 0; d < hd; d++)
                    {
                        double acc = 0;
                        for (int j = 0; j < visible; j++) acc += scores[j] * _values[layer][j][g * hd + d];
                        output[(t * heads + h) * hd + d] = (float)(acc / sum);
                    }
                }
            }
        }
    }

    [TestCase(KvEvictionPolicy.AttentionSinks, 8)]
    [TestCase(KvEvictionPolicy.AttentionSinks, 16)]
    [TestCase(KvEvictionPolicy.HeavyHitters, 8)]
    public void PagedWithEviction_MatchesReRotatingReference_PastFourContexts(KvEvictionPolicy policy, int blockSize)
    {
        using var gguf = GgufFile.Open(TestData.Stories260K);
        var config = ModelConfig.FromGguf(gguf);
        var model = new LlamaModel(gguf, config);
        using var pool = new WorkerPool(2);
        var eviction = policy == KvEvictionPolicy.AttentionSinks
            ? new KvEvictionOptions { SinkTokens = 4, RecentTokens = 27 }
            : new KvEvictionOptions { Policy = policy, SinkTokens = 2, RecentTokens = 17, HeavyHitterTokens = 12 };
        int context = eviction.KeptTokenCount + blockSize, total = 4 * context, chunk = 10;

        int blockCount = (context + blockSize - 1) / blockSize + 1;
        var manager = new KvCacheManager(blockCount, new KvCacheOptions { BlockSize = blockSize, DataType = KvCacheDataType.Float32 }, eviction: eviction);
        using var storage = new KvCacheStorage(config.LayerCount, blockCount, blockSize, config.KvHeadCount, config.HeadDim, KvCacheDataType.Float32);
        var paged = new PagedKvAttention(storage, manager, config);
        var compactor = new KvCompactor(storage, model.Graph);
        var reference = new ReRotatingReference(config, KvCompactor.KeyRopeTables(model.Graph, config.LayerCount));

        var rng = new Random(blockSize);
        var text = new List<int> { 1 };
        for (int i = 1; i < 2 * context; i++) text.Add(rng.Next(3, config.VocabSize));   // a prompt of two contexts
        var expected = new float[config.VocabSize];
        var actual = new float[config.VocabSize];
        var batch = new ModelBatch();
        int computed = 0, evictions = 0, most = 0;
        Assert.That(manager.TryAllocate(0, text.ToArray().AsSpan(0, 1), 1, out _), Is.True);
        manager.TryAppendSlots(0, []);
        bool first = true;
        while (true)
        {
            int n = Math.Min(chunk, text.Count - computed);
            var tokens = text.ToArray().AsSpan(computed, n);
            if (!first)
            {
                Assert.That(manager.TryEvict(0, n, out int evicted), Is.True);
                foreach (var c in manager.PendingCompactions)
                {
                    reference.Keep(c.Sources, c.FirstIndex);
                    evictions++;
                }
                KvCompactor.Perform(storage, compactor, manager.PendingCopies, manager.PendingCompactions);
                manager.ClearPendingCopies();
                Assert.That(manager.TryAppendSlots(0, tokens), Is.True);
            }
            else if (n > 1) Assert.That(manager.TryAppendSlots(0, tokens[1..]), Is.True);
            first = false;
            manager.CheckInvariants();
            most = Math.Max(most, manager.UsedBlockCount);
            int position = manager.GetTokenCount(0) - n;
            Assert.That(position + n, Is.LessThanOrEqualTo(context), "positions stay inside the context");
            batch.Clear();
            batch.Add(0, tokens, position, wantLogits: true);
            model.Forward(batch, paged, actual, pool);
            model.Forward(batch, reference, expected, pool);
            if (computed == 0 && policy == KvEvictionPolicy.HeavyHitters)
            {
                // Each query gives every layer and head a distribution over what it sees: the scores sum to that many.
                double sum = 0;
                foreach (var x in manager.GetAttentionScores(0)) sum += x;
                Assert.That(sum, Is.EqualTo(config.LayerCount * config.HeadCount * n).Within(1e-3));
                Assert.That(manager.GetAttentionScores(0)[0], Is.GreaterThan(manager.GetAttentionScores(0)[n - 1]), "the first token is seen by every query, the last by one");
            }
            computed += n;
            for (int i = 0; i < expected.Length; i++)
                if (!(Math.Abs(actual[i] - expected[i]) <= 1e-4f * (1 + Math.Abs(expected[i]))))
                    Assert.Fail($"token {computed - 1} (cache position {position + n - 1}, {evictions} evictions): logit {i} paged {actual[i]} vs reference {expected[i]}");
            if (computed == total) break;
            if (computed == text.Count)
            {
                text.Add(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(expected));
                chunk = 1;
            }
        }
        Assert.That(evictions, Is.GreaterThanOrEqualTo(3 * context / blockSize - 4), "evicted all along");
        Assert.That(most, Is.LessThanOrEqualTo((context + blockSize - 1) / blockSize + 1), "bounded blocks");
        manager.Free(0);
        manager.CheckInvariants();
        Assert.That(manager.UsedBlockCount, Is.Zero, "no leaked block");
    }

    private static EngineOptions Options(KvEvictionOptions? eviction, int blockSize = 16, int context = 128, int? poolBlocks = null, int maxNumSeqs = 16)
    {
        var kv = new KvCacheOptions { BlockSize = blockSize, DataType = KvCacheDataType.Float32 };
        if (poolBlocks is int blocks)
        {
            using var gguf = GgufFile.Open(TestData.Stories260K);
            var c = ModelConfig.FromGguf(gguf);
            kv = kv with { PoolBytes = blocks * KvCacheStorage.GetBlockByteCount(c.LayerCount, blockSize, c.KvHeadCount, c.HeadDim, KvCacheDataType.Float32) };
        }
        return new EngineOptions { Threads = 2, ContextLength = context, KvCache = kv, KvEviction = eviction, MaxNumSeqs = maxNumSeqs, MaxNumBatchedTokens = 64 };
    }

    [TestCase(KvEvictionPolicy.AttentionSinks)]
    [TestCase(KvEvictionPolicy.HeavyHitters)]
    public async Task Engine_GeneratesFourContexts_WithBoundedBlocks(KvEvictionPolicy policy)
    {
        var eviction = policy == KvEvictionPolicy.AttentionSinks
            ? new KvEvictionOptions { SinkTokens = 4, RecentTokens = 92 }
            : new KvEvictionOptions { Policy = policy, SinkTokens = 4, RecentTokens = 60, HeavyHitterTokens = 32 };
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(eviction));
        int most = 0;
        engine.Loop.StepCompleted = _ => most = Math.Max(most, engine.Loop.KvCache.UsedBlockCount);
        var result = await engine.CompleteAsync("Once upon a time", SamplingOptions.Greedy with { MaxTokens = 4 * 128, EndOfSequence = EndOfSequenceHandling.Ignore });
        engine.Loop.StepCompleted = null;
        Assert.That(result.TokenIds, Has.Count.EqualTo(512));
        Assert.That(result.FinishReason, Is.EqualTo(FinishReason.Length));
        Assert.That(most, Is.LessThanOrEqualTo((96 + 16) / 16 + 1), "bounded blocks");
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "no leaked block");
    }

    [Test]
    public async Task Engine_SinksWithAWindowCoveringEverything_EqualsNoEviction()
    {
        // 4 sinks + 236 recent + a block of 16 = 256: nothing is ever evicted in 240 tokens.
        var sampling = SamplingOptions.Greedy with { MaxTokens = 236, EndOfSequence = EndOfSequenceHandling.Ignore };
        string[] prompts = ["Once upon a time", "Lily and Ben"];
        var plain = new List<IReadOnlyList<int>>();
        await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(null, context: 256)))
            foreach (var p in prompts) plain.Add((await engine.CompleteAsync(p, sampling)).TokenIds);
        await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(new KvEvictionOptions { SinkTokens = 4, RecentTokens = 236 }, context: 256)))
            for (int i = 0; i < prompts.Length; i++)
                Assert.That((await engine.CompleteAsync(prompts[i], sampling)).TokenIds, Is.EqualTo(plain[i]));
    }

    [TestCase(KvEvictionPolicy.AttentionSinks)]
    [TestCase(KvEvictionPolicy.HeavyHitters)]
    public async Task Engine_EvictionUnderBatchingAndPreemption_FinishesEveryRequest_AndLeaksNoBlock(KvEvictionPolicy policy)
    {
        var eviction = policy == KvEvictionPolicy.AttentionSinks
            ? new KvEvictionOptions { SinkTokens = 4, RecentTokens = 36 }
            : new KvEvictionOptions { Policy = policy, SinkTokens = 2, RecentTokens = 22, HeavyHitterTokens = 16 };
        // Each sequence holds up to 48 tokens (6 blocks of 8); 16 blocks for 6 requests force preemption.
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(eviction, blockSize: 8, context: 64, poolBlocks: 16, maxNumSeqs: 6));
        int most = 0;
        Exception? broken = null;
        engine.Loop.StepCompleted = _ =>
        {
            most = Math.Max(most, engine.Loop.KvCache.UsedBlockCount);
            try { engine.Loop.KvCache.CheckInvariants(); }
            catch (Exception e) { broken ??= e; }
        };
        var prompts = Enumerable.Range(0, 6).Select(i => $"Once upon a time {i} {new string('a', 3 * i)}").ToArray();
        var results = await Task.WhenAll(prompts.Select(p => engine.CompleteAsync(p, SamplingOptions.Greedy with { MaxTokens = 4 * 64, EndOfSequence = EndOfSequenceHandling.Ignore })));
        engine.Loop.StepCompleted = null;
        Assert.That(broken, Is.Null);
        foreach (var r in results) Assert.That(r.TokenIds, Has.Count.EqualTo(256));
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.PreemptionCount, Is.GreaterThan(0), "the pool was too small for every request at once");
        Assert.That(most, Is.LessThanOrEqualTo(16));
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "no leaked block");
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
    }

    /// <summary>
    /// Q8_0 and FP8 keys moved by a compaction are dequantized, rotated and quantized again: the moved key's error against
    /// the exact rotation of the original key is about √2 × one fresh quantization's error (the stored key's error,
    /// rotated, plus the new rounding); unmoved keys and all values keep their bytes.
    /// </summary>
    [TestCase(KvCacheDataType.Q8_0)]
    [TestCase(KvCacheDataType.Fp8E4M3)]
    public void Compactor_ReRotatesQuantizedKeys_WithOneMoreQuantizationError(KvCacheDataType type)
    {
        using var gguf = GgufFile.Open(Inference.Tests.Cuda.DeviceForwardExecutorTests.Model(4, 2, GgmlType.F32, headDim: 64));
        var config = ModelConfig.FromGguf(gguf);
        var graph = new LlamaModel(gguf, config).Graph;
        int kvHeads = config.KvHeadCount, hd = config.HeadDim, kvDim = kvHeads * hd;
        const int bs = 8, old = 24, moved = 12;
        using var storage = new KvCacheStorage(config.LayerCount, 4, bs, kvHeads, hd, type);
        var rope = KvCompactor.KeyRopeTables(graph, config.LayerCount)[0]!;
        int[] blocks = [2, 0, 3];
        var rng = new Random(6);
        var keys = new double[old][];
        for (int p = 0; p < old; p++)
        {
            keys[p] = Enumerable.Range(0, kvDim).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
            var k = Rotated(keys[p], rope, kvHeads, hd, p).Select(x => (float)x).ToArray();
            var v = Enumerable.Range(0, kvDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            for (int l = 0; l < config.LayerCount; l++) storage.Write(l, blocks[p / bs], p % bs, k, v);
        }
        int rowBytes = kvHeads * KvBlockFormat.RowBytes(type, hd);
        var before = storage.GetKeyBytes(0).ToArray();
        var valuesBefore = storage.GetValueBytes(0).ToArray();
        byte[] Row(byte[] bytes, int index) => bytes.AsSpan((blocks[index / bs] * bs + index % bs) * rowBytes, rowBytes).ToArray();

        // keep the 4 sinks, drop 4 … 11, move 12 … 23 down to 4 … 15 (rotated by −8), into blocks 2 and 0
        int[] sources = [0, 1, 2, 3, .. Enumerable.Range(moved, old - moved)];
        new KvCompactor(storage, graph).Apply(new KvCompaction(0, bs, 0, blocks, old, sources, [2, 0], 0));

        var after = storage.GetKeyBytes(0).ToArray();
        var valuesAfter = storage.GetValueBytes(0).ToArray();
        var row = new float[kvDim];
        var fresh = new byte[rowBytes];
        double movedErr = 0, freshErr = 0, norm = 0;
        for (int j = 0; j < sources.Length; j++)
        {
            Assert.That(Row(valuesAfter, j), Is.EqualTo(Row(valuesBefore, sources[j])), $"value of index {j} moved as stored");
            if (j < 4)
            {
                Assert.That(Row(after, j), Is.EqualTo(Row(before, j)), "a sink keeps its bytes");
                continue;
            }
            var exact = Rotated(keys[sources[j]], rope, kvHeads, hd, j);
            KvBlockFormat.Dequantize(type, Row(after, j), row);
            KvBlockFormat.Quantize(type, exact.Select(x => (float)x).ToArray(), fresh);
            var freshRow = new float[kvDim];
            KvBlockFormat.Dequantize(type, fresh, freshRow);
            for (int d = 0; d < kvDim; d++)
            {
                movedErr += (row[d] - exact[d]) * (row[d] - exact[d]);
                freshErr += (freshRow[d] - exact[d]) * (freshRow[d] - exact[d]);
                norm += exact[d] * exact[d];
            }
        }
        movedErr = Math.Sqrt(movedErr / norm);
        freshErr = Math.Sqrt(freshErr / norm);
        TestContext.Out.WriteLine($"{type}: moved key relative L2 {movedErr:E2}, fresh quantization {freshErr:E2}, ratio {movedErr / freshErr:F2}");
        Assert.That(movedErr, Is.LessThan(2 * freshErr), "one more quantization, not a wrong rotation");
    }

    /// <summary>R(position)·x per head, in double (the layout and frequencies of <paramref name="rope"/>).</summary>
    private static double[] Rotated(double[] x, RopeTable rope, int heads, int hd, int position)
    {
        var r = (double[])x.Clone();
        int half = rope.RopeDim / 2;
        bool neox = rope.Layout == RopeLayout.Neox;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
            {
                int i0 = h * hd + (neox ? i : 2 * i), i1 = h * hd + (neox ? i + half : 2 * i + 1);
                double c = Math.Cos(position * rope.InvFreq[i]), sn = Math.Sin(position * rope.InvFreq[i]);
                r[i0] = x[i0] * c - x[i1] * sn;
                r[i1] = x[i0] * sn + x[i1] * c;
            }
        return r;
    }

    /// <summary>
    /// Both policies with Q8_0 and FP8 K/V (a synthetic llama with head size 32): four contexts generated with the block
    /// count bounded and no block leaked; sinks with a window covering everything give the tokens of no eviction.
    /// </summary>
    [TestCase(KvCacheDataType.Q8_0, KvEvictionPolicy.AttentionSinks)]
    [TestCase(KvCacheDataType.Fp8E4M3, KvEvictionPolicy.HeavyHitters)]
    public async Task Engine_QuantizedKv_GeneratesFourContexts_WithBoundedBlocks(KvCacheDataType type, KvEvictionPolicy policy)
    {
        string model = Inference.Tests.Cuda.DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32, headDim: 32);
        var eviction = policy == KvEvictionPolicy.AttentionSinks
            ? new KvEvictionOptions { SinkTokens = 4, RecentTokens = 44 }
            : new KvEvictionOptions { Policy = policy, SinkTokens = 4, RecentTokens = 28, HeavyHitterTokens = 16 };
        EngineOptions EngineWith(KvEvictionOptions? e) => new()
        {
            Threads = 2, ContextLength = 64, KvCache = new KvCacheOptions { BlockSize = 16, DataType = type }, KvEviction = e,
            MaxNumSeqs = 4, MaxNumBatchedTokens = 64,
        };
        var sampling = SamplingOptions.Greedy with { MaxTokens = 4 * 64, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using (var engine = await InferenceEngine.LoadAsync(model, EngineWith(eviction)))
        {
            int most = 0;
            engine.Loop.StepCompleted = _ => most = Math.Max(most, engine.Loop.KvCache.UsedBlockCount);
            var result = await engine.CompleteAsync("Once upon a time", sampling);
            engine.Loop.StepCompleted = null;
            Assert.That(result.TokenIds, Has.Count.EqualTo(256));
            Assert.That(most, Is.LessThanOrEqualTo((48 + 16) / 16 + 1), "bounded blocks");
            Assert.That((await engine.GetStatsAsync()).KvCache.UsedBlockCount, Is.Zero, "no leaked block");
        }
        // 4 sinks + 44 recent + a block of 16 = 64 = the context: 40 tokens never evict anything
        var short40 = sampling with { MaxTokens = 40 };
        IReadOnlyList<int> plain;
        await using (var engine = await InferenceEngine.LoadAsync(model, EngineWith(null)))
            plain = (await engine.CompleteAsync("Once upon a time", short40)).TokenIds;
        await using (var engine = await InferenceEngine.LoadAsync(model, EngineWith(new KvEvictionOptions { SinkTokens = 4, RecentTokens = 44 })))
            Assert.That((await engine.CompleteAsync("Once upon a time", short40)).TokenIds, Is.EqualTo(plain));
    }

    [Test]
    public async Task Engine_RefusesEvictionItCannotDo()
    {
        var eviction = new KvEvictionOptions { SinkTokens = 4, RecentTokens = 60 };
        Assert.That(async () => await InferenceEngine.LoadAsync(TestData.Stories260K, Options(eviction) with { KvCache = new KvCacheOptions { BlockSize = 16 }, ContextLength = 64 }),
            Throws.ArgumentException.With.Message.Contains("context"));
        Assert.That(async () => await InferenceEngine.LoadAsync(TestData.Stories260K, Options(eviction) with { Speculative = Inference.Speculative.SpeculativeOptions.Draft(TestData.Stories260K, 2) }),
            Throws.InstanceOf<NotSupportedException>().With.Message.Contains("draft"));
        var heavy = new KvEvictionOptions { Policy = KvEvictionPolicy.HeavyHitters, SinkTokens = 4, RecentTokens = 60, HeavyHitterTokens = 16 };
        Assert.That(async () => await InferenceEngine.LoadAsync(TestData.Stories260K, Options(heavy) with { Speculative = Inference.Speculative.SpeculativeOptions.NGram(2) }),
            Throws.InstanceOf<NotSupportedException>().With.Message.Contains("speculative"));
    }

    /// <summary>
    /// N-gram speculation with the attention-sink policy: rejected proposals are truncated at the re-based end of the
    /// cache; four contexts with the block count bounded, proposals accepted along the way, no block leaked; with a
    /// window that covers everything the tokens equal speculation without eviction.
    /// </summary>
    [Test]
    public async Task Engine_NGramSpeculation_WithAttentionSinks()
    {
        var speculative = Inference.Speculative.SpeculativeOptions.NGram(3);
        var sampling = SamplingOptions.Greedy with { MaxTokens = 4 * 128, EndOfSequence = EndOfSequenceHandling.Ignore };
        const string prompt = "Once upon a time there was a cat. The cat was happy. Once upon a time there was a dog. The dog";
        await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(new KvEvictionOptions { SinkTokens = 4, RecentTokens = 92 }) with { Speculative = speculative }))
        {
            int most = 0;
            Exception? broken = null;
            engine.Loop.StepCompleted = _ =>
            {
                most = Math.Max(most, engine.Loop.KvCache.UsedBlockCount);
                try { engine.Loop.KvCache.CheckInvariants(); }
                catch (Exception e) { broken ??= e; }
            };
            var result = await engine.CompleteAsync(prompt, sampling);
            engine.Loop.StepCompleted = null;
            Assert.That(broken, Is.Null);
            Assert.That(result.TokenIds, Has.Count.EqualTo(512));
            Assert.That(most, Is.LessThanOrEqualTo((96 + 16) / 16 + 1), "bounded blocks");
            var stats = await engine.GetStatsAsync();
            TestContext.Out.WriteLine($"speculation under eviction: {stats.Speculation}");
            Assert.That(stats.Speculation!.AcceptedTokens, Is.GreaterThan(0), "proposals were accepted");
            Assert.That(stats.Speculation.ProposedTokens, Is.GreaterThan(stats.Speculation.AcceptedTokens), "and some rejected (truncated)");
            Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "no leaked block");
        }
        var short236 = sampling with { MaxTokens = 200 };
        IReadOnlyList<int> plain;
        await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(null, context: 256) with { Speculative = speculative }))
            plain = (await engine.CompleteAsync(prompt, short236)).TokenIds;
        await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(new KvEvictionOptions { SinkTokens = 4, RecentTokens = 236 }, context: 256) with { Speculative = speculative }))
            Assert.That((await engine.CompleteAsync(prompt, short236)).TokenIds, Is.EqualTo(plain));
    }
}
