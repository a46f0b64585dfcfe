using Inference.Backends.Cpu;
using Inference.Engine;
using Inference.Kernels.Reference;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;
using Inference.Parallelism;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Parallelism;

/// <summary>
/// Context parallelism (ring attention) on CPU ranks: the partial-attention merge against plain attention, the zigzag
/// split of a step's tokens, and whole engines against one rank: logits within 1e-5 relative L2 for MHA, GQA, MQA,
/// gemma2 (sliding window, soft caps) and a mixture of experts, alone and with tensor ranks; the same greedy text under
/// concurrent requests with preemption and prefix caching; communication bytes as the cost model says.
/// </summary>
[NonParallelizable]
public class ContextParallelTests
{
    private static string _dir = "";

    [OneTimeSetUp]
    public void WriteModels()
    {
        _dir = TestData.TempDir();
        foreach (var (heads, kvHeads) in new[] { (8, 8), (8, 2), (8, 1) })
        {
            SyntheticModel.Write(ModelPath(heads, kvHeads), new SyntheticModelOptions
            {
                Dimension = 64, LayerCount = 3, HeadCount = heads, KvHeadCount = kvHeads, FeedForwardLength = 128, Seed = heads * 10 + kvHeads,
                TokenizerDonorPath = TestData.Stories260K,
            });
        }
        SyntheticModel.Write(GemmaPath, new SyntheticModelOptions
        {
            Architecture = "gemma2", Dimension = 64, LayerCount = 4, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 128, Seed = 29,
            OutputHead = OutputHead.TiedToEmbedding, SlidingWindow = 8, AttentionLogitSoftCap = 50f, FinalLogitSoftCap = 30f,
            TokenizerDonorPath = TestData.Stories260K,
        });
        SyntheticModel.Write(MixtralPath, new SyntheticModelOptions
        {
            Architecture = "llama", Dimension = 64, LayerCount = 2, HeadCount = 8, KvHeadCount = 2, FeedForwardLength = 128,
            ExpertCount = 8, ExpertUsedCount = 2, ExpertFeedForwardLength = 96, Seed = 7, WeightScale = 0.08f,
            TokenizerDonorPath = TestData.Stories260K,
        });
        // Head size 32, for a Q8_0 K/V cache.
        SyntheticModel.Write(Head32Path, new SyntheticModelOptions
        {
            Dimension = 128, LayerCount = 2, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 256, Seed = 5, WeightScale = 0.08f,
            TokenizerDonorPath = TestData.Stories260K,
        });
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    private static string ModelPath(int heads, int kvHeads) => Path.Combine(_dir, $"cp-{heads}-{kvHeads}.gguf");

    private static string GemmaPath => Path.Combine(_dir, "gemma2.gguf");

    private static string MixtralPath => Path.Combine(_dir, "mixtral.gguf");

    private static string Head32Path => Path.Combine(_dir, "head32.gguf");

    private static EngineOptions Options(int contextParallel, int tensorParallel = 1, long? poolBytes = null, int batchedTokens = 2048,
        KvCacheDataType kv = KvCacheDataType.Float32, bool expertParallel = false) => new()
    {
        Threads = 2,
        ContextLength = 256,
        Device = Device.Cpu,
        MaxNumBatchedTokens = batchedTokens,
        ContextParallelSize = contextParallel,
        TensorParallelSize = tensorParallel,
        EnableExpertParallel = expertParallel,
        KvCache = new KvCacheOptions { DataType = kv, BlockSize = 8, PoolBytes = poolBytes },
    };

    private static readonly int[] Prompt = [1, 45, 102, 7, 300, 12, 88, 9, 14, 250, 61, 5, 33, 2, 190, 77, 21];

    // ---- the merge rule and the split ------------------------------------------------------------------------------

    [Test]
    public void PartialAttention_MergedOverAnyCutOfTheKeys_EqualsPlainAttention(
        [Values(4, 2, 1)] int kvHeads, [Values(0, 7)] int window, [Values(0f, 20f)] float softCap)
    {
        const int heads = 4, hd = 16, context = 40, start = 25, tokens = context - start;
        var shape = new PagedAttentionShape(heads, kvHeads, hd, 8) { SlidingWindow = window, LogitSoftCap = softCap };
        var random = new Random(kvHeads * 100 + window + (int)softCap);
        float[] Values(int n) => Enumerable.Range(0, n).Select(_ => random.NextSingle() * 2 - 1).ToArray();
        var q = Values(tokens * heads * hd);
        var k = Values(context * kvHeads * hd);
        var v = Values(context * kvHeads * hd);
        var expected = new float[q.Length];
        PagedAttentionReference.Forward(shape, q, k, v, start, expected);

        // The keys cut at random points into ranges, merged in a random order (as blocks come round the ring).
        var cuts = new SortedSet<int> { 0, context };
        while (cuts.Count < 7) cuts.Add(random.Next(1, context));
        var bounds = cuts.ToArray();
        var ranges = Enumerable.Range(0, bounds.Length - 1).OrderBy(_ => random.Next()).ToArray();
        // The merge's starting point: no key seen yet (lse −∞, output zero).
        var output = new float[q.Length];
        var lse = Enumerable.Repeat(float.NegativeInfinity, tokens * heads).ToArray();
        var partOutput = new float[q.Length];
        var partLse = new float[tokens * heads];
        var scores = new float[context];
        int kvStride = kvHeads * hd;
        foreach (int r in ranges)
        {
            int from = bounds[r], count = bounds[r + 1] - from;
            Array.Fill(partOutput, float.NaN);
            PartialAttention.Forward(shape, q, start, k.AsSpan(from * kvStride, count * kvStride), v.AsSpan(from * kvStride, count * kvStride), from, partOutput, partLse, scores);
            PartialAttention.Combine(output, lse, partOutput, partLse, hd);
        }
        Assert.That(ReferenceCompare.RelativeL2(output, expected), Is.LessThan(1e-5));

        // The merged log-sum-exp is that of every visible score, in float64.
        for (int i = 0; i < tokens; i++)
        {
            int position = start + i, first = window > 0 ? Math.Max(0, position - window + 1) : 0;
            for (int h = 0; h < heads; h++)
            {
                double sum = 0;
                for (int j = first; j <= position; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < hd; d++) dot += (double)q[(i * heads + h) * hd + d] * k[(j * kvHeads + h / (heads / kvHeads)) * hd + d];
                    dot /= Math.Sqrt(hd);
                    if (softCap != 0) dot = softCap * Math.Tanh(dot / softCap);
                    sum += Math.Exp(dot);
                }
                Assert.That(lse[i * heads + h], Is.EqualTo(Math.Log(sum)).Within(1e-5 * (1 + Math.Abs(Math.Log(sum)))), $"token {i}, head {h}");
            }
        }
    }

