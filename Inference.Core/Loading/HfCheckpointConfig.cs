using System.Text.Json;
using Inference.Models;
using Inference.Models.Architectures;
using static Inference.Loading.HfCheckpointJson;

namespace Inference.Loading;

/// <summary>
/// The <c>config.json</c> of a Hugging Face checkpoint, read into a <see cref="ModelConfig"/> with the
/// defaults of the transformers configuration classes for absent keys.
/// </summary>
internal sealed record HfCheckpointConfig
{
    /// <summary>The model's hyperparameters (<see cref="RopeLayout.Neox"/>: HF checkpoints keep Q/K un-permuted).</summary>
    public required ModelConfig Model { get; init; }
    /// <summary>Per-dimension RoPE frequency divisors for Llama 3.1 scaling ([ropeDim / 2]), else null.</summary>
    public float[]? RopeFreqFactors { get; init; }
    /// <summary>Other vectors the architecture computes from config.json (Phi-3's LongRoPE factors), by GGUF name.</summary>
    public IReadOnlyDictionary<string, float[]> Vectors { get; init; } = new Dictionary<string, float[]>();
    /// <summary>Whether the output head shares the embedding matrix (<c>tie_word_embeddings</c>).</summary>
    public bool TieWordEmbeddings { get; init; }
    /// <summary>The <c>torch_dtype</c> (or <c>dtype</c>) the checkpoint was saved in, if given.</summary>
    public string? TorchDType { get; init; }
    /// <summary><c>bos_token_id</c> of config.json, if given.</summary>
    public int? BosTokenId { get; init; }
    /// <summary><c>eos_token_id</c> of config.json (one or several).</summary>
    public int[] EosTokenIds { get; init; } = [];
    /// <summary>
    /// The transformers class of a multimodal checkpoint whose text model this is (its tensors under a
    /// <c>language_model.</c> prefix), or null for a text checkpoint.
    /// </summary>
    public string? MultimodalClass { get; init; }

    /// <summary>Keys of a multimodal <c>config.json</c>'s top level that apply to its text model unless <c>text_config</c> sets them.</summary>
    private static readonly string[] SharedTopLevelKeys = ["torch_dtype", "dtype", "bos_token_id", "eos_token_id", "tie_word_embeddings"];

    /// <summary>Reads and validates <paramref name="path"/>.</summary>
    /// <exception cref="ModelFormatException">The file is missing, malformed, or describes an unsupported model.</exception>
    public static HfCheckpointConfig Read(string path)
    {
        using var doc = Load(path, MaxConfigBytes, optional: false)!;
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, -1, "expected a JSON object");
        using var text = TextConfigOfMultimodal(path, root, out string? multimodal);
        if (text is not null) root = text.RootElement;

        string? modelType = String(path, root, "model_type");
        if (modelType is null && Find(root, "architectures") is JsonElement archs && archs.ValueKind == JsonValueKind.Array && archs.GetArrayLength() > 0)
        {
            modelType = archs[0].ValueKind == JsonValueKind.String
                ? ModelArchitecture.FindByHfClass(archs[0].GetString())?.Name ?? archs[0].GetString()
                : null;
        }
        if (modelType is null) throw new ModelFormatException(path, -1, "'model_type' is missing");
        var architecture = ModelArchitecture.FindByHfModelType(modelType)
            ?? throw new ModelFormatException(path, -1, $"unsupported model_type '{modelType}' (supported: {string.Join(", ", ModelArchitecture.All.SelectMany(a => a.HfModelTypes))})");

        foreach (string key in (ReadOnlySpan<string>)["hidden_act", "hidden_activation"])
        {
            string? act = String(path, root, key);
            if (act is not null && !architecture.HfActivations.Contains(act))
                throw new ModelFormatException(path, -1, $"unsupported {key} '{act}' for {architecture.Name} (supported: {string.Join(", ", architecture.HfActivations)})");
        }
        if (Bool(path, root, "use_sliding_window") == true)
            throw new ModelFormatException(path, -1, "sliding-window attention ('use_sliding_window': true) is not supported");

