using System.Text.Json;
using Inference.Loading;
using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// qwen2moe and qwen3moe: qwen2's and qwen3's attention blocks with a mixture-of-experts feed-forward: a router
/// (<c>ffn_gate_inp</c>) picks the top-k of the experts by softmax probability, each a SwiGLU of
/// <c>expert_feed_forward_length</c> (Hugging Face <c>moe_intermediate_size</c>) stacked in <c>ffn_{gate,up,down}_exps</c>.
/// qwen2moe: Q/K/V biases, the top-k probabilities as they are, and a shared expert (<c>ffn_*_shexp</c>, width
/// <c>expert_shared_feed_forward_length</c>) on every token, scaled by σ(<c>ffn_gate_inp_shexp</c> · x). qwen3moe: per-head
/// Q/K RMSNorm, the top-k probabilities renormalised to sum to 1.
/// </summary>
/// <remarks>
/// llama.cpp fixes the renormalisation by architecture (qwen2moe off, qwen3moe on); transformers reads
/// <c>norm_topk_prob</c> (default false for both). A GGUF file's <c>{arch}.expert_weights_norm</c>, where present (the
/// converter here writes it), overrides the architecture's default. Layers may be dense (transformers: a layer in
/// <c>mlp_only_layers</c>, or one whose number + 1 is not a multiple of <c>decoder_sparse_step</c>, runs a SwiGLU of
/// <c>intermediate_size</c>, <c>mlp.{gate,up,down}_proj</c>); llama.cpp has no key for them and expects a router in every
/// layer, so a GGUF file's dense layers are those that store <c>ffn_{gate,up,down}</c> and no <c>ffn_gate_inp</c>.
/// </remarks>
internal sealed class QwenMoeArchitecture : ModelArchitecture
{
    private readonly bool _qwen3;

    private QwenMoeArchitecture(bool qwen3)
    {
        _qwen3 = qwen3;
        Name = qwen3 ? "qwen3moe" : "qwen2moe";
        HfClassNames = qwen3 ? ["Qwen3MoeForCausalLM"] : ["Qwen2MoeForCausalLM"];
        var layers = new List<(string Hf, string Gguf)> { ("mlp.gate.weight", "ffn_gate_inp.weight") };
        if (qwen3)
        {
            layers.Add(("self_attn.q_norm.weight", "attn_q_norm.weight"));
            layers.Add(("self_attn.k_norm.weight", "attn_k_norm.weight"));
        }
        else
        {
            layers.Add(("mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"));
            layers.Add(("mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight"));
            layers.Add(("mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight"));
            layers.Add(("mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"));
        }
        TensorNames = LlamaArchitecture.Names.With([], layers,
        [
            ("mlp.experts.{0}.gate_proj.weight", "ffn_gate_exps.weight"),
            ("mlp.experts.{0}.up_proj.weight", "ffn_up_exps.weight"),
            ("mlp.experts.{0}.down_proj.weight", "ffn_down_exps.weight"),
        ]);
    }

    /// <summary>qwen2moe (Qwen1.5-MoE, Qwen2-57B-A14B).</summary>
    public static QwenMoeArchitecture Qwen2Moe { get; } = new(qwen3: false);

    /// <summary>qwen3moe (Qwen3-30B-A3B, Qwen3-235B-A22B).</summary>
    public static QwenMoeArchitecture Qwen3Moe { get; } = new(qwen3: true);

    public override string Name { get; }

    public override IReadOnlyList<string> HfClassNames { get; }

    public override int HfDefaultContextLength => 32768;

    public override TensorNameMap TensorNames { get; }

    public override bool MayHaveExperts => true;

    public override ModelConfig ReadGguf(GgufFile gguf, ModelConfig config)
    {
        string a = Name;
        if (!config.IsMixtureOfExperts) throw gguf.Bad(-1, $"metadata '{a}.expert_count' is missing or 0");
        int Width(string key, int fallback)
        {
            long v = gguf.GetInteger($"{a}.{key}") ?? fallback;
            if (v < 1 || v > 1 << 20) throw gguf.Bad(-1, $"'{a}.{key}' = {v} is outside [1, {1 << 20}]");
            return (int)v;
        }
        // NOTE: llama.cpp's fallbacks when the widths are absent: n_ff / n_expert_used for the experts, n_ff for the shared one.
        var dense = new List<int>();
        for (int l = 0; l < config.LayerCount; l++)
            if (gguf.FindTensor($"blk.{l}.ffn_gate_inp.weight") is null && gguf.FindTensor($"blk.{l}.ffn_gate.weight") is not null) dense.Add(l);
        var c = config with
        {
            ExpertFfnDim = Width("expert_feed_forward_length", config.FfnDim / config.ExpertUsedCount),
            ExpertWeightsNorm = gguf.GetBool($"{a}.expert_weights_norm") ?? _qwen3,
            DenseLayers = dense.Count > 0 ? dense : null,
        };
        return _qwen3 ? c : c with { SharedExpertFfnDim = Width("expert_shared_feed_forward_length", config.FfnDim) };
    }