    [Test]
    public void PartialAttention_WithoutVisibleKeys_IsTheIdentityOfTheMerge()
    {
        var shape = new PagedAttentionShape(2, 1, 4, 8);
        var q = new float[] { 1, 2, 3, 4, -1, 0.5f, 2, 0 };
        var k = new float[] { 0.5f, 1, -1, 2 };
        var partOutput = Enumerable.Repeat(float.NaN, 8).ToArray();
        var partLse = new float[2];
        // Query at position 3, keys at 4 … : none visible.
        PartialAttention.Forward(shape, q, 3, k, k, 4, partOutput, partLse, new float[1]);
        Assert.That(partLse, Is.All.EqualTo(float.NegativeInfinity));
        Assert.That(partOutput, Is.All.EqualTo(0f));
        var output = new float[] { 1, 2, 3, 4, 5, 6, 7, 8 };
        var lse = new float[] { 0.25f, -3f };
        PartialAttention.Combine(output, lse, partOutput, partLse, 4);
        Assert.That(output, Is.EqualTo(new float[] { 1, 2, 3, 4, 5, 6, 7, 8 }));
        Assert.That(lse, Is.EqualTo(new[] { 0.25f, -3f }));
    }

    [Test]
    public void Split_GivesEveryTokenToOneRank_ZigzagForLongSegments_AndMapsLogitRows([Values(2, 3)] int ranks)
    {
        var batch = new ModelBatch();
        batch.Add(10, Enumerable.Range(100, 17).ToArray(), 3, 1);    // a prompt chunk after 3 cached positions
        batch.Add(11, [7], 40, 1);                                      // a decode token
        batch.Add(12, Enumerable.Range(200, 9).ToArray(), 0, 3);     // logits for its last 3 tokens
        batch.Add(13, [8], 12, 1);
        var split = new ContextSplit(ranks);
        split.Split(batch);

        var owner = new Dictionary<(long, int), int>();
        var logitRows = new (long Sequence, int Position)[batch.LogitCount];
        for (int c = 0; c < ranks; c++)
        {
            var local = split.Batches[c];
            for (int p = 0; p < local.Segments.Count; p++)
            {
                var piece = local.Segments[p];
                var global = batch.Segments.Single(s => s.SequenceId == piece.SequenceId);
                Assert.That(split.StepStart(c, p), Is.EqualTo(global.StartPosition));
                for (int i = 0; i < piece.TokenCount; i++)
                {
                    int position = piece.StartPosition + i;
                    Assert.That(owner.TryAdd((piece.SequenceId, position), c), $"position {position} of {piece.SequenceId} given twice");
                    Assert.That(local.Tokens[piece.TokenStart + i], Is.EqualTo(batch.Tokens[global.TokenStart + position - global.StartPosition]));
                }
                for (int r = 0; r < piece.LogitRowCount; r++)
                    logitRows[split.LogitRow(c, p) + r] = (piece.SequenceId, piece.StartPosition + piece.TokenCount - piece.LogitRowCount + r);
            }
        }
        Assert.That(owner, Has.Count.EqualTo(batch.TokenCount));
        // The global rows, in the batch's order: each segment's last LogitRowCount positions.
        var expected = batch.Segments.SelectMany(s => Enumerable.Range(s.StartPosition + s.TokenCount - s.LogitRowCount, s.LogitRowCount).Select(pos => (s.SequenceId, pos))).ToArray();
        Assert.That(logitRows, Is.EqualTo(expected));
        // Zigzag: the 17-token segment's 2C chunks, rank c holding chunks c and 2C − 1 − c; its last chunk is rank 0's.
        for (int chunk = 0; chunk < 2 * ranks; chunk++)
        {
            var (start, _) = RankGroup.Part(17, 2 * ranks, chunk);
            Assert.That(owner[(10, 3 + start)], Is.EqualTo(chunk < ranks ? chunk : 2 * ranks - 1 - chunk));
        }
        // Short segments whole, to the ranks in turn.
        Assert.That(owner[(11, 40)], Is.EqualTo(0));
        Assert.That(owner[(13, 12)], Is.EqualTo(1 % ranks));
    }

