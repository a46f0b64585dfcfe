using Inference.Backends.Cpu;
using Inference.Kernels.Reference;
using Inference.Loading;
using Inference.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

/// <summary>
/// Long-context RoPE scaling from Hugging Face configurations and GGUF: YaRN against llama.cpp on the converted file;
/// NTK-aware and dynamic NTK (which llama.cpp has no type for) against llama.cpp running the unscaled checkpoint with the
/// base the scaling gives.
/// </summary>
[NonParallelizable]
public class RopeScalingTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = TestData.TempDir();

    [OneTimeTearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static readonly int[] Prompt =
        [1, 17, 300, 45, 99, 310, 511, 260, 7, 402, 388, 129, 64, 250, 333, 480, 21, 5, 290, 301, 44, 403, 407, 261, 378, 12, 90, 150, 222, 91, 66, 470, 18, 3, 200, 305, 411, 120, 77, 99];

    private static float[] LastLogits(LlamaModel model, int[] prompt)
    {
        using var pool = new WorkerPool(2);
        var kv = new ContiguousKvCache(model.Config, prompt.Length);
        var batch = new ModelBatch();
        batch.Add(0, prompt, 0, wantLogits: true);
        var logits = new float[model.Config.VocabSize];
        Array.Fill(logits, float.NaN);
        model.Forward(batch, kv, logits, pool);
        return logits;
    }

    private string Checkpoint(string name, Dictionary<string, string> extra)
    {
        string dir = Path.Combine(_dir, name);
        HfTestCheckpoint.Write(dir, new HfTestCheckpointOptions { ExtraConfig = extra });
        return dir;
    }

    [TestCase("""{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}""")]
    [TestCase("""{"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256, "beta_fast": 16.0, "beta_slow": 2.0}""")]
    public void Yarn_FromHfAndGguf_MatchesLlamaCpp(string ropeScaling)
    {
        string hf = Checkpoint("yarn" + ropeScaling.GetHashCode(), new() { ["rope_scaling"] = ropeScaling });
        string gguf = hf + ".gguf";
        using var checkpoint = HfCheckpoint.Open(hf);
        checkpoint.ConvertToGguf(gguf);
        Assert.That(checkpoint.Config.RopeScaling, Is.EqualTo(RopeScaling.Yarn));
        using var file = GgufFile.Open(gguf);
        var fromGguf = ModelConfig.FromGguf(file);
        Assert.That((fromGguf.RopeScaling, fromGguf.RopeScalingFactor, fromGguf.RopeOriginalContextLength, fromGguf.RopeAttentionFactor, fromGguf.YarnBetaFast, fromGguf.YarnBetaSlow),
            Is.EqualTo((checkpoint.Config.RopeScaling, checkpoint.Config.RopeScalingFactor, checkpoint.Config.RopeOriginalContextLength, checkpoint.Config.RopeAttentionFactor, checkpoint.Config.YarnBetaFast, checkpoint.Config.YarnBetaSlow)));
        Assert.That(fromGguf.RopeAttentionFactor, Is.EqualTo(ModelConfig.YarnAttentionFactor(fromGguf.RopeScalingFactor)));

        var ours = LastLogits(new LlamaModel(file, fromGguf), Prompt);
        var oursHf = LastLogits(new LlamaModel(checkpoint), Prompt);
        using var reference = LlamaCpp.Load(gguf);
        // NOTE: this llama.cpp reads YaRN's type, factor and original context from the file but β_fast/β_slow from its
        // context parameters (defaults 32 and 1), so they are passed as the file states them.
        reference.ConfigureContext = p =>
        {
            p.YarnBetaFast = fromGguf.YarnBetaFast;
            p.YarnBetaSlow = fromGguf.YarnBetaSlow;
        };
        var llamaCpp = reference.EvaluateLastLogits(Prompt);
        var unscaled = LastLogits(new LlamaModel(file, fromGguf with { RopeScaling = RopeScaling.None, RopeAttentionFactor = 1f }), Prompt);
        double vsLlamaCpp = ReferenceCompare.RelativeL2(ours, llamaCpp), hfVsGguf = ReferenceCompare.RelativeL2(oursHf, ours), scalingMatters = ReferenceCompare.RelativeL2(unscaled, llamaCpp);
        TestContext.Out.WriteLine($"YaRN: engine vs llama.cpp {vsLlamaCpp:E2}, HF folder vs GGUF {hfVsGguf:E2}, unscaled vs llama.cpp {scalingMatters:E2}");
        Assert.That(vsLlamaCpp, Is.LessThan(1e-5), "f32 on both sides: measured about 5e-7");
        Assert.That(hfVsGguf, Is.LessThan(1e-4));
        Assert.That(scalingMatters, Is.GreaterThan(20 * vsLlamaCpp), "the scaling changes the logits far more than the engines differ");
    }

    [Test]
    public void YarnRamp_FollowsTheCorrectionDimensions()
    {
        // d = 16, base 10⁴, original 512: correction dims of β = 32 and 1 are 0.81 and 3.82 → low 0, high 4.
        var c = new ModelConfig
        {
            Architecture = "llama", Dim = 128, LayerCount = 1, HeadCount = 8, KvHeadCount = 8, HeadDim = 16, FfnDim = 1, VocabSize = 1,
            ContextLength = 2048, RmsEps = 1e-5f, RopeBase = 10000, RopeDim = 16, RopeLayout = RopeLayout.Neox,
            RopeScaling = RopeScaling.Yarn, RopeScalingFactor = 4, RopeOriginalContextLength = 512,
        };
        Assert.That(Enumerable.Range(0, 8).Select(c.YarnRamp), Is.EqualTo(new[] { 1.0, 0.75, 0.5, 0.25, 0, 0, 0, 0 }).Within(1e-12));
    }

    [TestCase("ntk", 2048)]
    [TestCase("dynamic", 4096)]
    public void NtkScaling_MatchesLlamaCppWithTheScaledBase(string type, int window)
    {
        const double factor = 4, theta = 10000;
        string hf = Checkpoint(type, new() { ["rope_scaling"] = $$"""{"rope_type": "{{type}}", "factor": {{factor}}}""" });
        using var checkpoint = HfCheckpoint.Open(hf);
        var config = checkpoint.Config.ForContextWindow(window);
        // HF: NTK-aware base · factor^(d/(d−2)); dynamic base · (factor · n / original − (factor − 1))^(d/(d−2)) past the original.
        double d = config.RopeDim, alpha = type == "ntk" ? factor : factor * window / 2048.0 - (factor - 1);
        double scaledBase = theta * Math.Pow(alpha, d / (d - 2));
        Assert.That(config.ScaledRopeBase(), Is.EqualTo(scaledBase).Within(1e-9 * scaledBase));
        if (type == "dynamic")
            Assert.That(checkpoint.Config.ForContextWindow(2048).ScaledRopeBase(), Is.EqualTo(theta), "no scaling within the original context");

        // llama.cpp has no NTK type: it runs the same weights, unscaled, with the scaled base.
        string plainDir = Checkpoint(type + "-base", new() { ["rope_theta"] = scaledBase.ToString("R", System.Globalization.CultureInfo.InvariantCulture) });
        string gguf = plainDir + ".gguf";
        using (var plain = HfCheckpoint.Open(plainDir)) plain.ConvertToGguf(gguf);
        using var reference = LlamaCpp.Load(gguf);
        var llamaCpp = reference.EvaluateLastLogits(Prompt);
        var ours = LastLogits(new LlamaModel(checkpoint.Weights, config), Prompt);
        var unscaled = LastLogits(new LlamaModel(checkpoint.Weights, checkpoint.Config with { RopeScaling = RopeScaling.None }), Prompt);
        double vsLlamaCpp = ReferenceCompare.RelativeL2(ours, llamaCpp), scalingMatters = ReferenceCompare.RelativeL2(unscaled, llamaCpp);
        TestContext.Out.WriteLine($"{type}: engine (HF folder) vs llama.cpp with base {scaledBase:G6}: {vsLlamaCpp:E2}; unscaled vs llama.cpp {scalingMatters:E2}");
        Assert.That(vsLlamaCpp, Is.LessThan(1e-5), "f32 on both sides: measured about 5e-7");
        Assert.That(scalingMatters, Is.GreaterThan(20 * vsLlamaCpp));
    }

    [TestCase("""{"rope_type": "yarn"}""", "factor")]
    [TestCase("""{"rope_type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 2.0}""", "beta_fast")]
    [TestCase("""{"rope_type": "dynamic"}""", "factor")]
    [TestCase("""{"rope_type": "su2", "factor": 2.0}""", "su2")]
    public void BadRopeScaling_IsAModelFormatError(string ropeScaling, string mention)
    {
        string hf = Checkpoint("bad" + ropeScaling.GetHashCode(), new() { ["rope_scaling"] = ropeScaling });
        var e = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(hf).Dispose())!;
        Assert.That(e.Message, Does.Contain(mention));
    }
}
