using Inference.Engine;
using Inference.Kernels.Reference;
using Inference.KvCache;
using Inference.Loading;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Parallelism;

/// <summary>
/// Tensor and pipeline parallelism on CPU ranks against one rank: the same logits within 1e-5 relative L2 and the same
/// greedy text, for MHA, GQA and MQA models (KV heads split, or replicated when fewer than the ranks; vocabulary-parallel
/// embedding and output head; layers split into stages, batches into micro-batches), under concurrent requests with
/// preemption and prefix caching.
/// </summary>
[NonParallelizable]
public class ParallelLayoutTests
{
    private static string _dir = "";

    [OneTimeSetUp]
    public void WriteModels()
    {
        _dir = TestData.TempDir();
        foreach (var (heads, kvHeads) in new[] { (8, 8), (8, 2), (8, 1) })
        {
            SyntheticModel.Write(ModelPath(heads, kvHeads, GgmlType.F32), new SyntheticModelOptions
            {
                Dimension = 64, LayerCount = 3, HeadCount = heads, KvHeadCount = kvHeads, FeedForwardLength = 128, Seed = heads * 10 + kvHeads,
                TokenizerDonorPath = TestData.Stories260K,
            });
        }
        // 6 heads over 3 ranks: the vocabulary of 512 splits into slices of 171, 171 and 170 tokens.
        SyntheticModel.Write(ModelPath(6, 3, GgmlType.F32), new SyntheticModelOptions
        {
            Dimension = 48, LayerCount = 2, HeadCount = 6, KvHeadCount = 3, FeedForwardLength = 96, Seed = 63,
            TokenizerDonorPath = TestData.Stories260K,
        });
        // gemma2: a tied output head (one vocabulary slice serves the lookup and the head), a scaled embedding and
        // soft-capped final logits (capped on each rank's slice).
        SyntheticModel.Write(GemmaPath, new SyntheticModelOptions
        {
            Architecture = "gemma2", Dimension = 64, LayerCount = 4, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 128, Seed = 29,
            OutputHead = OutputHead.TiedToEmbedding, SlidingWindow = 8, AttentionLogitSoftCap = 50f, FinalLogitSoftCap = 30f,
            TokenizerDonorPath = TestData.Stories260K,
        });
        // Mixture of experts: Mixtral-style llama (8 experts, top 2) and qwen2moe (4 experts, top 2, a shared expert).
        foreach (var arch in new[] { "mixtral", "qwen2moe" })
        {
            SyntheticModel.Write(MoePath(arch), new SyntheticModelOptions
            {
                Architecture = arch == "mixtral" ? "llama" : arch, Dimension = 64, LayerCount = 2, HeadCount = 8, KvHeadCount = 2,
                FeedForwardLength = 128, ExpertCount = arch == "mixtral" ? 8 : 4, ExpertUsedCount = 2, ExpertFeedForwardLength = 96,
                SharedExpertFeedForwardLength = arch == "qwen2moe" ? 128 : 0, Seed = arch.Length, WeightScale = 0.08f,
                TokenizerDonorPath = TestData.Stories260K,
            });
        }
        // Every token uses every expert (top-4 of 4): the all-to-all's bytes do not depend on the routing.
        SyntheticModel.Write(MoePath("dense4"), new SyntheticModelOptions
        {
            Architecture = "llama", Dimension = 64, LayerCount = 2, HeadCount = 8, KvHeadCount = 2, FeedForwardLength = 128,
            ExpertCount = 4, ExpertUsedCount = 4, ExpertFeedForwardLength = 96, Seed = 44, WeightScale = 0.08f,
            TokenizerDonorPath = TestData.Stories260K,
        });
        // Q8_0: the row-parallel slices must fall on whole blocks of 32 (dim 128 over 2 ranks, ffn 256).
        SyntheticModel.Write(ModelPath(4, 2, GgmlType.Q8_0), new SyntheticModelOptions
        {
            Dimension = 128, LayerCount = 2, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 256, Seed = 5,
            TensorType = GgmlType.Q8_0, TokenizerDonorPath = TestData.Stories260K,
        });
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    private static string ModelPath(int heads, int kvHeads, GgmlType type) => Path.Combine(_dir, $"tp-{heads}-{kvHeads}-{type}.gguf");

    private static string GemmaPath => Path.Combine(_dir, "gemma2.gguf");

    private static string MoePath(string arch) => Path.Combine(_dir, $"{arch}.gguf");

    private static EngineOptions Options(int tensorParallel, long? poolBytes = null, int pipelineParallel = 1, bool expertParallel = false) => new()
    {
        EnableExpertParallel = expertParallel,
        Threads = 2,
        ContextLength = 256,
        Device = Device.Cpu,
        TensorParallelSize = tensorParallel,
        PipelineParallelSize = pipelineParallel,
        KvCache = new KvCacheOptions { DataType = KvCacheDataType.Float32, BlockSize = 8, PoolBytes = poolBytes },
    };

    private static readonly int[] Prompt = [1, 45, 102, 7, 300, 12, 88, 9, 14, 250, 61, 5, 33, 2, 190, 77, 21];

    [TestCase(8, 8, 2, 1)]
    [TestCase(8, 8, 4, 1)]
    [TestCase(8, 2, 2, 1)]
    [TestCase(8, 2, 4, 1)]
    [TestCase(8, 1, 2, 1)]
    [TestCase(8, 1, 4, 1)]
    [TestCase(8, 8, 1, 2)]
    [TestCase(8, 2, 1, 2)]
    [TestCase(8, 1, 1, 2)]
    [TestCase(8, 2, 1, 3)]
    [TestCase(8, 8, 2, 2)]
    [TestCase(8, 2, 2, 2)]
    [TestCase(8, 1, 2, 2)]
    [TestCase(6, 3, 3, 1)]
    public async Task Logits_MatchOneRank(int heads, int kvHeads, int tensorRanks, int stages)
    {
        string path = ModelPath(heads, kvHeads, GgmlType.F32);
        await using var single = await InferenceEngine.LoadAsync(path, Options(1));
        await using var parallel = await InferenceEngine.LoadAsync(path, Options(tensorRanks, pipelineParallel: stages));
        Assert.That(parallel.DeviceName, Does.Contain($"{tensorRanks * stages} ranks"));
        var expected = await single.GetLogitsAsync(Prompt);
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(actual, Has.Length.EqualTo(expected.Length));
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
    }

    [TestCase(2, 1)]
    [TestCase(1, 2)]
    [TestCase(2, 2)]
    public async Task Gemma2_TiedSoftCappedHead_MatchesOneRank(int tensorRanks, int stages)
    {
        await using var single = await InferenceEngine.LoadAsync(GemmaPath, Options(1));
        await using var parallel = await InferenceEngine.LoadAsync(GemmaPath, Options(tensorRanks, pipelineParallel: stages));
        var expected = await single.GetLogitsAsync(Prompt);
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
    }

    [TestCase("mixtral", 2, 1)]
    [TestCase("mixtral", 4, 1)]
    [TestCase("mixtral", 2, 2)]
    [TestCase("qwen2moe", 2, 1)]
    [TestCase("qwen2moe", 4, 1)]
    public async Task ExpertParallel_MatchesOneRank(string arch, int tensorRanks, int stages)
    {
        // Logits within 1e-5 and the same greedy text for concurrent requests.
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 16 };
        var prompts = Enumerable.Range(0, 4).Select(i => (IReadOnlyList<int>)[.. Prompt, 3 + i, 40 + i]).ToArray();
        float[] expected;
        string[] expectedText;
        await using (var single = await InferenceEngine.LoadAsync(MoePath(arch), Options(1)))
        {
            expected = await single.GetLogitsAsync(Prompt);
            expectedText = await Task.WhenAll(prompts.Select(p => single.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        }
        await using var parallel = await InferenceEngine.LoadAsync(MoePath(arch), Options(tensorRanks, pipelineParallel: stages, expertParallel: true));
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
        var text = await Task.WhenAll(prompts.Select(p => parallel.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        Assert.That(text, Is.EqualTo(expectedText));
    }

    [TestCase("mixtral", 2, 1)]
    [TestCase("qwen2moe", 2, 1)]
    [TestCase("mixtral", 2, 2)]
    public async Task ExpertParallel_GreedyText_UnderConcurrencyPreemptionAndPrefixCaching_EqualsOneRank(string arch, int tensorRanks, int stages)
    {
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 24 };
        var prompts = Enumerable.Range(0, 8).Select(i => (IReadOnlyList<int>)[.. Prompt, 3 + i % 3, 40 + i]).ToArray();
        string[] expected;
        await using (var single = await InferenceEngine.LoadAsync(MoePath(arch), Options(1)))
            expected = await Task.WhenAll(prompts.Select(p => single.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        // 12 blocks of 8 tokens cannot hold eight 43-token sequences: requests are preempted and recomputed, and the
        // shared 17-token prompt prefix is served from the prefix cache.
        long blockBytes = KvCacheStorage.GetBlockByteCount(2, 8, 2, 8, KvCacheDataType.Float32);
        await using var parallel = await InferenceEngine.LoadAsync(MoePath(arch), Options(tensorRanks, poolBytes: 12 * blockBytes, pipelineParallel: stages, expertParallel: true));
        var actual = await Task.WhenAll(prompts.Select(p => parallel.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        Assert.That(actual, Is.EqualTo(expected));
        var stats = await parallel.GetStatsAsync();
        Assert.That(stats.PreemptionCount, Is.GreaterThan(0), "the pool was meant to force preemption");
        Assert.That(stats.KvCache.PrefixHitTokenCount, Is.GreaterThan(0), "the shared prefix was meant to be reused");
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }

    [TestCase(2)]
    [TestCase(4)]
    public async Task ExpertParallel_CommunicationBytes_FollowTheCostModel(int ranks)
    {
        // One step of the 17-token prompt on a model whose tokens use all 4 experts. Rank p owns tokens Part(n, T, p) and
        // experts Part(4, T, p); per mixture-of-experts layer each of its tokens' rows for the other ranks' experts goes out
        // and its output comes back (2 · D · dim · 4 bytes, D those (token, expert) pairs), and every rank gathers the others'
        // tokens' outputs ((T − 1) · n · dim · 4). The rest is tensor parallelism's: the embedding's and each attention
        // output's all-reduce ((L + 1) · 2(T − 1) · n · dim · 4) and the logits ((V − V₀) · 4).
        const int layers = 2, dim = 64, vocab = 512, experts = 4;
        int n = Prompt.Length, v0 = RankGroupPart(vocab, ranks);
        long remote = 0;
        for (int p = 0; p < ranks; p++)
            remote += Inference.Parallelism.RankGroup.Part(n, ranks, p).Length * (experts - Inference.Parallelism.RankGroup.Part(experts, ranks, p).Length);
        float[] expected;
        await using (var single = await InferenceEngine.LoadAsync(MoePath("dense4"), Options(1)))
            expected = await single.GetLogitsAsync(Prompt);
        await using var parallel = await InferenceEngine.LoadAsync(MoePath("dense4"), Options(ranks, expertParallel: true));
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
        var communication = (await parallel.GetStatsAsync()).Communication!;
        long bytes = (layers + 1) * 2L * (ranks - 1) * n * dim * 4
            + layers * (2L * remote * dim * 4 + (ranks - 1L) * n * dim * 4)
            + (vocab - v0) * 4L;
        Assert.That(communication.Steps, Is.EqualTo(1));
        Assert.That(communication.Bytes, Is.EqualTo(bytes));
    }

    [Test]
    public void ExpertBlocks_WithoutExpertParallel_AreRefusedWithOneLine()
    {
        var e = Assert.ThrowsAsync<NotSupportedException>(async () => await InferenceEngine.LoadAsync(MoePath("mixtral"), Options(2)));
        Assert.That(e!.Message, Does.Contain("--enable-expert-parallel").And.Not.Contain("\n"));
        Assert.ThrowsAsync<NotSupportedException>(async () => await InferenceEngine.LoadAsync(MoePath("mixtral"), Options(1, expertParallel: true)));
    }

    [TestCase(2, 1)]
    [TestCase(4, 1)]
    [TestCase(1, 2)]
    [TestCase(2, 2)]
    public async Task CommunicationBytes_FollowTheCostModel(int tensorRanks, int stages)
    {
        // One step of the 17-token prompt, logits for its last token. Bytes read from other ranks (all ranks together):
        //   tensor parallel: 2L + 1 all-reduces of n·dim floats (the embedding, after each attention and feed-forward),
        //                    each 2·(T − 1)·n·dim·4 bytes; the head's logits gathered: (V − V₀)·4 bytes per logits row;
        //   pipeline parallel: every tensor rank sends n·dim floats to the next stage at each of the P − 1 boundaries.
        const int layers = 3, dim = 64, vocab = 512;
        int n = Prompt.Length, v0 = RankGroupPart(vocab, tensorRanks);
        await using var parallel = await InferenceEngine.LoadAsync(ModelPath(8, 2, GgmlType.F32), Options(tensorRanks, pipelineParallel: stages));
        await parallel.GetLogitsAsync(Prompt);
        var communication = (await parallel.GetStatsAsync()).Communication;
        Assert.That(communication, Is.Not.Null);
        long tensor = tensorRanks == 1 ? 0 : (2L * layers + 1) * 2L * (tensorRanks - 1) * n * dim * 4 + (vocab - v0) * 4L;
        long pipeline = (stages - 1L) * tensorRanks * n * dim * 4;
        Assert.That(communication!.Steps, Is.EqualTo(1));
        Assert.That(communication.Bytes, Is.EqualTo(tensor + pipeline));
        Assert.That(communication.TensorParallelSize, Is.EqualTo(tensorRanks));
        Assert.That(communication.PipelineParallelSize, Is.EqualTo(stages));
    }

    private static int RankGroupPart(int length, int size) => Inference.Parallelism.RankGroup.Part(length, size, 0).Length;

    [Test]
    public async Task Q8_0Weights_MatchOneRank()
    {
        string path = ModelPath(4, 2, GgmlType.Q8_0);
        await using var single = await InferenceEngine.LoadAsync(path, Options(1));
        await using var parallel = await InferenceEngine.LoadAsync(path, Options(2));
        var expected = await single.GetLogitsAsync(Prompt);
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
    }

    [TestCase(2, 1)]
    [TestCase(1, 2)]
    [TestCase(2, 2)]
    public async Task GreedyText_UnderConcurrencyPreemptionAndPrefixCaching_EqualsOneRank(int tensorRanks, int stages)
    {
        string path = ModelPath(8, 2, GgmlType.F32);
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 24 };
        var prompts = Enumerable.Range(0, 8).Select(i => (IReadOnlyList<int>)[.. Prompt, 3 + i % 3, 40 + i]).ToArray();
        string[] expected;
        await using (var single = await InferenceEngine.LoadAsync(path, Options(1)))
            expected = await Task.WhenAll(prompts.Select(p => single.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        // A pool of 12 blocks of 8 tokens cannot hold eight 41-token sequences: requests are preempted and recomputed,
        // and the shared 17-token prompt prefix is served from the prefix cache.
        long blockBytes = KvCacheStorage.GetBlockByteCount(3, 8, 2, 8, KvCacheDataType.Float32);
        await using var parallel = await InferenceEngine.LoadAsync(path, Options(tensorRanks, poolBytes: 12 * blockBytes, pipelineParallel: stages));
        var actual = await Task.WhenAll(prompts.Select(p => parallel.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        Assert.That(actual, Is.EqualTo(expected));
        var stats = await parallel.GetStatsAsync();
        Assert.That(stats.PreemptionCount, Is.GreaterThan(0), "the pool was meant to force preemption");
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }

    [TestCase(8, 2, 4, 1)]
    [TestCase(8, 1, 2, 1)]
    [TestCase(8, 2, 1, 2)]
    [TestCase(8, 1, 2, 2)]
    public async Task PrefixFiles_MoveBetweenOneRankAndSplitPools(int heads, int kvHeads, int ranks, int stages)
    {
        // Saving gathers every KV head from the rank that holds it; loading scatters them to every holder.
        string path = ModelPath(heads, kvHeads, GgmlType.F32), prefix = Path.Combine(_dir, $"p-{heads}-{kvHeads}-{ranks}-{stages}.kvprefix"),
            back = Path.Combine(_dir, $"b-{heads}-{kvHeads}-{ranks}-{stages}.kvprefix");
        string text = "Once upon a time there was a little dog who liked to run";
        float[] expected;
        await using (var single = await InferenceEngine.LoadAsync(path, Options(1)))
        {
            await single.SavePrefixAsync(text, prefix);
            expected = await single.GetLogitsAsync(single.Tokenizer.Encode(text + " far", addSpecial: true));
        }
        await using (var parallel = await InferenceEngine.LoadAsync(path, Options(ranks, pipelineParallel: stages)))
        {
            await parallel.LoadPrefixAsync(prefix);
            var actual = await parallel.GetLogitsAsync(parallel.Tokenizer.Encode(text + " far", addSpecial: true));
            Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
            await parallel.SavePrefixAsync(text, back);
        }
        Assert.That(File.ReadAllBytes(back), Is.EqualTo(File.ReadAllBytes(prefix)), "the split pools give back the bytes of the unsplit one");
    }

    [Test]
    public void HeadsThatDoNotDivide_AreRefusedWithOneLine()
    {
        var e = Assert.ThrowsAsync<NotSupportedException>(async () => await InferenceEngine.LoadAsync(ModelPath(8, 2, GgmlType.F32), Options(3)));
        Assert.That(e!.Message, Does.Contain("3 ranks").And.Not.Contain("\n"));
    }

    [Test]
    public void MoreStagesThanLayers_AreRefusedWithOneLine()
    {
        var e = Assert.ThrowsAsync<NotSupportedException>(async () => await InferenceEngine.LoadAsync(ModelPath(8, 2, GgmlType.F32), Options(1, pipelineParallel: 4)));
        Assert.That(e!.Message, Does.Contain("4 stages").And.Not.Contain("\n"));
    }

    [TestCase(1, 2)]
    [TestCase(2, 2)]
    public async Task OutOfVocabularyToken_FailsItsRequestOnly_WithoutHangingTheStages(int tensorRanks, int stages)
    {
        string path = ModelPath(8, 2, GgmlType.F32);
        await using var parallel = await InferenceEngine.LoadAsync(path, Options(tensorRanks, pipelineParallel: stages));
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 4 };
        var good = parallel.CompleteAsync(Prompt, sampling);
        Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await parallel.CompleteAsync([1, 2, 100_000], sampling));
        var tokens = (await good).TokenIds;
        await using var single = await InferenceEngine.LoadAsync(path, Options(1));
        Assert.That(tokens, Is.EqualTo((await single.CompleteAsync(Prompt, sampling)).TokenIds));
    }

    [Test]
    public void QuantizedSlicesOffTheBlockGrid_AreRefused()
    {
        // Q8_0 attention output columns per rank at 4 ranks: 128 / 4 = 32, but the feed-forward down columns 256 / 4 = 64
        // are fine; heads 4 / 4 = 1 of width 32: whole blocks. At 8 ranks the heads do not divide.
        Assert.ThrowsAsync<NotSupportedException>(async () => await InferenceEngine.LoadAsync(ModelPath(4, 2, GgmlType.Q8_0), Options(8)));
    }
}
