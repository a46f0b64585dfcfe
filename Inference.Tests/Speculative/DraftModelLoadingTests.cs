using Inference.Engine;
using Inference.Loading;
using Inference.Models;
using Inference.Speculative;
using Inference.Tests.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Speculative;

/// <summary>
/// A draft model loads through the engine's loader (<see cref="LoadedModel"/>): the same configuration for the engine's
/// context window (a Phi-3 draft picks its LongRoPE factors as the model does) and the same refusals.
/// </summary>
public class DraftModelLoadingTests
{
    private static string _dir = "";

    private static string Checkpoint => Path.Combine(_dir, "phi3");
    private static string Converted => Path.Combine(_dir, "phi3.gguf");

    [OneTimeSetUp]
    public void Write()
    {
        _dir = TestData.TempDir();
        // LongRoPE from a 512-token original context: short factors within it, long ones beyond.
        HfTestCheckpoint.Write(Checkpoint, new HfTestCheckpointOptions
        {
            ModelType = "phi3", Hidden = 64, Heads = 4, KvHeads = 4, Intermediate = 128,
            ExtraConfig = new Dictionary<string, string>
            {
                ["original_max_position_embeddings"] = "512",
                ["rope_scaling"] = """{"type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 3.1, 4.0, 5.5], "long_factor": [1.0, 1.5, 2.5, 4.0, 7.0, 11.0, 19.0, 30.0]}""",
            },
        });
        using var checkpoint = HfCheckpoint.Open(Checkpoint);
        checkpoint.ConvertToGguf(Converted);
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    [TestCase(256, false)]
    [TestCase(1024, true)]
    public async Task Draft_HasTheModelsConfiguration_ForTheEnginesContextWindow(int contextLength, bool longFactors)
    {
        foreach (var (target, draft) in new[] { (Checkpoint, Checkpoint), (Checkpoint, Converted), (Converted, Checkpoint), (Converted, Converted) })
        {
            await using var engine = await InferenceEngine.LoadAsync(target, new EngineOptions
            {
                Device = Device.Cpu, Threads = 1, ContextLength = contextLength, Speculative = SpeculativeOptions.Draft(draft, 2),
            });
            var draftConfig = ((DraftModelProposer)engine.Loop.Proposer!).Draft.Model.Config;
            Assert.That(engine.Config.UseLongRopeFactors, Is.EqualTo(longFactors), target);
            Assert.That(draftConfig.UseLongRopeFactors, Is.EqualTo(longFactors), $"{draft} as the draft of {target}");
            // The same weights by either path: the same configuration (up to the GGUF's stored RoPE pairing).
            Assert.That(draftConfig with { SlidingWindows = null, RopeLayout = engine.Config.RopeLayout },
                Is.EqualTo(engine.Config with { SlidingWindows = null }), $"{draft} as the draft of {target}");
            using var loaded = LoadedModel.Open(draft, contextLength);
            Assert.That(loaded.Config, Is.EqualTo(draftConfig));
        }
    }

    [Test]
    public async Task DraftFolderWithoutConfigJson_IsRefusedAsTheEngineRefusesIt()
    {
        string folder = Path.Combine(_dir, "no-config");
        Directory.CreateDirectory(folder);
        foreach (var f in Directory.GetFiles(Checkpoint))
            if (Path.GetFileName(f) != HfCheckpoint.ConfigFileName) File.Copy(f, Path.Combine(folder, Path.GetFileName(f)), overwrite: true);
        var asModel = Assert.ThrowsAsync<ModelFormatException>(async () =>
        {
            await using var _ = await InferenceEngine.LoadAsync(folder, new EngineOptions { Device = Device.Cpu });
        });
        var asDraft = Assert.ThrowsAsync<ModelFormatException>(async () =>
        {
            await using var _ = await InferenceEngine.LoadAsync(Checkpoint, new EngineOptions { Device = Device.Cpu, Speculative = SpeculativeOptions.Draft(folder) });
        });
        Assert.That(asModel!.Message, Does.Contain("without config.json"));
        Assert.That(asDraft!.Message, Is.EqualTo(asModel.Message));
    }
}