        int dim = RequiredInt(path, root, "hidden_size", 1, 1 << 17);
        int layers = RequiredInt(path, root, "num_hidden_layers", 1, 4096);
        int heads = RequiredInt(path, root, "num_attention_heads", 1, 4096);
        int kvHeads = Int(path, root, "num_key_value_heads", 1, heads) ?? heads;
        if (heads % kvHeads != 0)
            throw new ModelFormatException(path, -1, $"num_attention_heads {heads} is not a multiple of num_key_value_heads {kvHeads}");
        int headDim = Int(path, root, "head_dim", 1, 1 << 12) ?? dim / heads;
        if (headDim * heads != dim && Find(root, "head_dim") is null)
            throw new ModelFormatException(path, -1, $"hidden_size {dim} is not a multiple of num_attention_heads {heads}");
        if (headDim % 2 != 0) throw new ModelFormatException(path, -1, $"head dimension {headDim} is odd; RoPE needs pairs");
        int ffn = RequiredInt(path, root, "intermediate_size", 1, 1 << 20);
        int vocab = RequiredInt(path, root, "vocab_size", 1, int.MaxValue);
        // NOTE: transformers' configuration defaults: eps 1e-6, theta 10000; positions per architecture.
        int ctx = Int(path, root, "max_position_embeddings", 1, 1 << 24) ?? architecture.HfDefaultContextLength;
        double eps = Number(path, root, "rms_norm_eps") ?? 1e-6;
        double theta = Number(path, root, "rope_theta") ?? 10000.0;
        if (!(eps > 0) || !(theta > 0)) throw new ModelFormatException(path, -1, "'rms_norm_eps' and 'rope_theta' must be positive");

        var scaling = RopeScaling.None;
        float factor = 1f;
        float[]? freqFactors = null;
        float attentionFactor = 1f, betaFast = 32f, betaSlow = 1f;
        int originalContext = 0;
        if (Find(root, "rope_scaling") is JsonElement rs)
        {
            if (rs.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, -1, "'rope_scaling' is not an object");
            string? type = String(path, rs, "rope_type") ?? String(path, rs, "type");
            switch (type)
            {
                case null or "default":
                    break;
                case "linear":
                    scaling = RopeScaling.Linear;
                    factor = (float)(Number(path, rs, "factor") ?? throw new ModelFormatException(path, -1, "'rope_scaling.factor' is missing"));
                    if (!(factor > 0)) throw new ModelFormatException(path, -1, "'rope_scaling.factor' must be positive");
                    break;
                case "longrope" or "su":
                    // NOTE: the architecture reads the factors (ReadHfVectors) and the attention factor (ReadHf).
                    scaling = RopeScaling.LongRope;
                    break;
                case "llama3":
                    scaling = RopeScaling.Llama3;
                    freqFactors = Llama3FreqFactors(path, rs, theta, headDim);
                    break;
                case "yarn":
                    scaling = RopeScaling.Yarn;
                    factor = (float)(Number(path, rs, "factor") ?? throw new ModelFormatException(path, -1, "'rope_scaling.factor' is missing"));
                    originalContext = Int(path, rs, "original_max_position_embeddings", 1, 1 << 24) ?? ctx;
                    // NOTE: Hugging Face's attention factor: given, or from DeepSeek's mscale pair, or 0.1 · ln factor + 1.
                    double? mscale = Number(path, rs, "mscale"), mscaleAllDim = Number(path, rs, "mscale_all_dim");
                    attentionFactor = (float)(Number(path, rs, "attention_factor")
                        ?? (mscale is double m && mscaleAllDim is double mAll ? YarnMscale(factor, m) / YarnMscale(factor, mAll) : ModelConfig.YarnAttentionFactor(factor)));
                    betaFast = (float)(Number(path, rs, "beta_fast") ?? 32.0);
                    betaSlow = (float)(Number(path, rs, "beta_slow") ?? 1.0);
                    if (!(factor > 0) || !(attentionFactor > 0) || !(betaFast > betaSlow) || !(betaSlow > 0))
                        throw new ModelFormatException(path, -1, "yarn 'rope_scaling' needs factor > 0, attention_factor > 0 and beta_fast > beta_slow > 0");
                    break;
                case "dynamic" or "ntk":
                    // NOTE: dynamic NTK's original context is max_position_embeddings; it scales only past it.
                    scaling = type == "dynamic" ? RopeScaling.DynamicNtk : RopeScaling.Ntk;
                    factor = (float)(Number(path, rs, "factor") ?? throw new ModelFormatException(path, -1, "'rope_scaling.factor' is missing"));
                    if (!(factor > 0)) throw new ModelFormatException(path, -1, "'rope_scaling.factor' must be positive");
                    originalContext = Int(path, rs, "original_max_position_embeddings", 1, 1 << 24) ?? ctx;
                    break;
                default:
                    throw new ModelFormatException(path, -1, $"unsupported rope_scaling type '{type}' (supported: linear, llama3, longrope, yarn, dynamic, ntk)");
            }
        }

