using Inference.Loading;
using Inference.Models.Architectures;

namespace Inference.Models;

/// <summary>Hyperparameters of a transformer, read from GGUF metadata or a Hugging Face <c>config.json</c>.</summary>
public sealed record ModelConfig
{
    /// <summary>Architecture name (one of <see cref="SupportedArchitectures"/>).</summary>
    public required string Architecture { get; init; }
    /// <summary>Residual stream width.</summary>
    public required int Dim { get; init; }
    /// <summary>Number of transformer blocks.</summary>
    public required int LayerCount { get; init; }
    /// <summary>Query heads.</summary>
    public required int HeadCount { get; init; }
    /// <summary>Key/value heads (equal to <see cref="HeadCount"/> for MHA, 1 for MQA, in between for GQA).</summary>
    public required int KvHeadCount { get; init; }
    /// <summary>Dimension of one head.</summary>
    public required int HeadDim { get; init; }
    /// <summary>Hidden width of the SwiGLU feed-forward block.</summary>
    public required int FfnDim { get; init; }
    /// <summary>Vocabulary size (rows of the embedding table).</summary>
    public required int VocabSize { get; init; }
    /// <summary>Context length the model was trained for.</summary>
    public required int ContextLength { get; init; }
    /// <summary>RMSNorm epsilon.</summary>
    public required float RmsEps { get; init; }
    /// <summary>RoPE base frequency.</summary>
    public required float RopeBase { get; init; }
    /// <summary>Number of dimensions of each head that RoPE rotates.</summary>
    public required int RopeDim { get; init; }
    /// <summary>RoPE pairing.</summary>
    public required RopeLayout RopeLayout { get; init; }
    /// <summary>RoPE position scaling.</summary>
    public RopeScaling RopeScaling { get; init; }
    /// <summary>Factor of linear RoPE scaling (1 when none).</summary>
    public float RopeScalingFactor { get; init; } = 1f;
    /// <summary>The attention factor of <see cref="RopeScaling.LongRope"/> (cos and sin multiplied by it); 1 otherwise.</summary>
    public float RopeAttentionFactor { get; init; } = 1f;
    /// <summary>The context the model was first trained for (LongRoPE's short factors apply within it); 0 when not given.</summary>
    public int RopeOriginalContextLength { get; init; }
    /// <summary>With <see cref="RopeScaling.LongRope"/>: the long factors, because the context window exceeds <see cref="RopeOriginalContextLength"/>.</summary>
    public bool UseLongRopeFactors { get; init; }
    /// <summary>YaRN's β_fast: dimensions that turn more than this often over the original context keep their frequency. Default 32.</summary>
    public float YarnBetaFast { get; init; } = 32f;
    /// <summary>YaRN's β_slow: dimensions that turn less than this often over the original context are fully interpolated. Default 1.</summary>
    public float YarnBetaSlow { get; init; } = 1f;
    /// <summary>With <see cref="RopeScaling.DynamicNtk"/>: the context window the base is scaled for (<see cref="ForContextWindow"/>); 0 before.</summary>
    public int RopeContextWindow { get; init; }

    /// <summary>
    /// This configuration for a context window of <paramref name="contextLength"/> tokens: LongRoPE's long factors when
    /// the window exceeds the original context, as llama.cpp chooses them by its context size.
    /// </summary>
    /// <remarks>
    /// NOTE: dynamic NTK scales the base for the whole window once (Hugging Face recomputes it at every length, so the keys
    /// it cached earlier were rotated with another base); keys in the cache then stay consistent with later queries.
    /// </remarks>
    public ModelConfig ForContextWindow(int contextLength) => RopeScaling switch
    {
        RopeScaling.LongRope => this with { UseLongRopeFactors = contextLength > RopeOriginalContextLength },
        RopeScaling.DynamicNtk => this with { RopeContextWindow = contextLength },
        _ => this,
    };

    /// <summary>The RoPE base after NTK-aware or dynamic NTK scaling (<see cref="RopeBase"/> otherwise).</summary>
    public double ScaledRopeBase()
    {
        double exponent = (double)RopeDim / (RopeDim - 2);
        if (RopeScaling == RopeScaling.Ntk) return RopeBase * Math.Pow(RopeScalingFactor, exponent);
        if (RopeScaling == RopeScaling.DynamicNtk && RopeContextWindow > RopeOriginalContextLength && RopeOriginalContextLength > 0)
            return RopeBase * Math.Pow(RopeScalingFactor * RopeContextWindow / RopeOriginalContextLength - (RopeScalingFactor - 1), exponent);
        return RopeBase;
    }

