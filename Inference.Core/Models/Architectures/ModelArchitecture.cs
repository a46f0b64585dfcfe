using System.Text.Json;
using Inference.Loading;
using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// A model architecture, written once for every backend: its hyperparameters (read from GGUF metadata and from a
/// Hugging Face <c>config.json</c>), its tensor names in both formats (<see cref="TensorNames"/>), and its forward pass
/// as a <see cref="ModelGraph"/> of layer operations over those tensors (<see cref="Build"/>).
/// </summary>
/// <remarks>
/// Common settings (widths, heads, RMS ε, RoPE base and scaling) are read for every architecture by
/// <see cref="ModelConfig.FromGguf"/> and the Hugging Face reader; an architecture adds its own through
/// <see cref="ReadGguf"/> and <see cref="ReadHf"/>. Shared blocks (attention, feed-forward, output head) live in
/// <see cref="Blocks"/>.
/// </remarks>
internal abstract class ModelArchitecture
{
    /// <summary>The GGUF <c>general.architecture</c> value, also the Hugging Face <c>model_type</c>.</summary>
    public abstract string Name { get; }

    /// <summary>The transformers class names of <c>config.json</c>'s <c>architectures</c> list.</summary>
    public abstract IReadOnlyList<string> HfClassNames { get; }

    /// <summary>The Hugging Face <c>model_type</c> values of this architecture (by default its <see cref="Name"/>).</summary>
    public virtual IReadOnlyList<string> HfModelTypes => [Name];

    /// <summary>
    /// The transformers class of this architecture's multimodal checkpoints (<c>Gemma3ForConditionalGeneration</c>), whose
    /// text model is read from the <c>text_config</c> of <c>config.json</c> and the tensors under a
    /// <c>language_model.</c> prefix; null when there are none this library reads.
    /// </summary>
    public virtual string? HfMultimodalClassName => null;

    /// <summary>
    /// The text configuration class's defaults as a JSON object (transformers writes only the values that differ into a
    /// multimodal checkpoint's <c>text_config</c>); used with <see cref="HfMultimodalClassName"/>.
    /// </summary>
    public virtual string HfTextConfigDefaults => "{}";

    /// <summary>The <c>hidden_act</c> / <c>hidden_activation</c> values of <c>config.json</c> this architecture runs.</summary>
    public virtual IReadOnlyList<string> HfActivations { get; } = ["silu"];

    /// <summary>Tensor names, GGUF and Hugging Face.</summary>
    public abstract TensorNameMap TensorNames { get; }

    /// <summary>RoPE pairing of the GGUF file (llama.cpp's converter permutes llama's Q/K rows to adjacent pairs).</summary>
    public virtual RopeLayout GgufRopeLayout => RopeLayout.Neox;

    /// <summary>Context length when <c>config.json</c> has no <c>max_position_embeddings</c> (transformers' default).</summary>
    public virtual int HfDefaultContextLength => 2048;

    /// <summary>Whether its feed-forward blocks may be mixtures of experts (<c>{arch}.expert_count</c> is read only then).</summary>
    public virtual bool MayHaveExperts => false;

    /// <summary>Adds this architecture's settings from GGUF metadata to <paramref name="config"/>.</summary>
    public virtual ModelConfig ReadGguf(GgufFile gguf, ModelConfig config) => config;

    /// <summary>Adds this architecture's settings from <c>config.json</c> (<paramref name="root"/>) to <paramref name="config"/>.</summary>
    public virtual ModelConfig ReadHf(string path, JsonElement root, ModelConfig config) => config;

    /// <summary>
    /// <paramref name="c"/> with this architecture's own settings (those <see cref="ReadGguf"/> adds) at the values a
    /// model of it usually has, for writers of new model files; <paramref name="slidingWindow"/> is the window of layers
    /// that have one (0: a small default).
    /// </summary>
    public virtual ModelConfig CompleteConfig(ModelConfig c, int slidingWindow) => c;

    /// <summary>
    /// What a Hugging Face checkpoint's stored value of vector <paramref name="ggufName"/> lacks of the value the model
    /// applies (gemma's RMSNorm weights are stored less 1 and applied as 1 + w; llama.cpp's converter adds the 1): 0 for
    /// most tensors.
    /// </summary>
    public virtual float HfNormOffset(string ggufName) => 0f;

