using Inference.Loading;
using Inference.Quantization;
using Inference.Tests.Support;
using LLama.Native;

namespace Inference.Tests.Quantization;

/// <summary>
/// Whole models quantized here and by llama.cpp's quantizer (<c>llama_model_quantize</c> through LLamaSharp) from the same
/// file: every tensor's type, shape and bytes compared, for every preset.
/// </summary>
[NonParallelizable]
public class ModelQuantizerTests
{
    private static string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = TestData.TempDir();

    [OneTimeTearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    /// <summary>The models: name → (options, weight type written, whether to plant edge-case rows).</summary>
    private static string Model(string name)
    {
        string path = Path.Combine(_dir, name + ".gguf");
        if (File.Exists(path)) return path;
        string random = Path.Combine(_dir, name + ".random.gguf");
        var (options, type) = name switch
        {
            // 8 layers: use_more_bits picks layers 0, 3, 6, 7; GQA; every row a multiple of 256.
            "gqa8-f32" => (Options(dim: 256, heads: 4, kvHeads: 2, ffn: 256, layers: 8, seed: 11), GgmlType.F32),
            // 12 layers (blk.10 sorts before blk.2 by plain name: the counters must follow layer numbers); MQA; FFN rows of
            // 160 values (K-quant fallbacks to Q5_0 / Q5_1 / Q8_0); BF16 weights.
            "mqa12-bf16" => (Options(dim: 256, heads: 4, kvHeads: 1, ffn: 160, layers: 12, seed: 12), GgmlType.BF16),
            // Tied embeddings and rows of 64 (no K-quant fits anywhere): F16 weights.
            "tied-f16" => (Options(dim: 64, heads: 4, kvHeads: 4, ffn: 96, layers: 2, seed: 13) with { OutputHead = OutputHead.TiedToEmbedding }, GgmlType.F16),
            _ => throw new ArgumentException(name),
        };
        SyntheticModel.Write(random, options);
        Rewrite(random, path, type);
        File.Delete(random);
        return path;
    }

    private static SyntheticModelOptions Options(int dim, int heads, int kvHeads, int ffn, int layers, int seed) => new()
    {
        Dimension = dim,
        HeadCount = heads,
        KvHeadCount = kvHeads,
        FeedForwardLength = ffn,
        LayerCount = layers,
        Seed = seed,
        WeightScale = 0.05f,
        TokenizerDonorPath = TestData.Stories260K,
    };

    /// <summary>
    /// Copies an F32 model with its matrices stored as <paramref name="type"/> and a few rows of each replaced by edge
    /// cases: zeros, a constant, an outlier, values too small for an f16 scale, and an all-positive row.
    /// </summary>
    private static void Rewrite(string source, string destination, GgmlType type)
    {
        using var src = GgufFile.Open(source);
        using (var w = GgufWriter.Create(destination))
        {
            foreach (var key in src.MetadataKeys)
            {
                if (key == "general.file_type") w.AddUInt32(key, type switch { GgmlType.F16 => 1u, GgmlType.BF16 => 32u, _ => 0u });
                else if (key != "general.alignment") w.AddValue(key, src.Metadata[key]);
            }
            foreach (var t in src.Tensors) w.AddTensorInfo(t.Name, t.Dimensions, t.Dimensions.Length == 1 ? GgmlType.F32 : type);
            w.WriteHeader();
            foreach (var t in src.Tensors)
            {
                var values = new float[t.ElementCount];
                Inference.Models.WeightConversion.ToFloats(t.Type, src.GetTensorBytes(t), values);
                if (t.Dimensions.Length == 1)
                {
                    w.WriteTensorData(t.Name, values);
                    continue;
                }
                int cols = (int)t.RowLength;
                for (int c = 0; c < cols; c++)
                {
                    values[0 * cols + c] = 0f;
                    values[1 * cols + c] = 0.125f;
                    values[4 * cols + c] *= 1e-8f;
                    values[5 * cols + c] = MathF.Abs(values[5 * cols + c]) + 0.02f;
                }
                values[2 * cols + 7] = 3f;
                values[3 * cols + cols - 1] = -2f;
                var bytes = new byte[GgmlTypeInfo.RowBytes(type, values.Length)];
                BlockQuantizer.QuantizeRow(type, values, bytes);
                w.WriteTensorData(t.Name, bytes);
            }
            w.Complete();
        }
    }

    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var model in (string[])["gqa8-f32", "mqa12-bf16", "tied-f16"])
        {
            foreach (var preset in QuantizationPresets.All)
                yield return new TestCaseData(model, preset).SetName($"{model} {preset}");
        }
    }

    [TestCaseSource(nameof(Cases))]
    public async Task EveryTensorMatchesLlamaQuantize(string model, QuantizationPreset preset)
    {
        string input = Model(model);
        string ours = Path.Combine(_dir, $"{model}-{preset}.ours.gguf");
        string theirs = Path.Combine(_dir, $"{model}-{preset}.llama.gguf");
        LlamaCpp.Quantize(input, theirs, (LLamaFtype)(int)preset, quantizeOutputTensor: true);
        var plan = await ModelQuantizer.QuantizeAsync(input, ours, preset);

        using var a = GgufFile.Open(ours);
        using var b = GgufFile.Open(theirs);
        Assert.That(a.Tensors.Select(t => t.Name), Is.EqualTo(b.Tensors.Select(t => t.Name)), "tensor order");
        Assert.That(plan.Select(t => t.Name), Is.EqualTo(b.Tensors.Select(t => t.Name)), "plan order");
        Assert.That(a.GetInteger("general.file_type"), Is.EqualTo(b.GetInteger("general.file_type")));
        Assert.That(a.GetInteger("general.quantization_version"), Is.EqualTo(b.GetInteger("general.quantization_version")));
        var types = new HashSet<GgmlType>();
        foreach (var tb in b.Tensors)
        {
            var ta = a.GetTensor(tb.Name);
            Assert.That(ta.Type, Is.EqualTo(tb.Type), $"{tb.Name}: type");
            Assert.That(ta.Dimensions, Is.EqualTo(tb.Dimensions), $"{tb.Name}: shape");
            var x = a.GetTensorBytes(ta);
            var y = b.GetTensorBytes(tb);
            int diff = x.CommonPrefixLength(y);
            if (diff != x.Length || x.Length != y.Length)
                Assert.Fail($"{tb.Name} ({tb.Type}): bytes differ from offset {diff} of {y.Length}");
            types.Add(tb.Type);
        }
        TestContext.Out.WriteLine($"{model} {preset}: {string.Join(", ", types)}");
    }

    [Test]
    public void Q4_K_M_GivesMoreBitsToTheRightLayers()
    {
        var inputs = new List<QuantizationInput> { new("output.weight", [256, 512], GgmlType.F16), new("token_embd.weight", [256, 512], GgmlType.F16) };
        for (int l = 0; l < 16; l++)
        {
            inputs.Add(new($"blk.{l}.attn_v.weight", [256, 64], GgmlType.F16));
            inputs.Add(new($"blk.{l}.ffn_down.weight", [512, 256], GgmlType.F16));
            inputs.Add(new($"blk.{l}.attn_norm.weight", [256], GgmlType.F32));
        }
        var plan = TensorTypeRules.Plan(inputs, QuantizationPreset.Q4_K_M, new QuantizationModelFacts("llama", 16, 8, 2, 0));
        var more = plan.Where(t => t.Name.EndsWith("ffn_down.weight") && t.TargetType == GgmlType.Q6_K)
            .Select(t => TensorTypeRules.LayerOf(t.Name)).Order().ToArray();
        // n = 16: i < 2, i >= 14, or (i - 2) % 3 == 2.
        Assert.That(more, Is.EqualTo(new[] { 0, 1, 4, 7, 10, 13, 14, 15 }));
        Assert.That(plan.Single(t => t.Name == "output.weight").TargetType, Is.EqualTo(GgmlType.Q6_K));
        Assert.That(plan.Single(t => t.Name == "token_embd.weight").TargetType, Is.EqualTo(GgmlType.Q4_K));
        Assert.That(plan.Where(t => t.Name.EndsWith("norm.weight")).Select(t => t.TargetType).Distinct(), Is.EqualTo(new[] { GgmlType.F32 }));
        Assert.That(plan[0].Name, Is.EqualTo("output.weight"));
        Assert.That(plan[2].Name, Is.EqualTo("blk.0.attn_norm.weight"));
    }

    [Test]
    public void RowsThatFitNoBlockAreATypedError()
    {
        var inputs = new List<QuantizationInput> { new("blk.0.ffn_down.weight", [48, 16], GgmlType.F32) };
        var facts = new QuantizationModelFacts("llama", 1, 1, 1, 0);
        Assert.Throws<ArgumentException>(() => TensorTypeRules.Plan(inputs, QuantizationPreset.Q8_0, facts));
        Assert.That(TensorTypeRules.Plan(inputs, QuantizationPreset.Q4_K_M, facts)[0].TargetType, Is.EqualTo(GgmlType.F16));
    }

    [Test]
    public void QuantizedInputIsRefusedAndNoFileIsLeft()
    {
        string input = Path.Combine(_dir, "q8.gguf");
        LlamaCpp.Quantize(Model("tied-f16"), input, LLamaFtype.MOSTLY_Q8_0);
        string output = Path.Combine(_dir, "requantized.gguf");
        Assert.ThrowsAsync<NotSupportedException>(() => ModelQuantizer.QuantizeAsync(input, output, QuantizationPreset.Q4_0));
        Assert.That(File.Exists(output), Is.False);
    }

    [Test]
    public void PresetNamesParse()
    {
        Assert.That(QuantizationPresets.Parse("q4_k_m"), Is.EqualTo(QuantizationPreset.Q4_K_M));
        Assert.That(QuantizationPresets.Parse("Q4_K"), Is.EqualTo(QuantizationPreset.Q4_K_M));
        Assert.That(QuantizationPresets.Parse("Q5_K"), Is.EqualTo(QuantizationPreset.Q5_K_M));
        Assert.That(QuantizationPresets.Parse("Q8_0"), Is.EqualTo(QuantizationPreset.Q8_0));
        Assert.Throws<ArgumentException>(() => QuantizationPresets.Parse("Q3_K_M"));
    }
}