    public override ModelConfig ReadHf(string path, JsonElement root, ModelConfig config)
    {
        int experts = HfCheckpointJson.RequiredInt(path, root, "num_experts", 1, 1 << 16);
        int used = HfCheckpointJson.RequiredInt(path, root, "num_experts_per_tok", 1, experts);
        int width = HfCheckpointJson.RequiredInt(path, root, "moe_intermediate_size", 1, 1 << 20);
        var c = config with
        {
            DenseLayers = DenseLayers(path, root, config.LayerCount),
            ExpertCount = experts,
            ExpertUsedCount = used,
            ExpertFfnDim = width,
            ExpertWeightsNorm = HfCheckpointJson.Bool(path, root, "norm_topk_prob") ?? false,
        };
        if (_qwen3) return c;
        return c with
        {
            HasAttentionBias = true,
            SharedExpertFfnDim = HfCheckpointJson.RequiredInt(path, root, "shared_expert_intermediate_size", 1, 1 << 20),
        };
    }

    /// <summary>
    /// transformers' dense layers: those listed in <c>mlp_only_layers</c> and those whose number + 1 is not a multiple of
    /// <c>decoder_sparse_step</c> (default 1: none); null when there are none.
    /// </summary>
    private static List<int>? DenseLayers(string path, JsonElement root, int layers)
    {
        int step = HfCheckpointJson.Int(path, root, "decoder_sparse_step", 1, int.MaxValue) ?? 1;
        var dense = new bool[layers];
        for (int l = 0; l < layers; l++) dense[l] = (l + 1) % step != 0;
        if (HfCheckpointJson.Find(root, "mlp_only_layers") is JsonElement list && list.ValueKind != JsonValueKind.Null)
        {
            if (list.ValueKind != JsonValueKind.Array) throw new ModelFormatException(path, -1, "'mlp_only_layers' must be a list of layer numbers");
            foreach (var e in list.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int l) || l < 0 || l >= layers)
                    throw new ModelFormatException(path, -1, $"'mlp_only_layers' holds {e.GetRawText()}, expected layer numbers 0 … {layers - 1}");
                dense[l] = true;
            }
        }
        var result = new List<int>();
        for (int l = 0; l < layers; l++)
            if (dense[l]) result.Add(l);
        return result.Count > 0 ? result : null;
    }

    public override ModelConfig CompleteConfig(ModelConfig c, int slidingWindow)
    {
        int experts = c.ExpertCount > 0 ? c.ExpertCount : 4;
        c = c with
        {
            ExpertCount = experts,
            ExpertUsedCount = c.ExpertUsedCount > 0 ? c.ExpertUsedCount : Math.Min(2, experts),
            ExpertFfnDim = c.ExpertFfnDim > 0 ? c.ExpertFfnDim : c.FfnDim,
            ExpertWeightsNorm = _qwen3,
        };
        return _qwen3 ? c with { SharedExpertFfnDim = 0 } : c with { HasAttentionBias = true, SharedExpertFfnDim = c.SharedExpertFfnDim > 0 ? c.SharedExpertFfnDim : c.FfnDim };
    }

    public override void WriteGgufMetadata(GgufWriter w, ModelConfig c)
    {
        base.WriteGgufMetadata(w, c);
        w.AddUInt32($"{Name}.expert_feed_forward_length", (uint)c.ExpertWidth);
        if (c.SharedExpertFfnDim > 0) w.AddUInt32($"{Name}.expert_shared_feed_forward_length", (uint)c.SharedExpertFfnDim);
        if (c.ExpertWeightsNorm != _qwen3) w.AddBool($"{Name}.expert_weights_norm", c.ExpertWeightsNorm);
    }

    protected override int Emit(GraphBuilder b) => Blocks.PreNormDecoder(b, qkNorm: _qwen3);
}
