using Inference.Kernels.Reference;
using Inference.Loading;
using Inference.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

/// <summary>
/// Qwen MoE checkpoints with dense layers (transformers' <c>mlp_only_layers</c> and <c>decoder_sparse_step</c>): the
/// folder and its GGUF conversion (dense layers known by their missing router) load, with the same dense layers, and
/// their logits match the float64 reference.
/// </summary>
[NonParallelizable]
public class QwenMoeDenseLayerTests
{
    private string _dir = "";

    [SetUp]
    public void Setup() => _dir = TestData.TempDir();

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [TestCase("qwen2moe", new[] { 1 }, 1, new[] { 1 })]
    [TestCase("qwen3moe", new int[0], 2, new[] { 0, 2 })]
    [TestCase("qwen3moe", new[] { 1 }, 3, new[] { 0, 1 })]
    public void DenseLayers_LoadAndMatchTheReference(string modelType, int[] mlpOnly, int sparseStep, int[] expectedDense)
    {
        string hf = Path.Combine(_dir, "hf"), ggufPath = Path.Combine(_dir, "converted.gguf");
        HfTestCheckpoint.Write(hf, new HfTestCheckpointOptions
        {
            ModelType = modelType, Layers = 3, Experts = 4, ExpertIntermediate = 64, SharedExpertIntermediate = 192,
            HeadDim = modelType == "qwen3moe" ? 32 : 0, MlpOnlyLayers = mlpOnly, DecoderSparseStep = sparseStep,
        });
        int[] prompt = [1, 17, 300, 45, 99, 310, 511, 260, 7];
        using var checkpoint = HfCheckpoint.Open(hf);
        Assert.That(checkpoint.Config.DenseLayers, Is.EqualTo(expectedDense));
        var reference = HfReferenceForward.LastLogits(checkpoint.Weights, checkpoint.Config, prompt);
        double folder = ReferenceCompare.RelativeL2(HfCheckpointDifferentialTests.EngineLastLogits(new LlamaModel(checkpoint), prompt), reference);

        checkpoint.ConvertToGguf(ggufPath);
        using var gguf = GgufFile.Open(ggufPath);
        Assert.That(gguf.FindTensor("blk.1.ffn_gate_inp.weight") is null, Is.EqualTo(expectedDense.Contains(1)));
        var config = ModelConfig.FromGguf(gguf);
        Assert.That(config.DenseLayers, Is.EqualTo(expectedDense), "dense layers from the tensors the file stores");
        double converted = ReferenceCompare.RelativeL2(HfCheckpointDifferentialTests.EngineLastLogits(new LlamaModel(gguf, config), prompt), reference);
        TestContext.Out.WriteLine($"{modelType} dense {string.Join(",", expectedDense)}: folder {folder:E2}, GGUF {converted:E2} against the float64 reference");
        Assert.That(folder, Is.LessThan(1e-5));
        Assert.That(converted, Is.LessThan(1e-5));
    }

    [Test]
    public void BadMlpOnlyLayers_AreRefusedWithAOneLineMessage()
    {
        string hf = Path.Combine(_dir, "bad");
        HfTestCheckpoint.Write(hf, new HfTestCheckpointOptions { ModelType = "qwen2moe", Experts = 4, MlpOnlyLayers = [1] });
        string file = Path.Combine(hf, "config.json");
        File.WriteAllText(file, File.ReadAllText(file).Replace("\"mlp_only_layers\":[1]", "\"mlp_only_layers\":[7]", StringComparison.Ordinal));
        var e = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(hf).Dispose())!;
        Assert.That(e.Message, Does.Contain("mlp_only_layers"));
    }
}
