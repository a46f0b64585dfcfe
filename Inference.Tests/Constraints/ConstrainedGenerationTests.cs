using Inference.Constraints;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Sampling;
using Inference.Tests.Support;
using static Inference.Tests.Constraints.ConstraintTestSupport;

namespace Inference.Tests.Constraints;

/// <summary>Constrained decoding through the engine: every output parses and validates, whatever the model's weights.</summary>
public class ConstrainedGenerationTests
{
    private static string? _randomModelDir;

    [OneTimeTearDown]
    public void DeleteRandomModel()
    {
        if (_randomModelDir is not null) Directory.Delete(_randomModelDir, true);
    }

    /// <summary>A random-weight model with deepseek's byte-level BPE vocabulary (about 100k tokens).</summary>
    private static string RandomByteLevelModel()
    {
        if (_randomModelDir is null)
        {
            _randomModelDir = TestData.TempDir();
            SyntheticModel.Write(Path.Combine(_randomModelDir, "random.gguf"), new SyntheticModelOptions
            {
                TokenizerDonorPath = TestData.Path("vocab/ggml-vocab-deepseek-llm.gguf"),
                Dimension = 32, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 64, LayerCount = 1, ContextLength = 1024, Seed = 11,
            });
        }
        return Path.Combine(_randomModelDir, "random.gguf");
    }

    [TestCase("stories260K")]
    [TestCase("random-byte-level")]
    public async Task EveryOutput_ValidatesAgainstItsSchema_ConcurrentRequests(string model)
    {
        string path = model == "stories260K" ? TestData.Stories260K : RandomByteLevelModel();
        await using var engine = await InferenceEngine.LoadAsync(path, new EngineOptions { Threads = 2, MaxNumSeqs = 8 });
        var alone = await engine.CompleteAsync("Once upon a time", SamplingOptions.Greedy with { MaxTokens = 20 });
        var runs = new List<(string Schema, Task<Completion> Result)>();
        // NOTE: the random-weight model's 100k-token vocabulary makes each step far dearer (the matcher's random walks
        // cover that vocabulary with every schema); one schema with every kind of value suffices here.
        var schemas = model == "stories260K" ? FiniteSchemas : FiniteSchemas[3..4];
        for (int seed = 0; seed < (model == "stories260K" ? 2 : 1); seed++)
            foreach (var schema in schemas)
            {
                var sampling = new SamplingOptions { Temperature = 1.0f, TopK = 40, TopP = 1, MinP = 0, Seed = (ulong)(seed + 1), MaxTokens = 400, Constraint = new JsonSchemaConstraint(schema) };
                runs.Add((schema, engine.CompleteAsync("Once upon a time", sampling)));
            }
        // An unconstrained request in the same batches is not affected by the others' masks.
        var free = engine.CompleteAsync("Once upon a time", SamplingOptions.Greedy with { MaxTokens = 20 });
        foreach (var (schema, result) in runs)
        {
            var c = await result;
            Assert.That(c.FinishReason, Is.EqualTo(FinishReason.EndOfSequence), () => $"{schema}: {c.Text}");
            AssertValid(schema, c.Text);
        }
        Assert.That((await free).TokenIds, Is.EqualTo(alone.TokenIds));
    }

    [Test]
    public async Task Greedy_UnderPreemptionAndPrefixHits_SameAsAlone_AndCancellationFreesBlocks()
    {
        // Constraints of every kind over prompts that share a prefix, on a pool small enough to preempt.
        Constraint[] constraints =
        [
            new JsonSchemaConstraint(FiniteSchemas[0]), new JsonSchemaConstraint(FiniteSchemas[5]), JsonObjectConstraint.Instance,
            new RegexConstraint("[a-z]+( [a-z]+){3,8}\\."), new ChoiceConstraint(["the cat sat", "a dog ran far away"]),
            new GrammarConstraint("root ::= \"Tim\" (\" \" [a-z]+)+ \".\""),
        ];
        string[] prompts = ["Once upon a time, there was a little girl named Lily.", "Once upon a time, there was a little boy named Tim.", "Once upon a time, there was a big dog."];
        var sampling = SamplingOptions.Greedy with { MaxTokens = 160 };
        var options = new EngineOptions
        {
            Threads = 2, MaxNumSeqs = 12, MaxNumBatchedTokens = 64, ContextLength = 256, Device = Device.Cpu,
            KvCache = new KvCacheOptions { BlockSize = 8, PoolBytes = 40 * KvCacheStorage.GetBlockByteCount(5, 8, 4, 8, KvCacheDataType.Float16) },
        };
        var expected = new List<Completion>();
        await using (var plain = await InferenceEngine.LoadAsync(TestData.Stories260K, options with { KvCache = options.KvCache with { PoolBytes = null } }))
            foreach (var c in constraints)
                foreach (var p in prompts) expected.Add(await plain.CompleteAsync(p, sampling with { Constraint = c }));

        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, options);
        using var cts = new CancellationTokenSource();
        var cancelled = engine.GenerateAsync(prompts[0], new SamplingOptions { Seed = 3, MaxTokens = 200, Constraint = new RegexConstraint("[a-z ]+") }, cts.Token);
        var cancelledRun = Task.Run(async () =>
        {
            int n = 0;
            await foreach (var _ in cancelled)
                if (++n == 5) cts.Cancel();
        });
        var results = await Task.WhenAll(Enumerable.Range(0, 2 * expected.Count).Select(i =>
            engine.CompleteAsync(prompts[i % prompts.Length], sampling with { Constraint = constraints[i % expected.Count / prompts.Length] })));
        Assert.That(async () => await cancelledRun, Throws.InstanceOf<OperationCanceledException>());
        for (int i = 0; i < results.Length; i++)
        {
            var want = expected[i % expected.Count];
            Assert.That(results[i].TokenIds, Is.EqualTo(want.TokenIds), $"request {i}");
            Assert.That(results[i].FinishReason, Is.EqualTo(want.FinishReason));
        }
        foreach (var i in new[] { 0, 1 })
        {
            var c = results[i * prompts.Length];
            Assert.That(c.FinishReason, Is.EqualTo(FinishReason.EndOfSequence), c.Text);
            AssertValid(FiniteSchemas[i == 0 ? 0 : 5], c.Text);
        }

        var stats = await engine.GetStatsAsync();
        Assert.That(stats.PreemptionCount, Is.GreaterThan(0), "the pool was small enough to force preemption");
        Assert.That(stats.KvCache.PrefixHitTokenCount, Is.GreaterThan(0), "prompts hit the prefix cache");
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "every KV block is free again, the cancelled request's too");
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
        await engine.Loop.InvokeAsync(l => { l.KvCache.CheckInvariants(); return 0; });
    }

    [Test]
    public async Task Cancellation_OfAConstrainedRequest_FreesItsBlocks()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        using var cts = new CancellationTokenSource();
        var stream = engine.GenerateAsync("Once upon a time", new SamplingOptions { Seed = 1, MaxTokens = 500, Constraint = new RegexConstraint("[a-z ]+") }, cts.Token);
        int n = 0;
        Assert.That(async () =>
        {
            await foreach (var _ in stream)
                if (++n == 3) cts.Cancel();
        }, Throws.InstanceOf<OperationCanceledException>());
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.EqualTo(0));
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero);
    }
}