        var model = new ModelConfig
        {
            Architecture = architecture.Name,
            Dim = dim,
            LayerCount = layers,
            HeadCount = heads,
            KvHeadCount = kvHeads,
            HeadDim = headDim,
            FfnDim = ffn,
            VocabSize = vocab,
            ContextLength = ctx,
            RmsEps = (float)eps,
            RopeBase = (float)theta,
            RopeDim = headDim,
            RopeLayout = RopeLayout.Neox,
            RopeScaling = scaling,
            RopeScalingFactor = factor,
            RopeAttentionFactor = attentionFactor,
            RopeOriginalContextLength = originalContext,
            YarnBetaFast = betaFast,
            YarnBetaSlow = betaSlow,
            // NOTE: an architecture that always has Q/K/V biases (qwen2) says so in its ReadHf.
            HasAttentionBias = Bool(path, root, "attention_bias") == true,
        };
        model = architecture.ReadHf(path, root, model);
        return new HfCheckpointConfig
        {
            Model = model,
            RopeFreqFactors = freqFactors,
            Vectors = architecture.ReadHfVectors(path, root, model),
            TieWordEmbeddings = Bool(path, root, "tie_word_embeddings") ?? false,
            TorchDType = String(path, root, "torch_dtype") ?? String(path, root, "dtype"),
            BosTokenId = Int(path, root, "bos_token_id", 0, int.MaxValue),
            EosTokenIds = IntOrList(path, root, "eos_token_id", int.MaxValue),
            MultimodalClass = multimodal,
        };
    }

    /// <summary>
    /// For a multimodal checkpoint (a <c>text_config</c> object and no text shapes at the top level): its text model's
    /// configuration — the architecture's text configuration defaults, then the top level's dtype and token ids, then
    /// <c>text_config</c> — as a document of its own; null for a text checkpoint.
    /// </summary>
    /// <exception cref="ModelFormatException">A multimodal checkpoint of a class this library does not read.</exception>
    private static JsonDocument? TextConfigOfMultimodal(string path, JsonElement root, out string? className)
    {
        className = null;
        if (Find(root, "text_config") is not JsonElement text || text.ValueKind != JsonValueKind.Object || Find(root, "num_hidden_layers") is not null)
            return null;
        if (Find(root, "architectures") is JsonElement archs && archs.ValueKind == JsonValueKind.Array && archs.GetArrayLength() > 0
            && archs[0].ValueKind == JsonValueKind.String)
            className = archs[0].GetString();
        var architecture = ModelArchitecture.FindByHfMultimodalClass(className);
        if (architecture is null)
        {
            var supported = ModelArchitecture.All.Select(a => a.HfMultimodalClassName).OfType<string>();
            throw new ModelFormatException(path, -1, $"multimodal checkpoint '{className ?? String(path, root, "model_type")}' is not supported (the text models of {string.Join(", ", supported)} are)");
        }
        var merged = System.Text.Json.Nodes.JsonNode.Parse(architecture.HfTextConfigDefaults)!.AsObject();
        foreach (string key in SharedTopLevelKeys)
            if (root.TryGetProperty(key, out var value)) merged[key] = System.Text.Json.Nodes.JsonNode.Parse(value.GetRawText());
        foreach (var property in text.EnumerateObject()) merged[property.Name] = System.Text.Json.Nodes.JsonNode.Parse(property.Value.GetRawText());
        return JsonDocument.Parse(merged.ToJsonString());
    }

    /// <summary>DeepSeek's YaRN magnitude: 0.1 · m · ln factor + 1 (1 for factor ≤ 1).</summary>
    private static double YarnMscale(double factor, double m) => factor <= 1 ? 1 : 0.1 * m * Math.Log(factor) + 1;

    /// <summary>
    /// Llama 3.1's frequency-dependent RoPE scaling as per-dimension divisors of the inverse frequencies — what llama.cpp's
    /// converter stores as <c>rope_freqs.weight</c>: 1 for short wavelengths, <c>factor</c> for long ones, a smooth
    /// blend in between.
    /// </summary>
    internal static float[] Llama3FreqFactors(string path, JsonElement rs, double theta, int headDim)
    {
        double factor = Number(path, rs, "factor") ?? 8.0;
        double low = Number(path, rs, "low_freq_factor") ?? 1.0;
        double high = Number(path, rs, "high_freq_factor") ?? 4.0;
        double oldContext = Number(path, rs, "original_max_position_embeddings") ?? 8192;
        if (!(factor > 0) || !(low > 0) || !(high > low) || !(oldContext > 0))
            throw new ModelFormatException(path, -1, "llama3 'rope_scaling' needs factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0");
        double lowWavelen = oldContext / low, highWavelen = oldContext / high;
        var result = new float[headDim / 2];
        for (int i = 0; i < result.Length; i++)
        {
            double freq = 1.0 / Math.Pow(theta, 2.0 * i / headDim);
            double wavelen = 2 * Math.PI / freq;
            if (wavelen < highWavelen) result[i] = 1f;
            else if (wavelen > lowWavelen) result[i] = (float)factor;
            else
            {
                double smooth = (oldContext / wavelen - low) / (high - low);
                result[i] = (float)(1.0 / ((1 - smooth) / factor + smooth));
            }
        }
        return result;
    }
}