    // ---- engines against one rank ------------------------------------------------------------------------------------

    [TestCase(8, 8, 2, 1)]
    [TestCase(8, 2, 2, 1)]
    [TestCase(8, 1, 2, 1)]
    [TestCase(8, 2, 3, 1)]
    [TestCase(8, 2, 2, 2)]
    [TestCase(8, 1, 2, 2)]
    public async Task Logits_MatchOneRank_WholeAndInChunks(int heads, int kvHeads, int contextRanks, int tensorRanks)
    {
        // In chunks of 6 tokens, the later chunks also attend to the positions cached by the earlier ones.
        string path = ModelPath(heads, kvHeads);
        await using var single = await InferenceEngine.LoadAsync(path, Options(1));
        var expected = await single.GetLogitsAsync(Prompt);
        foreach (int chunk in new[] { 2048, 6 })
        {
            await using var parallel = await InferenceEngine.LoadAsync(path, Options(contextRanks, tensorRanks, batchedTokens: chunk));
            Assert.That(parallel.DeviceName, Does.Contain($"context parallel over {contextRanks}").And.Contain($"{contextRanks * tensorRanks} ranks"));
            var actual = await parallel.GetLogitsAsync(Prompt);
            Assert.That(actual, Has.Length.EqualTo(expected.Length));
            Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5), $"chunks of {chunk}");
        }
    }

    [TestCase(KvCacheDataType.Float16)]
    [TestCase(KvCacheDataType.Q8_0)]
    public async Task RoundedKvCache_MatchesOneRank(KvCacheDataType kv)
    {
        // The ring's blocks are read back as stored, so the queries see the rounded K/V one rank reads.
        await using var single = await InferenceEngine.LoadAsync(Head32Path, Options(1, kv: kv));
        await using var parallel = await InferenceEngine.LoadAsync(Head32Path, Options(2, kv: kv, batchedTokens: 6));
        var expected = await single.GetLogitsAsync(Prompt);
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
    }

    [TestCase(2, 1)]
    [TestCase(2, 2)]
    public async Task Gemma2_SlidingWindowAndSoftCaps_MatchOneRank(int contextRanks, int tensorRanks)
    {
        // A window of 8 over a 17-token prompt cut in chunks of 4 or 5: a query sees parts of some blocks only.
        await using var single = await InferenceEngine.LoadAsync(GemmaPath, Options(1));
        await using var parallel = await InferenceEngine.LoadAsync(GemmaPath, Options(contextRanks, tensorRanks));
        var expected = await single.GetLogitsAsync(Prompt);
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
    }

    [TestCase(2, 1)]
    [TestCase(2, 2)]
    public async Task MixtureOfExperts_MatchesOneRank(int contextRanks, int tensorRanks)
    {
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 12 };
        var prompts = Enumerable.Range(0, 3).Select(i => (IReadOnlyList<int>)[.. Prompt, 3 + i, 40 + i]).ToArray();
        float[] expected;
        string[] expectedText;
        await using (var single = await InferenceEngine.LoadAsync(MixtralPath, Options(1)))
        {
            expected = await single.GetLogitsAsync(Prompt);
            expectedText = await Task.WhenAll(prompts.Select(p => single.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        }
        await using var parallel = await InferenceEngine.LoadAsync(MixtralPath, Options(contextRanks, tensorRanks, expertParallel: tensorRanks > 1));
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
        var text = await Task.WhenAll(prompts.Select(p => parallel.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        Assert.That(text, Is.EqualTo(expectedText));
    }

    [TestCase(2, 1)]
    [TestCase(2, 2)]
    public async Task GreedyText_UnderConcurrencyPreemptionAndPrefixCaching_EqualsOneRank(int contextRanks, int tensorRanks)
    {
        string path = ModelPath(8, 2);
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 24 };
        var prompts = Enumerable.Range(0, 8).Select(i => (IReadOnlyList<int>)[.. Prompt, 3 + i % 3, 40 + i]).ToArray();
        string[] expected;
        await using (var single = await InferenceEngine.LoadAsync(path, Options(1)))
            expected = await Task.WhenAll(prompts.Select(p => single.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        // 12 blocks of 8 tokens per copy of the pool cannot hold eight 43-token sequences: requests are preempted and
        // recomputed, and the shared 17-token prompt prefix is served from the prefix cache (read on every rank).
        long blockBytes = KvCacheStorage.GetBlockByteCount(3, 8, 2, 8, KvCacheDataType.Float32);
        await using var parallel = await InferenceEngine.LoadAsync(path, Options(contextRanks, tensorRanks, poolBytes: contextRanks * 12 * blockBytes));
        Assert.That((await parallel.GetStatsAsync()).KvCache.TotalBlockCount, Is.EqualTo(12));
        var actual = await Task.WhenAll(prompts.Select(p => parallel.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        Assert.That(actual, Is.EqualTo(expected));
        var stats = await parallel.GetStatsAsync();
        Assert.That(stats.PreemptionCount, Is.GreaterThan(0), "the pool was meant to force preemption");
        Assert.That(stats.KvCache.PrefixHitTokenCount, Is.GreaterThan(0), "the shared prefix was meant to be reused");
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }

    [TestCase(2, 1)]
    [TestCase(3, 1)]
    [TestCase(2, 2)]
    public async Task CommunicationBytes_FollowTheCostModel(int contextRanks, int tensorRanks)
    {
        // One step of the 17-token prompt, logits for its last token. Bytes read from other ranks (all ranks together):
        //   ring: every rank's block of K and V (n_c tokens × its KV heads) crosses C − 1 links in each of the L layers,
        //         once per tensor rank's ring: L · (C − 1) · 2 · n · T · kvDim_t · 4 (here T · kvDim_t = kvDim);
        //   tensor parallel inside each context rank, over its n_c tokens: (2L + 1) · 2 · (T − 1) · n · dim · 4 summed over
        //         the context ranks, and the head's logits gathered on the rank holding the last token: (V − V₀) · 4.
        const int layers = 3, dim = 64, kvDim = 16, vocab = 512;
        int n = Prompt.Length, v0 = RankGroup.Part(vocab, tensorRanks, 0).Length;
        await using var parallel = await InferenceEngine.LoadAsync(ModelPath(8, 2), Options(contextRanks, tensorRanks));
        await parallel.GetLogitsAsync(Prompt);
        var communication = (await parallel.GetStatsAsync()).Communication;
        Assert.That(communication, Is.Not.Null);
        long ring = (long)layers * (contextRanks - 1) * 2 * n * kvDim * 4;
        long tensor = tensorRanks == 1 ? 0 : (2L * layers + 1) * 2L * (tensorRanks - 1) * n * dim * 4 + (vocab - v0) * 4L;
        Assert.That(communication!.Steps, Is.EqualTo(1));
        Assert.That(communication.Bytes, Is.EqualTo(ring + tensor));
        Assert.That(communication.ContextParallelSize, Is.EqualTo(contextRanks));
        Assert.That(communication.TensorParallelSize, Is.EqualTo(tensorRanks));
    }

    [Test]
    public async Task DecodeSteps_WithFewerSequencesThanRanks_PassTheirKvRoundTheRing()
    {
        // One sequence decoding on 3 ranks: two ranks have no token in each step but still store its K/V, so a second
        // request that reuses the whole first text as its cached prefix reads the decoded positions on any rank.
        string path = ModelPath(8, 2);
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 10 };
        await using var single = await InferenceEngine.LoadAsync(path, Options(1));
        await using var parallel = await InferenceEngine.LoadAsync(path, Options(3));
        var first = await parallel.CompleteAsync(Prompt, sampling);
        Assert.That(first.TokenIds, Is.EqualTo((await single.CompleteAsync(Prompt, sampling)).TokenIds));
        int[] longer = [.. Prompt, .. first.TokenIds, 5, 9];
        var actual = await parallel.GetLogitsAsync(longer);
        var expected = await single.GetLogitsAsync(longer);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
        Assert.That((await parallel.GetStatsAsync()).KvCache.PrefixHitTokenCount, Is.GreaterThan(Prompt.Length));
    }

    [Test]
    public void ContextWithPipelineParallel_IsRefusedWithOneLine()
    {
        var options = Options(2) with { PipelineParallelSize = 2 };
        var e = Assert.ThrowsAsync<NotSupportedException>(async () => await InferenceEngine.LoadAsync(ModelPath(8, 2), options));
        Assert.That(e!.Message, Does.Contain("context parallelism").And.Not.Contain("\n"));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new EngineOptions { ContextParallelSize = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new EngineOptions { ContextParallelSize = 65 });
    }
}