    /// <summary>
    /// YaRN's ramp for rotated pair i (0 … RopeDim/2 − 1): 1 keeps the original frequency, 0 takes the interpolated one;
    /// linear between the correction dimensions of β_fast and β_slow (llama.cpp's <c>ggml_rope_yarn_corr_dims</c>).
    /// </summary>
    public double YarnRamp(int i)
    {
        double CorrectionDim(double rotations) =>
            RopeDim * Math.Log(RopeOriginalContextLength / (rotations * 2 * Math.PI)) / (2 * Math.Log(RopeBase));
        double low = Math.Max(0, Math.Floor(CorrectionDim(YarnBetaFast)));
        double high = Math.Min(RopeDim - 1, Math.Ceiling(CorrectionDim(YarnBetaSlow)));
        double y = (i - low) / Math.Max(0.001, high - low);
        return 1 - Math.Min(1, Math.Max(0, y));
    }

    /// <summary>YaRN's default attention factor for a scaling <paramref name="factor"/>: 0.1 · ln factor + 1 (1 for factor ≤ 1).</summary>
    public static float YarnAttentionFactor(double factor) => factor <= 1 ? 1f : (float)(0.1 * Math.Log(factor) + 1);

    /// <summary>True when Q/K/V have biases (qwen2).</summary>
    public bool HasAttentionBias { get; init; }

    /// <summary>Attention score scale applied to q · k (gemma: query_pre_attn_scalar^−½); 0 means 1/√<see cref="HeadDim"/>.</summary>
    public float AttentionScale { get; init; }
    /// <summary>Attention logit soft-capping c (gemma2: s ↦ c · tanh(s / c) on the scaled scores); 0 when none.</summary>
    public float AttentionLogitSoftCap { get; init; }
    /// <summary>Final logit soft-capping c (gemma2: logits ↦ c · tanh(logits / c)); 0 when none.</summary>
    public float FinalLogitSoftCap { get; init; }
    /// <summary>RoPE base of the sliding-window layers when it differs from <see cref="RopeBase"/> (gemma3: 10000, unscaled); 0 when the same.</summary>
    public float SlidingWindowRopeBase { get; init; }

    /// <summary>
    /// Each layer's sliding attention window (0: the layer sees every position; see
    /// <see cref="Backends.Cpu.PagedAttentionShape.SlidingWindow"/>); null or empty when no layer has one.
    /// </summary>
    public IReadOnlyList<int>? SlidingWindows { get; init; }

    /// <summary>Layer <paramref name="layer"/>'s sliding attention window; 0 when it sees every position.</summary>
    public int LayerSlidingWindow(int layer) => SlidingWindows is { Count: > 0 } w ? w[layer] : 0;

    /// <summary>
    /// The most positions back any layer still reads: the largest window when every layer has one, else null (some
    /// layer sees everything). KV blocks wholly before the latest position minus this can be freed.
    /// </summary>
    public int? KvRetention
    {
        get
        {
            if (SlidingWindows is not { Count: > 0 } w) return null;
            int max = 0;
            foreach (int window in w)
            {
                if (window == 0) return null;
                max = Math.Max(max, window);
            }
            return max;
        }
    }

    /// <summary>Experts of each mixture-of-experts feed-forward block (Mixtral, qwen2moe, qwen3moe); 0 for a dense model.</summary>
    public int ExpertCount { get; init; }
    /// <summary>Experts each token is routed to (top-k of the router's softmax); 0 for a dense model.</summary>
    public int ExpertUsedCount { get; init; }
    /// <summary>Hidden width of one expert's SwiGLU feed-forward (0: <see cref="FfnDim"/>, as Mixtral).</summary>
    public int ExpertFfnDim { get; init; }
    /// <summary>Hidden width of the shared expert every token runs beside the routed ones (qwen2moe); 0 when there is none.</summary>
    public int SharedExpertFfnDim { get; init; }
    /// <summary>Whether the top-k routing weights are renormalised to sum to 1 (Mixtral, qwen3moe) or kept as softmax probabilities (qwen2moe).</summary>
    public bool ExpertWeightsNorm { get; init; }

    /// <summary>
    /// Layers of a mixture-of-experts model whose feed-forward is a dense SwiGLU of <see cref="FfnDim"/> instead (Qwen
    /// MoE's <c>mlp_only_layers</c> and <c>decoder_sparse_step</c>; in GGUF, the layers without a router
    /// <c>ffn_gate_inp</c>), ascending; null when every layer has experts.
    /// </summary>
    public IReadOnlyList<int>? DenseLayers { get; init; }

