using Inference.Loading;

namespace Inference.Quantization;

/// <summary>A tensor as the quantization rules see it: its GGUF name, ggml dimensions (<c>ne</c>) and stored type.</summary>
/// <param name="Name">GGUF name, e.g. <c>blk.3.attn_v.weight</c>.</param>
/// <param name="Dimensions">ggml <c>ne</c>: <c>ne[0]</c> is the row length.</param>
/// <param name="Type">The type it is stored in.</param>
public sealed record QuantizationInput(string Name, long[] Dimensions, GgmlType Type);

/// <summary>One tensor's decision: stored as <see cref="SourceType"/>, written as <see cref="TargetType"/>.</summary>
/// <param name="Name">GGUF name.</param>
/// <param name="Dimensions">ggml <c>ne</c>.</param>
/// <param name="SourceType">The type it is stored in.</param>
/// <param name="TargetType">The type the preset gives it (equal to the source type when it is copied unchanged).</param>
public sealed record TensorQuantization(string Name, long[] Dimensions, GgmlType SourceType, GgmlType TargetType);

/// <summary>The model facts the per-tensor rules depend on (<c>{arch}.*</c> keys of a GGUF file).</summary>
/// <param name="Architecture"><c>general.architecture</c>.</param>
/// <param name="LayerCount"><c>{arch}.block_count</c>.</param>
/// <param name="HeadCount"><c>{arch}.attention.head_count</c>.</param>
/// <param name="KvHeadCount"><c>{arch}.attention.head_count_kv</c>.</param>
/// <param name="ExpertCount"><c>{arch}.expert_count</c>, 0 for a dense model.</param>
public sealed record QuantizationModelFacts(string Architecture, int LayerCount, int HeadCount, int KvHeadCount, int ExpertCount);

/// <summary>
/// Chooses each tensor's type for a <see cref="QuantizationPreset"/> by the rules of llama.cpp's quantizer
/// (<c>llama_tensor_get_type</c> in <c>src/llama-quant.cpp</c>, without an importance matrix or overrides), so a model
/// quantized here holds the same types as one quantized by <c>llama-quantize</c>.
/// </summary>
/// <remarks>
/// The rules, for the presets here:
/// <list type="bullet">
/// <item>Only tensors of two or more dimensions whose name ends in <c>weight</c> are quantized, never norms
/// (<c>_norm.weight</c>), MoE routers, position embeddings or the other small tensors llama.cpp leaves alone: they are copied.</item>
/// <item><c>output.weight</c> (or <c>token_embd.weight</c> when no <c>output.weight</c> exists: tied embeddings) becomes
/// Q6_K unless the preset is Q8_0; Q8_0 when its rows are not a whole number of the preset's blocks (or for falcon).</item>
/// <item>Q4_K_M and Q5_K_M give Q6_K to the <c>attn_v</c> and <c>ffn_down</c> of layers i with
/// <c>i &lt; n/8 || i ≥ 7n/8 || (i − n/8) % 3 == 2</c> (llama.cpp's <c>use_more_bits</c>); Q4_K_S gives Q5_K to the first four
/// <c>attn_v</c> and to <c>ffn_down</c> of the first n/8 layers. Eight-expert models get Q8_0 attention K/V.</item>
/// <item>Rows that are not a whole number of blocks fall back: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and to F16 when even
/// those do not fit; the 32-value types have no fallback (an error, as in llama.cpp).</item>
/// </list>
/// NOTE: llama.cpp counts attention V and FFN down tensors in the order it visits them: non-layer tensors first, then by
/// layer number, by name within a layer (its <c>weight_name_comparer</c>). <see cref="CompareNames"/> is that order, and
/// the quantized file is written in it too.
/// </remarks>
public static class TensorTypeRules
{
    /// <summary>The block type a preset quantizes to by default.</summary>
    public static GgmlType DefaultType(QuantizationPreset preset) => preset switch
    {
        QuantizationPreset.Q4_0 => GgmlType.Q4_0,
        QuantizationPreset.Q4_1 => GgmlType.Q4_1,
        QuantizationPreset.Q5_0 => GgmlType.Q5_0,
        QuantizationPreset.Q5_1 => GgmlType.Q5_1,
        QuantizationPreset.Q8_0 => GgmlType.Q8_0,
        QuantizationPreset.Q4_K_S or QuantizationPreset.Q4_K_M => GgmlType.Q4_K,
        QuantizationPreset.Q5_K_S or QuantizationPreset.Q5_K_M => GgmlType.Q5_K,
        QuantizationPreset.Q6_K => GgmlType.Q6_K,
        _ => throw new ArgumentOutOfRangeException(nameof(preset), preset, "unknown quantization preset"),
    };

    /// <summary>
    /// llama.cpp's tensor order: tensors outside <c>blk.N.</c> first, then by layer number, by ordinal name within each.
    /// </summary>
    public static int CompareNames(string a, string b)
    {
        int la = LayerOf(a), lb = LayerOf(b);
        return la != lb ? la.CompareTo(lb) : string.CompareOrdinal(a, b);
    }

