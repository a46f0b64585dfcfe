using Inference.Engine;
using Inference.Kernels.Reference;
using Inference.KvCache;
using Inference.Loading;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Parallelism;

/// <summary>
/// Tensor parallelism on CPU ranks against one rank: the same logits within 1e-5 relative L2 and the same greedy text,
/// for MHA, GQA and MQA models (KV heads split, or replicated when fewer than the ranks), under concurrent requests with
/// preemption and prefix caching.
/// </summary>
[NonParallelizable]
public class TensorParallelTests
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

    private static EngineOptions Options(int tensorParallel, long? poolBytes = null) => new()
    {
        Threads = 2,
        ContextLength = 256,
        Device = Device.Cpu,
        TensorParallelSize = tensorParallel,
        KvCache = new KvCacheOptions { DataType = KvCacheDataType.Float32, BlockSize = 8, PoolBytes = poolBytes },
    };

    private static readonly int[] Prompt = [1, 45, 102, 7, 300, 12, 88, 9, 14, 250, 61, 5, 33, 2, 190, 77, 21];

    [TestCase(8, 8, 2)]
    [TestCase(8, 8, 4)]
    [TestCase(8, 2, 2)]
    [TestCase(8, 2, 4)]
    [TestCase(8, 1, 2)]
    [TestCase(8, 1, 4)]
    public async Task Logits_MatchOneRank(int heads, int kvHeads, int ranks)
    {
        string path = ModelPath(heads, kvHeads, GgmlType.F32);
        await using var single = await InferenceEngine.LoadAsync(path, Options(1));
        await using var parallel = await InferenceEngine.LoadAsync(path, Options(ranks));
        Assert.That(parallel.DeviceName, Does.Contain($"{ranks} ranks"));
        var expected = await single.GetLogitsAsync(Prompt);
        var actual = await parallel.GetLogitsAsync(Prompt);
        Assert.That(actual, Has.Length.EqualTo(expected.Length));
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-5));
    }

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

    [Test]
    public async Task GreedyText_UnderConcurrencyPreemptionAndPrefixCaching_EqualsOneRank()
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
        await using var parallel = await InferenceEngine.LoadAsync(path, Options(2, poolBytes: 12 * blockBytes));
        var actual = await Task.WhenAll(prompts.Select(p => parallel.CompleteAsync(p, sampling).ContinueWith(t => string.Join(",", t.Result.TokenIds))));
        Assert.That(actual, Is.EqualTo(expected));
        var stats = await parallel.GetStatsAsync();
        Assert.That(stats.PreemptionCount, Is.GreaterThan(0), "the pool was meant to force preemption");
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }

    [TestCase(8, 2, 4)]
    [TestCase(8, 1, 2)]
    public async Task PrefixFiles_MoveBetweenOneRankAndSplitPools(int heads, int kvHeads, int ranks)
    {
        // Saving gathers every KV head from the rank that holds it; loading scatters them to every holder.
        string path = ModelPath(heads, kvHeads, GgmlType.F32), prefix = Path.Combine(_dir, $"p-{heads}-{kvHeads}-{ranks}.kvprefix"),
            back = Path.Combine(_dir, $"b-{heads}-{kvHeads}-{ranks}.kvprefix");
        string text = "Once upon a time there was a little dog who liked to run";
        float[] expected;
        await using (var single = await InferenceEngine.LoadAsync(path, Options(1)))
        {
            await single.SavePrefixAsync(text, prefix);
            expected = await single.GetLogitsAsync(single.Tokenizer.Encode(text + " far", addSpecial: true));
        }
        await using (var parallel = await InferenceEngine.LoadAsync(path, Options(ranks)))
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
    public void QuantizedSlicesOffTheBlockGrid_AreRefused()
    {
        // Q8_0 attention output columns per rank at 4 ranks: 128 / 4 = 32, but the feed-forward down columns 256 / 4 = 64
        // are fine; heads 4 / 4 = 1 of width 32: whole blocks. At 8 ranks the heads do not divide.
        Assert.ThrowsAsync<NotSupportedException>(async () => await InferenceEngine.LoadAsync(ModelPath(4, 2, GgmlType.Q8_0), Options(8)));
    }
}