    /// <summary>Whether the feed-forward blocks are mixtures of experts.</summary>
    public bool IsMixtureOfExperts => ExpertCount > 0;

    /// <summary>Whether layer <paramref name="layer"/>'s feed-forward is a mixture of experts (not one of <see cref="DenseLayers"/>).</summary>
    public bool IsSparseLayer(int layer)
    {
        if (!IsMixtureOfExperts) return false;
        if (DenseLayers is { } dense)
            for (int i = 0; i < dense.Count; i++)
                if (dense[i] == layer) return false;
        return true;
    }

    /// <summary>The hidden width of one routed expert.</summary>
    public int ExpertWidth => ExpertFfnDim > 0 ? ExpertFfnDim : FfnDim;

    /// <summary>Query heads per KV head.</summary>
    public int KvMul => HeadCount / KvHeadCount;
    /// <summary>Width of all query heads.</summary>
    public int QDim => HeadCount * HeadDim;
    /// <summary>Width of all KV heads.</summary>
    public int KvDim => KvHeadCount * HeadDim;

    /// <summary>Architectures this library runs (GGUF <c>general.architecture</c> and Hugging Face <c>model_type</c> names).</summary>
    public static IReadOnlyList<string> SupportedArchitectures { get; } = ModelArchitecture.All.Select(a => a.Name).ToArray();

