using System.Text.Json.Nodes;
using Inference.Engine;
using Inference.Loading;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

/// <summary>
/// gemma3 image-text checkpoints as transformers writes them (<c>Gemma3ForConditionalGeneration</c>: <c>text_config</c>
/// with only non-default values, text tensors under <c>language_model.</c>, a vision tower and projector) run their text
/// model: the same configuration and logits as the plain gemma3 folder with the same text weights, from the folder and
/// from its GGUF conversion; the vision tensors are ignored and said so.
/// </summary>
[NonParallelizable]
public class Gemma3MultimodalCheckpointTests
{
    private string _dir = "";

    private static HfTestCheckpointOptions Options => new()
    {
        ModelType = "gemma3", HeadDim = 32, SlidingWindow = 4, Layers = 6, TieWordEmbeddings = true,
        ExtraConfig = new Dictionary<string, string>
        {
            ["hidden_act"] = "\"gelu_pytorch_tanh\"", ["hidden_activation"] = "\"gelu_pytorch_tanh\"", ["sliding_window"] = "4",
            ["sliding_window_pattern"] = "6", ["query_pre_attn_scalar"] = "32", ["rope_local_base_freq"] = "10000.0", ["rope_theta"] = "1000000.0",
            ["final_logit_softcapping"] = "null", ["attn_logit_softcapping"] = "null",
        },
    };

    [OneTimeSetUp]
    public void Setup()
    {
        _dir = TestData.TempDir();
        HfTestCheckpoint.Write(Path.Combine(_dir, "text"), Options);
        HfTestCheckpoint.Write(Path.Combine(_dir, "mm-old"), Options with { Multimodal = true });
        HfTestCheckpoint.Write(Path.Combine(_dir, "mm-new"), Options with { Multimodal = true, MultimodalNewNames = true });
        using var plain = HfCheckpoint.Open(Path.Combine(_dir, "text"));
        plain.ConvertToGguf(Path.Combine(_dir, "text.gguf"));
    }

    [OneTimeTearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static async Task<float[]> Logits(string path, int[] prompt)
    {
        await using var engine = await InferenceEngine.LoadAsync(path, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        return await engine.GetLogitsAsync(prompt);
    }

    [TestCase("mm-old")]
    [TestCase("mm-new")]
    public async Task TextModel_MatchesThePlainGemma3Folder(string folder)
    {
        string path = Path.Combine(_dir, folder);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(path, "config.json")))!.AsObject();
        Assert.That(config["text_config"]!.AsObject().ContainsKey("rope_theta"), Is.False, "the base comes from Gemma3TextConfig's default");
        Assert.That(config.ContainsKey("num_hidden_layers"), Is.False);

        using (var plain = HfCheckpoint.Open(Path.Combine(_dir, "text")))
        using (var multimodal = HfCheckpoint.Open(path))
        {
            Assert.That(multimodal.Config with { SlidingWindows = null }, Is.EqualTo(plain.Config with { SlidingWindows = null }));
            Assert.That(multimodal.Config.SlidingWindows, Is.EqualTo(plain.Config.SlidingWindows));
            Assert.That(multimodal.TieWordEmbeddings && multimodal.TorchDType == "float32", Is.True, "top-level keys apply to the text model");
            Assert.That(plain.Notice, Is.Null);
            Assert.That(multimodal.Notice, Does.Contain("Gemma3ForConditionalGeneration").And.Contain("4 tensors"));
            TestContext.Out.WriteLine(multimodal.Notice);
            multimodal.ConvertToGguf(Path.Combine(_dir, folder + ".gguf"));
        }

        int[] prompt = [1, 403, 407, 261, 378, 17, 300, 45, 99];
        var expected = await Logits(Path.Combine(_dir, "text"), prompt);
        Assert.That(await Logits(path, prompt), Is.EqualTo(expected), "the folder's text model");
        Assert.That(await Logits(Path.Combine(_dir, folder + ".gguf"), prompt), Is.EqualTo(await Logits(Path.Combine(_dir, "text.gguf"), prompt)),
            "its GGUF conversion against the plain folder's");
    }

    [Test]
    public async Task Engine_SaysTheVisionTowerIsIgnored()
    {
        await using var engine = await InferenceEngine.LoadAsync(Path.Combine(_dir, "mm-new"), new EngineOptions { Device = Device.Cpu, Threads = 1 });
        Assert.That(engine.ModelNotice, Does.Contain("vision tower"));
        Assert.That(engine.Config.Architecture, Is.EqualTo("gemma3"));
    }

    /// <summary>A gemma3 GGUF that also holds vision tensors (<c>v.*</c>, <c>mm.*</c>, as single-file conversions do) runs its text model.</summary>
    [Test]
    public async Task GgufWithVisionTensors_RunsItsTextModel()
    {
        string text = Path.Combine(_dir, "text.gguf"), withVision = Path.Combine(_dir, "with-vision.gguf");
        using (var source = GgufFile.Open(text))
        using (var w = GgufWriter.Create(withVision))
        {
            foreach (var key in source.MetadataKeys)
                if (key != "general.alignment") w.AddValue(key, source.Metadata[key]);
            (string Name, long[] Dims)[] vision = [("v.patch_embd.weight", [4, 4, 3, 32]), ("v.post_ln.weight", [32]), ("mm.input_projection.weight", [128, 32])];
            foreach (var t in source.Tensors) w.AddTensorInfo(t.Name, t.Dimensions, t.Type);
            foreach (var (name, dims) in vision) w.AddTensorInfo(name, dims, GgmlType.F32);
            w.WriteHeader();
            foreach (var t in source.Tensors) w.WriteTensorData(t.Name, source.GetTensorBytes(t));
            foreach (var (name, dims) in vision) w.WriteTensorData(name, RandomValues((int)dims.Aggregate(1L, (a, b) => a * b)));
            w.Complete();
        }
        int[] prompt = [1, 403, 407, 261, 378];
        await using var engine = await InferenceEngine.LoadAsync(withVision, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        Assert.That(engine.ModelNotice, Does.Contain("3 tensors").And.Contain("vision tower"));
        Assert.That(await engine.GetLogitsAsync(prompt), Is.EqualTo(await Logits(text, prompt)));
    }

    private static float[] RandomValues(int count) => Inference.Tests.Kernels.PagedAttentionCase.Random(new Random(count), count);

    [Test]
    public void OtherMultimodalClasses_AreRefusedWithTheirName()
    {
        string path = Path.Combine(_dir, "llava");
        HfTestCheckpoint.Write(path, Options with { Multimodal = true });
        string file = Path.Combine(path, "config.json");
        var config = JsonNode.Parse(File.ReadAllText(file))!.AsObject();
        config["architectures"] = new JsonArray("LlavaForConditionalGeneration");
        config["model_type"] = "llava";
        File.WriteAllText(file, config.ToJsonString());
        var e = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(path).Dispose())!;
        Assert.That(e.Message, Does.Contain("LlavaForConditionalGeneration").And.Contain("Gemma3ForConditionalGeneration"));
    }
}
