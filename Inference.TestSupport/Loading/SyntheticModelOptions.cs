namespace Inference.Loading;

/// <summary>
/// The shape and contents of a random-weight llama-architecture model written by <see cref="SyntheticModel.Write"/>.
/// </summary>
/// <remarks>
/// Each property is range-checked when set; the relations between them (heads divide the dimension, KV heads divide the
/// heads, block-size multiples for <see cref="GgmlType.Q8_0"/>) are checked by <see cref="Validate"/>, which
/// <see cref="SyntheticModel.Write"/> calls.
/// </remarks>
public sealed record SyntheticModelOptions
{
    private readonly int _dimension = 64;
    private readonly int _layerCount = 2;
    private readonly int _headCount = 8;
    private readonly int _kvHeadCount = 8;
    private readonly int _feedForwardLength = 160;
    private readonly int _contextLength = 2048;
    private readonly float _ropeFreqBase = 10000f;
    private readonly float _rmsNormEpsilon = 1e-5f;
    private readonly GgmlType _tensorType = GgmlType.F32;
    private readonly float _weightScale = 0.05f;
    private readonly string _tokenizerDonorPath = "";
    private readonly string _name = "synthetic";

    /// <summary>GGUF architecture name (see <c>ModelConfig.SupportedArchitectures</c>). Defaults to <c>llama</c>.</summary>
    public string Architecture { get; init; } = "llama";

    /// <summary>Model (embedding) dimension. Defaults to 64.</summary>
    public int Dimension { get => _dimension; init => _dimension = Positive(value, nameof(Dimension)); }

    /// <summary>Number of transformer blocks. Defaults to 2.</summary>
    public int LayerCount { get => _layerCount; init => _layerCount = Positive(value, nameof(LayerCount)); }

    /// <summary>Number of query heads. Defaults to 8.</summary>
    public int HeadCount { get => _headCount; init => _headCount = Positive(value, nameof(HeadCount)); }

    /// <summary>Number of key/value heads (equal to <see cref="HeadCount"/> for MHA, 1 for MQA). Defaults to 8.</summary>
    public int KvHeadCount { get => _kvHeadCount; init => _kvHeadCount = Positive(value, nameof(KvHeadCount)); }

    /// <summary>Hidden size of the SwiGLU feed-forward block. Defaults to 160.</summary>
    public int FeedForwardLength { get => _feedForwardLength; init => _feedForwardLength = Positive(value, nameof(FeedForwardLength)); }

    /// <summary>Training context length written as <c>llama.context_length</c>. Defaults to 2048.</summary>
    public int ContextLength { get => _contextLength; init => _contextLength = Positive(value, nameof(ContextLength)); }

    /// <summary>RoPE base frequency (<c>llama.rope.freq_base</c>). Defaults to 10000.</summary>
    public float RopeFreqBase
    {
        get => _ropeFreqBase;
        init => _ropeFreqBase = float.IsFinite(value) && value > 1f ? value : throw new ArgumentOutOfRangeException(nameof(RopeFreqBase), value, "must be finite and above 1");
    }

    /// <summary>RMSNorm epsilon (<c>llama.attention.layer_norm_rms_epsilon</c>). Defaults to 1e-5.</summary>
    public float RmsNormEpsilon
    {
        get => _rmsNormEpsilon;
        init => _rmsNormEpsilon = float.IsFinite(value) && value > 0f && value < 1f ? value : throw new ArgumentOutOfRangeException(nameof(RmsNormEpsilon), value, "must be in (0, 1)");
    }

    /// <summary>Type of the weight matrices: <see cref="GgmlType.F32"/>, <see cref="GgmlType.F16"/>, <see cref="GgmlType.BF16"/>
    /// or <see cref="GgmlType.Q8_0"/>. Norms are always F32.</summary>
    public GgmlType TensorType
    {
        get => _tensorType;
        init => _tensorType = value is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0
            ? value : throw new ArgumentOutOfRangeException(nameof(TensorType), value, "only F32, F16, BF16 and Q8_0 are supported");
    }

    /// <summary>Seed of the weight generator; the same options give the same file.</summary>
    public int Seed { get; init; }

    /// <summary>Standard deviation of the normally distributed weights. Defaults to 0.05. Norm weights are 1 plus noise of this scale / 10.</summary>
    public float WeightScale
    {
        get => _weightScale;
        init => _weightScale = float.IsFinite(value) && value > 0f && value <= 1f ? value : throw new ArgumentOutOfRangeException(nameof(WeightScale), value, "must be in (0, 1]");
    }