    /// <summary>Reads the configuration from GGUF metadata, applying llama.cpp's defaults for absent keys.</summary>
    /// <exception cref="ModelFormatException">A required key is missing or a value is out of range.</exception>
    public static ModelConfig FromGguf(GgufFile gguf)
    {
        string arch = gguf.GetString("general.architecture") ?? throw gguf.Bad(-1, "metadata 'general.architecture' is missing");
        var architecture = ModelArchitecture.Find(arch)
            ?? throw gguf.Bad(gguf.Metadata["general.architecture"].Offset, $"unsupported architecture '{arch}' (supported: {string.Join(", ", SupportedArchitectures)})");

        int Required(string key, int min, int max)
        {
            long v = gguf.GetInteger($"{arch}.{key}") ?? throw gguf.Bad(-1, $"metadata '{arch}.{key}' is missing");
            return Checked(key, v, min, max);
        }
        int Optional(string key, int fallback, int min, int max)
        {
            long? v = gguf.GetInteger($"{arch}.{key}");
            return v is null ? fallback : Checked(key, v.Value, min, max);
        }
        int Checked(string key, long v, int min, int max)
        {
            if (v < min || v > max) throw gguf.Bad(gguf.Metadata[$"{arch}.{key}"].Offset, $"'{arch}.{key}' = {v} is outside [{min}, {max}]");
            return (int)v;
        }

        int dim = Required("embedding_length", 1, 1 << 17);
        int layers = Required("block_count", 1, 4096);
        int heads = Required("attention.head_count", 1, 4096);
        int kvHeads = Optional("attention.head_count_kv", heads, 1, heads);
        if (heads % kvHeads != 0) throw gguf.Bad(-1, $"head count {heads} is not a multiple of the KV head count {kvHeads}");
        int headDim = Optional("attention.key_length", dim / heads, 1, 1 << 12);
        int ffn = Required("feed_forward_length", 1, 1 << 20);
        int ctx = Optional("context_length", 2048, 1, 1 << 24);
        int ropeDim = Optional("rope.dimension_count", headDim, 2, headDim);
        float eps = (float)(gguf.GetFloat($"{arch}.attention.layer_norm_rms_epsilon") ?? 1e-5);
        float ropeBase = (float)(gguf.GetFloat($"{arch}.rope.freq_base") ?? 10000.0);
        if (!(eps > 0) || !(ropeBase > 0)) throw gguf.Bad(-1, "RMS epsilon and RoPE base must be positive");

        var scaling = RopeScaling.None;
        float factor = 1f;
        string? scalingType = gguf.GetString($"{arch}.rope.scaling.type");
        if (scalingType == "linear")
        {
            scaling = RopeScaling.Linear;
            factor = (float)(gguf.GetFloat($"{arch}.rope.scaling.factor") ?? 1.0);
            if (!(factor > 0)) throw gguf.Bad(-1, $"'{arch}.rope.scaling.factor' must be positive");
        }
        else if (scalingType == "yarn")
        {
            // NOTE: as llama.cpp reads it: factor, original context, β_fast/β_slow (defaults 32 and 1), and an attention
            // factor that multiplies YaRN's own 0.1 · ln factor + 1.
            scaling = RopeScaling.Yarn;
            factor = (float)(gguf.GetFloat($"{arch}.rope.scaling.factor") ?? 1.0);
            if (!(factor > 0)) throw gguf.Bad(-1, $"'{arch}.rope.scaling.factor' must be positive");
        }
        else if (scalingType is not (null or "none"))
        {
            throw gguf.Bad(gguf.Metadata[$"{arch}.rope.scaling.type"].Offset, $"unsupported RoPE scaling '{scalingType}'");
        }
        // NOTE: llama.cpp stores Llama 3.1's frequency-dependent scaling as a 'rope_freqs.weight' tensor of
        // per-dimension divisors rather than as metadata.
        if (gguf.FindTensor("rope_freqs.weight") is not null) scaling = RopeScaling.Llama3;
        // NOTE: and Phi-3's LongRoPE as two tensors of divisors with an attention factor and the original context in metadata.
        float attnFactor = 1f;
        int originalContext = 0;
        if (gguf.FindTensor("rope_factors_short.weight") is not null)
        {
            scaling = RopeScaling.LongRope;
            attnFactor = (float)(gguf.GetFloat($"{arch}.rope.scaling.attn_factor") ?? 1.0);
            if (!(attnFactor > 0)) throw gguf.Bad(-1, $"'{arch}.rope.scaling.attn_factor' must be positive");
            originalContext = Optional("rope.scaling.original_context_length", ctx, 1, 1 << 24);
        }

        float betaFast = 32f, betaSlow = 1f;
        if (scaling == RopeScaling.Yarn)
        {
            originalContext = Optional("rope.scaling.original_context_length", ctx, 1, 1 << 24);
            float extra = (float)(gguf.GetFloat($"{arch}.rope.scaling.attn_factor") ?? 1.0);
            betaFast = (float)(gguf.GetFloat($"{arch}.rope.scaling.yarn_beta_fast") ?? 32.0);
            betaSlow = (float)(gguf.GetFloat($"{arch}.rope.scaling.yarn_beta_slow") ?? 1.0);
            if (!(extra > 0) || !(betaFast > betaSlow) || !(betaSlow > 0)) throw gguf.Bad(-1, "YaRN needs attn_factor > 0 and β_fast > β_slow > 0");
            attnFactor = extra * YarnAttentionFactor(factor);
        }

        var embd = gguf.GetTensor("token_embd.weight");
        if (embd.Dimensions.Length != 2 || embd.Dimensions[0] != dim)
            throw gguf.Bad(-1, $"token_embd.weight has shape [{string.Join(", ", embd.Dimensions)}], expected [{dim}, vocab]");
        if (embd.Dimensions[1] > int.MaxValue) throw gguf.Bad(-1, "vocabulary too large");

        var config = new ModelConfig
        {
            Architecture = arch,
            Dim = dim,
            LayerCount = layers,
            HeadCount = heads,
            KvHeadCount = kvHeads,
            HeadDim = headDim,
            FfnDim = ffn,
            VocabSize = (int)embd.Dimensions[1],
            ContextLength = ctx,
            RmsEps = eps,
            RopeBase = ropeBase,
            RopeDim = ropeDim,
            RopeLayout = architecture.GgufRopeLayout,
            RopeScaling = scaling,
            RopeScalingFactor = factor,
            RopeAttentionFactor = attnFactor,
            RopeOriginalContextLength = originalContext,
            YarnBetaFast = betaFast,
            YarnBetaSlow = betaSlow,
            HasAttentionBias = gguf.FindTensor("blk.0.attn_q.bias") is not null,
        };
        // Mixture of experts (llama.cpp's keys for every architecture that has them); the architecture adds its widths
        // and whether the top-k weights are renormalised.
        int experts = architecture.MayHaveExperts ? Optional("expert_count", 0, 0, 1 << 16) : 0;
        if (experts > 0)
        {
            int used = Optional("expert_used_count", 0, 0, experts);
            if (used == 0) throw gguf.Bad(-1, $"'{arch}.expert_used_count' is missing or 0 with {experts} experts");
            config = config with { ExpertCount = experts, ExpertUsedCount = used, ExpertWeightsNorm = true };
        }
        return architecture.ReadGguf(gguf, config);
    }
}
