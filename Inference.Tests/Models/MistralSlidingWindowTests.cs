using Inference.Kernels.Reference;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Models;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

/// <summary>
/// Hugging Face <c>mistral</c> checkpoints with a <c>sliding_window</c>: every layer attends over the window, in place
/// and through the engine's paged cache (which frees blocks wholly outside it), against the float64 reference.
/// </summary>
[NonParallelizable]
public class MistralSlidingWindowTests
{
    private string _dir = "";
    private string _hf = "";

    [OneTimeSetUp]
    public void Setup()
    {
        _dir = TestData.TempDir();
        _hf = Path.Combine(_dir, "mistral");
        HfTestCheckpoint.Write(_hf, new HfTestCheckpointOptions
        {
            ModelType = "mistral",
            ExtraConfig = new Dictionary<string, string> { ["sliding_window"] = "5" },
        });
    }

    [OneTimeTearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static readonly int[] Prompt = [1, 17, 300, 45, 99, 310, 511, 260, 7, 402, 388, 129, 64, 250, 333, 480, 21, 5, 290, 301, 44];

    [Test]
    public void Config_HasTheWindowInEveryLayer_AndMixtralNullHasNone()
    {
        using var checkpoint = HfCheckpoint.Open(_hf);
        Assert.That(checkpoint.Config.Architecture, Is.EqualTo("llama"));
        Assert.That(checkpoint.Config.SlidingWindows, Is.EqualTo(new[] { 5, 5 }));
        Assert.That(checkpoint.Config.KvRetention, Is.EqualTo(5));

        string mixtral = Path.Combine(_dir, "mixtral-no-window");
        HfTestCheckpoint.Write(mixtral, new HfTestCheckpointOptions
        {
            ModelType = "mixtral", Experts = 4,
            ExtraConfig = new Dictionary<string, string> { ["sliding_window"] = "null" },
        });
        using var moe = HfCheckpoint.Open(mixtral);
        Assert.That(moe.Config.SlidingWindows, Is.Null);
        Assert.That(moe.Config.IsMixtureOfExperts, Is.True);
    }

    [Test]
    public async Task LastLogits_InPlaceAndPaged_MatchTheReference_AndTheWindowMatters()
    {
        using var checkpoint = HfCheckpoint.Open(_hf);
        var config = checkpoint.Config;
        var expected = HfReferenceForward.LastLogits(checkpoint.Weights, config, Prompt);
        var unwindowed = HfReferenceForward.LastLogits(checkpoint.Weights, config with { SlidingWindows = null }, Prompt);

        var model = new LlamaModel(checkpoint);
        using var pool = new Inference.Backends.Cpu.WorkerPool(2);
        var kv = new ContiguousKvCache(config, 64);
        var batch = new ModelBatch();
        batch.Add(0, Prompt, 0, wantLogits: true);
        var inPlace = new float[config.VocabSize];
        Array.Fill(inPlace, float.NaN);
        model.Forward(batch, kv, inPlace, pool);

        await using var engine = await InferenceEngine.LoadAsync(_hf, new EngineOptions
        {
            Threads = 2, KvCache = new KvCacheOptions { DataType = KvCacheDataType.Float32, BlockSize = 4 },
        });
        var paged = await engine.GetLogitsAsync(Prompt);

        double inPlaceErr = ReferenceCompare.RelativeL2(inPlace, expected), pagedErr = ReferenceCompare.RelativeL2(paged, expected);
        double apart = ReferenceCompare.RelativeL2(unwindowed, expected);
        TestContext.Out.WriteLine($"mistral window 5, 21 tokens: in place vs reference {inPlaceErr:E2}, paged {pagedErr:E2}; with vs without the window {apart:E2}");
        Assert.That(inPlaceErr, Is.LessThan(1e-5));
        Assert.That(pagedErr, Is.LessThan(1e-5));
        Assert.That(apart, Is.GreaterThan(1e-3), "the window changes the logits");
    }

    [Test]
    public async Task GreedyPastTheWindow_EqualsTheReference()
    {
        // Decoding far past the window (blocks of 4 freed behind it): each token is the reference's argmax.
        using var checkpoint = HfCheckpoint.Open(_hf);
        await using var engine = await InferenceEngine.LoadAsync(_hf, new EngineOptions
        {
            Threads = 2, KvCache = new KvCacheOptions { DataType = KvCacheDataType.Float32, BlockSize = 4 },
        });
        int[] prompt = Prompt[..5];
        var ours = await engine.CompleteAsync(prompt, SamplingOptions.Greedy with { MaxTokens = 24, EndOfSequence = EndOfSequenceHandling.Ignore });
        var sequence = new List<int>(prompt);
        foreach (int token in ours.TokenIds)
        {
            var logits = HfReferenceForward.LastLogits(checkpoint.Weights, checkpoint.Config, [.. sequence]);
            Assert.That(token, Is.EqualTo(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits)), $"token {sequence.Count - prompt.Length}");
            sequence.Add(token);
        }
        Assert.That(ours.TokenIds, Has.Count.EqualTo(24));
    }
}
