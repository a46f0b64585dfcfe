using System.Text.Json.Nodes;
using Inference.Loading;
using Inference.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

public class HfCheckpointTests
{
    private string _dir = "";

    [SetUp]
    public void Setup()
    {
        _dir = Path.Combine(TestData.TempDir(), "ckpt");
        HfTestCheckpoint.Write(_dir, new HfTestCheckpointOptions { Layers = 1, Hidden = 64, Heads = 4, KvHeads = 2, Intermediate = 96 });
    }

    [TearDown]
    public void TearDown() => Directory.Delete(Path.GetDirectoryName(_dir)!, recursive: true);

    private void EditConfig(Action<JsonObject> edit, string file = "config.json")
    {
        string path = Path.Combine(_dir, file);
        var node = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(node);
        File.WriteAllText(path, node.ToJsonString());
    }

    private ModelFormatException OpenFails()
    {
        var ex = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(_dir).Dispose())!;
        TestContext.Out.WriteLine(ex.Message);
        return ex;
    }

    [Test]
    public void Open_ReadsConfigGenerationAndTokenizerSettings()
    {
        EditConfig(c => c["eos_token_id"] = 7, "config.json");
        EditConfig(c => c["eos_token_id"] = new JsonArray(2, 5), "generation_config.json");
        using var ckpt = HfCheckpoint.Open(_dir);
        var c = ckpt.Config;
        Assert.That((c.Architecture, c.Dim, c.LayerCount, c.HeadCount, c.KvHeadCount, c.HeadDim, c.FfnDim, c.VocabSize, c.ContextLength),
            Is.EqualTo(("llama", 64, 1, 4, 2, 16, 96, 512, 2048)));
        Assert.That((c.RmsEps, c.RopeBase, c.RopeDim, c.RopeLayout, c.RopeScaling, c.HasAttentionBias),
            Is.EqualTo((1e-5f, 10000f, 16, RopeLayout.Neox, RopeScaling.None, false)));
        Assert.That(ckpt.TorchDType, Is.EqualTo("float32"));
        Assert.That(ckpt.EosTokenIds, Is.EqualTo(new[] { 2, 5 }), "generation_config.json wins over config.json");
        Assert.That(ckpt.TokenizerConfig!.BosToken, Is.EqualTo("<s>"));
        Assert.That(ckpt.FindTensor("model.layers.0.self_attn.k_proj.weight")!.Shape, Is.EqualTo(new long[] { 32, 64 }));
        Assert.That(ckpt.Weights.Contains("blk.0.attn_k.weight"), Is.True);
        Assert.That(ckpt.Weights.Contains("blk.1.attn_k.weight"), Is.False);
        var k = ckpt.Weights.GetMatrix("blk.0.attn_k.weight", 32, 64);
        Assert.That((k.Type, k.Rows, k.Cols, k.RowBytes), Is.EqualTo((GgmlType.F32, 32, 64, 256L)));
    }

    [Test]
    public unsafe void Weights_AreBoundInPlace_OverTheMappedShard()
    {
        using var ckpt = HfCheckpoint.Open(_dir);
        var info = ckpt.FindTensor("model.layers.0.mlp.down_proj.weight")!;
        var m = ckpt.Weights.GetMatrix("blk.0.ffn_down.weight", 64, 96);
        fixed (byte* p = ckpt.Shards[0].GetTensorBytes(info))
            Assert.That((IntPtr)m.Data, Is.EqualTo((IntPtr)p), "no copy");
        var expected = new float[96];
        Inference.Models.WeightConversion.ToFloats(GgmlType.F32, ckpt.Shards[0].GetTensorBytes(info).Slice(5 * 96 * 4, 96 * 4), expected);
        var row = new float[96];
        Inference.Models.WeightConversion.ToFloats(m.Type, m.Row(5), row);
        Assert.That(row, Is.EqualTo(expected));
        Assert.That(row.Distinct().Count(), Is.GreaterThan(90), "random weights, not zeros");
    }

    [Test]
    public void TensorNames_MapBothWays()
    {
        foreach (var (hf, gguf) in new[]
        {
            ("model.embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight"), ("model.norm.weight", "output_norm.weight"),
            ("model.layers.12.self_attn.q_proj.weight", "blk.12.attn_q.weight"), ("model.layers.0.self_attn.v_proj.bias", "blk.0.attn_v.bias"),
            ("model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"), ("model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"),
            ("model.layers.7.mlp.down_proj.weight", "blk.7.ffn_down.weight"), ("model.layers.7.input_layernorm.weight", "blk.7.attn_norm.weight"),
        })
        {
            Assert.That(HfCheckpointTensorNames.ToGguf(hf), Is.EqualTo(gguf));
            Assert.That(HfCheckpointTensorNames.ToHf(gguf), Is.EqualTo(hf));
        }
        Assert.That(HfCheckpointTensorNames.ToGguf("model.layers.01.mlp.up_proj.weight"), Is.Null);
        Assert.That(HfCheckpointTensorNames.ToGguf("model.layers.x.mlp.up_proj.weight"), Is.Null);
        Assert.That(HfCheckpointTensorNames.ToGguf("model.rotary_emb.inv_freq"), Is.Null);
        Assert.That(HfCheckpointTensorNames.ToHf("rope_freqs.weight"), Is.Null);
    }

    [Test]
    public void LinearRopeScaling_IsCarriedIntoTheConvertedGguf()
    {
        EditConfig(c => c["rope_scaling"] = new JsonObject { ["type"] = "linear", ["factor"] = 4.0 });
        using var ckpt = HfCheckpoint.Open(_dir);
        Assert.That((ckpt.Config.RopeScaling, ckpt.Config.RopeScalingFactor), Is.EqualTo((RopeScaling.Linear, 4f)));
        string gguf = Path.Combine(_dir, "..", "m.gguf");
        ckpt.ConvertToGguf(gguf);
        using var file = GgufFile.Open(gguf);
        Assert.That(ModelConfig.FromGguf(file), Is.EqualTo(ckpt.Config with { RopeLayout = RopeLayout.Normal }));
    }

    [Test]
    public void Llama3RopeScaling_GivesLlamaCppFrequencyFactors()
    {
        // Llama 3.1 8B's settings.
        EditConfig(c =>
        {
            c["rope_theta"] = 500000.0;
            c["rope_scaling"] = new JsonObject
            {
                ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
                ["original_max_position_embeddings"] = 8192,
            };
        });
        using var ckpt = HfCheckpoint.Open(_dir);
        Assert.That(ckpt.Config.RopeScaling, Is.EqualTo(RopeScaling.Llama3));
        var f = ckpt.Weights.GetVector("rope_freqs.weight", 8)!;
        // headDim 16: wavelengths λi = 2π·500000^(i/8) = 6.3, 32, 167, 861, 4443, 22915, …; those below 8192/4 keep 1,
        // those above 8192 get the full factor 8, the one in between blends: 1 / ((1 - s)/8 + s), s = (8192/λ - 1)/(4 - 1).
        double lambda4 = 2 * Math.PI * Math.Pow(500000, 4.0 / 8);
        double s = (8192 / lambda4 - 1) / 3;
        for (int i = 0; i < 4; i++) Assert.That(f[i], Is.EqualTo(1f), $"factor {i}");
        Assert.That(f[4], Is.EqualTo((float)(1 / ((1 - s) / 8 + s))).Within(1e-5));
        Assert.That(f[4], Is.InRange(1.01f, 7.99f));
        for (int i = 5; i < 8; i++) Assert.That(f[i], Is.EqualTo(8f), $"factor {i}");
        string gguf = Path.Combine(_dir, "..", "m.gguf");
        ckpt.ConvertToGguf(gguf);
        using var file = GgufFile.Open(gguf);
        Assert.That(ModelConfig.FromGguf(file).RopeScaling, Is.EqualTo(RopeScaling.Llama3));
        Assert.That(new GgufWeightSource(file).GetVector("rope_freqs.weight", 8), Is.EqualTo(f));
    }

    [Test]
    public void TiedEmbeddings_HaveNoOutputMatrix()
    {
        string tied = Path.Combine(Path.GetDirectoryName(_dir)!, "tied");
        HfTestCheckpoint.Write(tied, new HfTestCheckpointOptions { Layers = 1, Hidden = 64, Heads = 4, KvHeads = 4, Intermediate = 96, TieWordEmbeddings = true });
        using var ckpt = HfCheckpoint.Open(tied);
        Assert.That(ckpt.TieWordEmbeddings, Is.True);
        Assert.That(ckpt.Weights.Contains("output.weight"), Is.False);
    }

    [TestCase("model_type", "\"falcon\"", "unsupported model_type 'falcon'")]
    [TestCase("hidden_act", "\"gelu\"", "unsupported hidden_act")]
    [TestCase("use_sliding_window", "true", "sliding-window")]
    [TestCase("num_key_value_heads", "3", "not a multiple")]
    [TestCase("num_key_value_heads", "8", "outside")]
    [TestCase("hidden_size", "\"64\"", "expected an integer")]
    [TestCase("hidden_size", "65", "not a multiple")]
    [TestCase("rms_norm_eps", "0", "must be positive")]
    [TestCase("rope_scaling", """{"rope_type":"xpos","factor":4.0}""", "unsupported rope_scaling type 'xpos'")]
    [TestCase("rope_scaling", """{"type":"linear"}""", "'rope_scaling.factor' is missing")]
    [TestCase("rope_scaling", """{"rope_type":"llama3","factor":8.0,"low_freq_factor":4.0,"high_freq_factor":1.0}""", "llama3")]
    [TestCase("intermediate_size", "100", "has shape [96, 64], expected [100, 64]")]
    [TestCase("vocab_size", "600", "expected [vocab_size 600")]
    [TestCase("num_hidden_layers", "2", "model.layers.1.input_layernorm.weight")]
    public void BadConfig_Refused(string key, string rawValue, string reason)
    {
        EditConfig(c => c[key] = JsonNode.Parse(rawValue));
        Assert.That(OpenFails().Reason, Does.Contain(reason));
    }

    [Test]
    public void MissingRequiredKey_Refused()
    {
        EditConfig(c => c.Remove("num_attention_heads"));
        Assert.That(OpenFails().Reason, Does.Contain("'num_attention_heads' is missing"));
    }

    [Test]
    public void MissingLmHead_WithoutTying_Refused()
    {
        EditConfig(c => c["tie_word_embeddings"] = false);
        string path = Path.Combine(_dir, "model.safetensors");
        using (var f = SafetensorsFile.Open(path))
        {
            // Rewrite the shard without lm_head.weight.
            string copy = path + ".new";
            using (var w = SafetensorsWriter.Create(copy))
            {
                foreach (var t in f.Tensors)
                    if (t.Name != "lm_head.weight") w.AddTensor(t.Name, t.DType, t.Shape);
                w.WriteHeader();
                foreach (var t in f.Tensors)
                    if (t.Name != "lm_head.weight") w.WriteTensorData(t.Name, f.GetTensorBytes(t));
                w.Complete();
            }
            f.Dispose();
            File.Move(copy, path, overwrite: true);
        }
        Assert.That(OpenFails().Reason, Does.Contain("'lm_head.weight' is missing"));
    }

    [Test]
    public void Sharded_IndexProblems_Refused()
    {
        string dir = Path.Combine(Path.GetDirectoryName(_dir)!, "sharded");
        HfTestCheckpoint.Write(dir, new HfTestCheckpointOptions { Layers = 1, Hidden = 64, Heads = 4, KvHeads = 2, Intermediate = 96, Shards = 2 });
        string index = Path.Combine(dir, "model.safetensors.index.json");
        string original = File.ReadAllText(index);
        using (var ok = HfCheckpoint.Open(dir)) Assert.That(ok.Shards, Has.Count.EqualTo(2));

        void Edit(Action<JsonObject> edit)
        {
            var node = JsonNode.Parse(original)!.AsObject();
            edit(node["weight_map"]!.AsObject());
            File.WriteAllText(index, node.ToJsonString());
        }
        ModelFormatException Fails() => Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(dir).Dispose())!;

        Edit(m => m["model.norm.weight"] = "../model-00001-of-00002.safetensors");
        Assert.That(Fails().Reason, Does.Contain("expected a .safetensors file in the checkpoint folder"));
        Edit(m => m["model.norm.weight"] = "/etc/passwd");
        Assert.That(Fails().Reason, Does.Contain("checkpoint folder"));
        Edit(m => m["model.layers.0.extra.weight"] = "model-00001-of-00002.safetensors");
        Assert.That(Fails().Reason, Does.Contain("'model.layers.0.extra.weight' is listed"));
        Edit(m => m["model.norm.weight"] = "model-00003-of-00002.safetensors");
        Assert.Throws<FileNotFoundException>(() => HfCheckpoint.Open(dir).Dispose());
        File.WriteAllText(index, """{"weight_map": 5}""");
        Assert.That(Fails().Reason, Does.Contain("'weight_map'"));

        // Without an index, the same tensor in two shards is ambiguous.
        File.Delete(index);
        using (var f = SafetensorsFile.Open(Path.Combine(dir, "model-00001-of-00002.safetensors")))
        using (var w = SafetensorsWriter.Create(Path.Combine(dir, "extra.safetensors")))
        {
            var t = f.Tensors[0];
            w.AddTensor(t.Name, t.DType, t.Shape);
            w.WriteHeader();
            w.WriteTensorData(t.Name, f.GetTensorBytes(t));
            w.Complete();
        }
        Assert.That(Fails().Reason, Does.Contain("also appears in"));
    }

    [Test]
    public void NoWeights_Refused()
    {
        File.Delete(Path.Combine(_dir, "model.safetensors"));
        Assert.That(OpenFails().Reason, Does.Contain("no model.safetensors"));
        Assert.Throws<DirectoryNotFoundException>(() => HfCheckpoint.Open(Path.Combine(_dir, "absent")));
    }

    [Test]
    public void CorruptShard_ReportsTheShardFile()
    {
        string path = Path.Combine(_dir, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^4]);
        var ex = OpenFails();
        Assert.That(ex.FilePath, Is.EqualTo(Path.GetFullPath(path)));
    }
}