    /// <summary>
    /// A GGUF file whose <c>tokenizer.*</c> keys are copied (for example stories260K.gguf); the model's vocabulary size is the
    /// donor's token count. Required.
    /// </summary>
    public string TokenizerDonorPath
    {
        get => _tokenizerDonorPath;
        init => _tokenizerDonorPath = value ?? throw new ArgumentNullException(nameof(TokenizerDonorPath));
    }

    /// <summary>Whether the model has its own <c>output.weight</c> or reuses the token embedding. Defaults to separate.</summary>
    public OutputHead OutputHead { get; init; } = OutputHead.Separate;

    /// <summary>The <c>general.name</c> value. Defaults to "synthetic".</summary>
    public string Name { get => _name; init => _name = value ?? throw new ArgumentNullException(nameof(Name)); }

    private readonly int _headDimension;

    /// <summary>
    /// Size of one attention head. Defaults to <see cref="Dimension"/> / <see cref="HeadCount"/>; architectures with
    /// their own head size (qwen3, gemma) may set another.
    /// </summary>
    public int HeadDimension
    {
        get => _headDimension > 0 ? _headDimension : Dimension / HeadCount;
        init => _headDimension = Positive(value, nameof(HeadDimension));
    }

    /// <summary>
    /// Sliding attention window of the layers that have one (gemma2/gemma3's local layers, mistral-style llama's every
    /// layer). 0, the default, takes the architecture's choice for a small model (4 positions where it has local layers).
    /// </summary>
    public int SlidingWindow { get; init; }

    /// <summary>gemma2's attention logit soft-cap, with <see cref="FinalLogitSoftCap"/>; 0, the default, takes the architecture's (50 and 30).</summary>
    public float AttentionLogitSoftCap { get; init; }

    /// <summary>gemma2's final logit soft-cap (used when <see cref="AttentionLogitSoftCap"/> is set).</summary>
    public float FinalLogitSoftCap { get; init; }

    /// <summary>
    /// Experts of each mixture-of-experts feed-forward (Mixtral-style llama, qwen2moe, qwen3moe); 0, the default, gives
    /// llama a dense feed-forward and the MoE architectures 4 experts.
    /// </summary>
    public int ExpertCount { get; init; }

    /// <summary>Experts each token uses; 0, the default, takes 2 (or all when fewer).</summary>
    public int ExpertUsedCount { get; init; }

    /// <summary>Hidden width of a routed expert of qwen2moe/qwen3moe; 0, the default, takes <see cref="FeedForwardLength"/> (Mixtral always does).</summary>
    public int ExpertFeedForwardLength { get; init; }

    /// <summary>Hidden width of qwen2moe's shared expert; 0, the default, takes <see cref="FeedForwardLength"/>.</summary>
    public int SharedExpertFeedForwardLength { get; init; }

    /// <summary>Checks the relations between the options.</summary>
    /// <exception cref="ArgumentException">The options do not describe a valid llama model.</exception>
    public void Validate()
    {
        if (TokenizerDonorPath.Length == 0) throw new ArgumentException("a tokenizer donor GGUF is required", nameof(TokenizerDonorPath));
        if (_headDimension == 0 && Dimension % HeadCount != 0) throw new ArgumentException($"dimension {Dimension} is not a multiple of the head count {HeadCount}");
        if (HeadCount % KvHeadCount != 0) throw new ArgumentException($"head count {HeadCount} is not a multiple of the KV head count {KvHeadCount}");
        if (HeadDimension % 2 != 0) throw new ArgumentException($"head dimension {HeadDimension} must be even for RoPE");
        if (ExpertCount < 0 || ExpertUsedCount < 0 || (ExpertCount > 0 && ExpertUsedCount > ExpertCount))
            throw new ArgumentException($"{ExpertUsedCount} experts used of {ExpertCount}");
        if (TensorType == GgmlType.Q8_0 && (Dimension % 32 != 0 || FeedForwardLength % 32 != 0))
            throw new ArgumentException($"Q8_0 needs the dimension ({Dimension}) and feed-forward length ({FeedForwardLength}) to be multiples of 32");
    }

    private static int Positive(int value, string name) =>
        value > 0 ? value : throw new ArgumentOutOfRangeException(name, value, "must be positive");
}

/// <summary>Where a model's output projection (the classifier) comes from.</summary>
public enum OutputHead
{
    /// <summary>A separate <c>output.weight</c> tensor.</summary>
    Separate,
    /// <summary>No <c>output.weight</c>: the token embedding is reused (tied embeddings).</summary>
    TiedToEmbedding,
}