    /// <summary>
    /// Writes the hyperparameters of <paramref name="c"/> as GGUF metadata under this architecture's keys (what
    /// <see cref="ModelConfig.FromGguf"/> and llama.cpp read back); <c>general.*</c> and tokenizer keys are the caller's.
    /// </summary>
    public virtual void WriteGgufMetadata(GgufWriter w, ModelConfig c)
    {
        string a = Name;
        w.AddUInt32($"{a}.context_length", (uint)c.ContextLength);
        w.AddUInt32($"{a}.embedding_length", (uint)c.Dim);
        w.AddUInt32($"{a}.block_count", (uint)c.LayerCount);
        w.AddUInt32($"{a}.feed_forward_length", (uint)c.FfnDim);
        w.AddUInt32($"{a}.rope.dimension_count", (uint)c.RopeDim);
        w.AddUInt32($"{a}.attention.head_count", (uint)c.HeadCount);
        w.AddUInt32($"{a}.attention.head_count_kv", (uint)c.KvHeadCount);
        if (c.HeadDim * c.HeadCount != c.Dim)
        {
            w.AddUInt32($"{a}.attention.key_length", (uint)c.HeadDim);
            w.AddUInt32($"{a}.attention.value_length", (uint)c.HeadDim);
        }
        w.AddFloat32($"{a}.attention.layer_norm_rms_epsilon", c.RmsEps);
        w.AddFloat32($"{a}.rope.freq_base", c.RopeBase);
        w.AddUInt32($"{a}.vocab_size", (uint)c.VocabSize);
        if (c.RopeScaling == RopeScaling.Linear)
        {
            w.AddString($"{a}.rope.scaling.type", "linear");
            w.AddFloat32($"{a}.rope.scaling.factor", c.RopeScalingFactor);
        }
        if (c.IsMixtureOfExperts)
        {
            w.AddUInt32($"{a}.expert_count", (uint)c.ExpertCount);
            w.AddUInt32($"{a}.expert_used_count", (uint)c.ExpertUsedCount);
        }
        if (c.RopeScaling == RopeScaling.Yarn)
        {
            w.AddString($"{a}.rope.scaling.type", "yarn");
            w.AddFloat32($"{a}.rope.scaling.factor", c.RopeScalingFactor);
            w.AddUInt32($"{a}.rope.scaling.original_context_length", (uint)c.RopeOriginalContextLength);
            float extra = c.RopeAttentionFactor / ModelConfig.YarnAttentionFactor(c.RopeScalingFactor);
            if (Math.Abs(extra - 1f) > 1e-6f) w.AddFloat32($"{a}.rope.scaling.attn_factor", extra);
            if (c.YarnBetaFast != 32f) w.AddFloat32($"{a}.rope.scaling.yarn_beta_fast", c.YarnBetaFast);
            if (c.YarnBetaSlow != 1f) w.AddFloat32($"{a}.rope.scaling.yarn_beta_slow", c.YarnBetaSlow);
        }
        if (c.RopeScaling is RopeScaling.Ntk or RopeScaling.DynamicNtk)
            throw new NotSupportedException($"{c.RopeScaling} RoPE scaling has no GGUF form llama.cpp reads; run the checkpoint folder instead");
    }

    /// <summary>
    /// The tensors a model of <paramref name="config"/> reads, in the order its forward pass first uses them, with GGUF
    /// names and shapes (optional tensors: Q/K/V biases when <see cref="ModelConfig.HasAttentionBias"/>, the output head
    /// unless <paramref name="tiedOutput"/>). Writers of model files list their tensors from here.
    /// </summary>
    public IReadOnlyList<WeightSpec> PlanTensors(ModelConfig config, bool tiedOutput)
    {
        var result = StoredTensors(Build(config, new PlanningWeightSource(tiedOutput)));
        foreach (var (name, length) in ComputedVectors(config)) result.Add(new WeightSpec(name, length, 0));
        return result;
    }