    /// <summary>The N of a <c>blk.N.</c> name, or −1.</summary>
    internal static int LayerOf(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return -1;
        int i = 4, value = 0;
        bool digits = false;
        while (i < name.Length && char.IsAsciiDigit(name[i]) && value < 100_000_000)
        {
            value = value * 10 + (name[i++] - '0');
            digits = true;
        }
        return digits ? value : -1;
    }

    /// <summary>
    /// Decides every tensor's type. <paramref name="tensors"/> may come in any order; the result is in
    /// <see cref="CompareNames"/> order, which the decisions depend on.
    /// </summary>
    /// <exception cref="ArgumentException">A tensor's rows fit neither the preset's type nor a fallback.</exception>
    public static IReadOnlyList<TensorQuantization> Plan(IEnumerable<QuantizationInput> tensors, QuantizationPreset preset, QuantizationModelFacts facts) =>
        Plan(tensors, preset, facts, keepMisfits: false);

    /// <summary><see cref="Plan(IEnumerable{QuantizationInput}, QuantizationPreset, QuantizationModelFacts)"/>; with
    /// <paramref name="keepMisfits"/>, a tensor whose rows fit no type keeps its stored type instead of failing the plan.</summary>
    internal static IReadOnlyList<TensorQuantization> Plan(IEnumerable<QuantizationInput> tensors, QuantizationPreset preset, QuantizationModelFacts facts, bool keepMisfits)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentNullException.ThrowIfNull(facts);
        var sorted = new List<QuantizationInput>(tensors);
        sorted.Sort((x, y) => CompareNames(x.Name, y.Name));
        var state = new State(preset, facts);
        foreach (var t in sorted)
        {
            var category = Categorize(t.Name);
            if (category == Category.Output) state.TiedEmbeddings = false;
            if (category is Category.AttentionV or Category.AttentionQkv or Category.AttentionKvB) state.AttentionVCount++;
        }
        var result = new List<TensorQuantization>(sorted.Count);
        foreach (var t in sorted)
        {
            var type = t.Type;
            if (AllowsQuantization(t))
            {
                type = Choose(state, t);
                if (type == Misfit) type = keepMisfits ? t.Type : throw MisfitError(t, DefaultType(preset));
            }
            result.Add(new TensorQuantization(t.Name, t.Dimensions, t.Type, type));
        }
        return result;
    }

    private enum Category { TokenEmbedding, AttentionQ, AttentionV, AttentionK, AttentionQkv, AttentionKvB, AttentionOutput, FfnUp, FfnGate, FfnDown, Output, Other }

    private sealed class State(QuantizationPreset preset, QuantizationModelFacts facts)
    {
        public QuantizationPreset Preset { get; } = preset;
        public QuantizationModelFacts Facts { get; } = facts;
        public bool TiedEmbeddings { get; set; } = true;
        public int AttentionVIndex { get; set; }
        public int FfnDownIndex { get; set; }
        public int AttentionVCount { get; set; }
    }

    private static Category Categorize(string name)
    {
        if (name == "output.weight") return Category.Output;
        if (name is "token_embd.weight" or "per_layer_token_embd.weight") return Category.TokenEmbedding;
        if (name.Contains("attn_qkv.weight", StringComparison.Ordinal)) return Category.AttentionQkv;
        if (name.Contains("attn_kv_b.weight", StringComparison.Ordinal)) return Category.AttentionKvB;
        if (name.Contains("attn_v.weight", StringComparison.Ordinal)) return Category.AttentionV;
        if (name.Contains("attn_k.weight", StringComparison.Ordinal)) return Category.AttentionK;
        if (name.Contains("attn_q.weight", StringComparison.Ordinal)) return Category.AttentionQ;
        if (name.Contains("attn_output.weight", StringComparison.Ordinal)) return Category.AttentionOutput;
        if (name.Contains("ffn_up", StringComparison.Ordinal)) return Category.FfnUp;
        if (name.Contains("ffn_gate", StringComparison.Ordinal)) return Category.FfnGate;
        if (name.Contains("ffn_down", StringComparison.Ordinal)) return Category.FfnDown;
        return Category.Other;
    }

    private static readonly string[] NeverQuantized =
    [
        "_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight",
        "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight",
        "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
        "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", ".rel_pos", ".patch_embd", ".patch_merger",
    ];

    /// <summary>Whether llama.cpp's quantizer would quantize this tensor at all (otherwise it copies it).</summary>
    private static bool AllowsQuantization(QuantizationInput t)
    {
        // NOTE: ggml_n_dims ignores trailing dimensions of 1: a [64, 1] tensor is one-dimensional.
        int dims = 1;
        for (int i = t.Dimensions.Length - 1; i > 0; i--)
        {
            if (t.Dimensions[i] > 1)
            {
                dims = i + 1;
                break;
            }
        }
        if (dims < 2) return false;
        string name = t.Name;
        if (!name.EndsWith("weight", StringComparison.Ordinal)) return false;
        foreach (var s in NeverQuantized)
            if (name.Contains(s, StringComparison.Ordinal)) return false;
        return name is not ("position_embd.weight" or "token_types.weight");
    }

    private static bool UseMoreBits(int layer, int layers) =>
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    private static GgmlType Choose(State s, QuantizationInput t)
    {
        var preset = s.Preset;
        var facts = s.Facts;
        var category = Categorize(t.Name);
        bool falcon = facts.Architecture == "falcon";
        var type = DefaultType(preset);
        if (category == Category.Output || (s.TiedEmbeddings && category == Category.TokenEmbedding))
        {
            if (falcon || t.Dimensions[0] % GgmlTypeInfo.BlockElements(type) != 0) type = GgmlType.Q8_0;
            else if (type != GgmlType.Q8_0) type = GgmlType.Q6_K;
        }
        else if (category is Category.AttentionV or Category.AttentionQkv or Category.AttentionKvB)
        {
            if (preset is QuantizationPreset.Q4_K_M or QuantizationPreset.Q5_K_M && UseMoreBits(s.AttentionVIndex, s.AttentionVCount))
                type = GgmlType.Q6_K;
            else if (preset == QuantizationPreset.Q4_K_S && s.AttentionVIndex < 4) type = GgmlType.Q5_K;
            // llama.cpp's 70B rule (8 query heads per KV head): more bits for the small V projection.
            if (IsLlama70B(facts) && type is GgmlType.Q3_K or GgmlType.Q4_K) type = GgmlType.Q5_K;
            if (facts.ExpertCount == 8) type = GgmlType.Q8_0;
            s.AttentionVIndex++;
        }
        else if (category == Category.AttentionK)
        {
            if (facts.ExpertCount == 8) type = GgmlType.Q8_0;
        }
        else if (category == Category.FfnDown)
        {
            var (layer, layers) = LayerInfo(s.FfnDownIndex, facts, t.Name);
            if (preset == QuantizationPreset.Q4_K_M)
            {
                if (falcon) type = layer < layers / 16 ? GgmlType.Q6_K : UseMoreBits(layer, layers) ? GgmlType.Q5_K : GgmlType.Q4_K;
                else if (UseMoreBits(layer, layers)) type = GgmlType.Q6_K;
            }
            else if (preset == QuantizationPreset.Q5_K_M && UseMoreBits(layer, layers)) type = GgmlType.Q6_K;
            else if (preset == QuantizationPreset.Q4_K_S && !falcon && layer < layers / 8) type = GgmlType.Q5_K;
            s.FfnDownIndex++;
        }
        else if (category == Category.AttentionOutput)
        {
            if (!falcon && facts.ExpertCount == 8 && preset is QuantizationPreset.Q4_K_S or QuantizationPreset.Q4_K_M) type = GgmlType.Q5_K;
        }
        return Fallback(t, type);
    }

    private static bool IsLlama70B(QuantizationModelFacts f) => f.Architecture == "llama" && f.LayerCount == 80 && f.HeadCount != f.KvHeadCount;

    private static (int Layer, int Layers) LayerInfo(int index, QuantizationModelFacts facts, string name)
    {
        if (facts.ExpertCount <= 1) return (index, facts.LayerCount);
        // NOTE: expert tensors are not in layer order in every model, so the layer comes from the name (as llama.cpp does).
        int layer = LayerOf(name);
        if (layer < 0 || layer >= facts.LayerCount)
            throw new ArgumentException($"tensor '{name}' has no layer number in [0, {facts.LayerCount})");
        return (layer, facts.LayerCount);
    }

    private static GgmlType Fallback(QuantizationInput t, GgmlType type)
    {
        long cols = t.Dimensions[0];
        if (cols % GgmlTypeInfo.BlockElements(type) == 0) return type;
        var fallback = type switch
        {
            GgmlType.Q4_K => GgmlType.Q5_0,
            GgmlType.Q5_K => GgmlType.Q5_1,
            GgmlType.Q6_K => GgmlType.Q8_0,
            _ => Misfit,
        };
        if (fallback == Misfit) return Misfit;
        return cols % GgmlTypeInfo.BlockElements(fallback) == 0 ? fallback : GgmlType.F16;
    }

    /// <summary>Marks a tensor whose rows fit neither the chosen type nor a fallback (llama.cpp gives up on the model).</summary>
    private const GgmlType Misfit = (GgmlType)uint.MaxValue;

    private static ArgumentException MisfitError(QuantizationInput t, GgmlType type) =>
        new($"tensor '{t.Name}' has rows of {t.Dimensions[0]} values, not a multiple of the {type} block size {GgmlTypeInfo.BlockElements(type)}, and {type} has no fallback type");
}
