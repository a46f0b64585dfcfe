using Inference.Constraints;
using Inference.Engine;
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
    }
}