    /// <summary>
    /// The stored tensors <paramref name="graph"/> reads, one entry each: the parts of a fused tensor become the whole,
    /// an expert tensor appears once (as its expert 0, with <see cref="WeightSpec.Experts"/>).
    /// </summary>
    internal static List<WeightSpec> StoredTensors(ModelGraph graph)
    {
        var result = new List<WeightSpec>();
        foreach (var spec in graph.Weights)
        {
            if (spec.IsExpert)
            {
                if (spec.Expert == 0) result.Add(spec);
            }
            else if (spec.StoredRows == 0) result.Add(spec);
            else if (spec.FirstRow == 0) result.Add(new WeightSpec(spec.Name, spec.StoredRows, spec.Cols));
        }
        return result;
    }

    /// <summary>
    /// Vectors the forward pass reads at load time that are not layer weights (Phi-3's LongRoPE factors): their GGUF
    /// names and lengths, for writers of model files.
    /// </summary>
    public virtual IReadOnlyList<(string Name, int Length)> ComputedVectors(ModelConfig config) => [];

    /// <summary>
    /// Those vectors computed from a Hugging Face <c>config.json</c> (<paramref name="root"/>), by GGUF name; empty when
    /// the architecture has none.
    /// </summary>
    public virtual IReadOnlyDictionary<string, float[]> ReadHfVectors(string path, JsonElement root, ModelConfig config) =>
        new Dictionary<string, float[]>();

    /// <summary>A weight source that has every required tensor and, of the optional ones, only the output head when asked.</summary>
    private sealed class PlanningWeightSource(bool tiedOutput) : IWeightSource
    {
        public string Description => "(planned)";
        public bool Contains(string name) => name == "output.weight" && !tiedOutput;
        public Backends.Cpu.WeightMatrix GetMatrix(string name, int rows, int cols) => default;
        public Backends.Cpu.WeightMatrix GetExpertMatrix(string name, int expert, int experts, int rows, int cols) => default;
        public float[]? GetVector(string name, int length, bool optional = false)
        {
            var ones = new float[length];
            Array.Fill(ones, 1f);
            return ones;
        }
    }

    /// <summary>Emits the forward pass for <see cref="GraphBuilder.Config"/> into <paramref name="b"/>; returns the logits buffer.</summary>
    protected abstract int Emit(GraphBuilder b);

    /// <summary>The forward pass of a model with <paramref name="config"/> whose weights are in <paramref name="weights"/>.</summary>
    public ModelGraph Build(ModelConfig config, IWeightSource weights)
    {
        var b = new GraphBuilder(config, weights);
        int logits = Emit(b);
        return b.Build(logits);
    }

    /// <summary>Every architecture this library runs.</summary>
    public static IReadOnlyList<ModelArchitecture> All { get; } = [
        LlamaArchitecture.Llama, LlamaArchitecture.Qwen2, Qwen3Architecture.Instance, GemmaArchitecture.Gemma2, GemmaArchitecture.Gemma3,
        Phi3Architecture.Instance, QwenMoeArchitecture.Qwen2Moe, QwenMoeArchitecture.Qwen3Moe,
    ];

    /// <summary>The architecture named <paramref name="name"/> (GGUF or Hugging Face <c>model_type</c>), or null.</summary>
    public static ModelArchitecture? Find(string? name)
    {
        foreach (var a in All)
            if (a.Name == name) return a;
        return null;
    }

    /// <summary>The architecture with Hugging Face <c>model_type</c> <paramref name="modelType"/>, or null.</summary>
    public static ModelArchitecture? FindByHfModelType(string? modelType)
    {
        foreach (var a in All)
            foreach (var t in a.HfModelTypes)
                if (t == modelType) return a;
        return null;
    }

    /// <summary>The architecture whose multimodal transformers class is <paramref name="className"/>, or null.</summary>
    public static ModelArchitecture? FindByHfMultimodalClass(string? className)
    {
        foreach (var a in All)
            if (a.HfMultimodalClassName is { } name && name == className) return a;
        return null;
    }

    /// <summary>The architecture whose transformers class is <paramref name="className"/>, or null.</summary>
    public static ModelArchitecture? FindByHfClass(string? className)
    {
        foreach (var a in All)
            foreach (var n in a.HfClassNames)
                if (n == className) return a;
        return null;
    }
}
