using Inference.Loading;
using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// llama and qwen2: pre-norm blocks of RoPE self-attention (Q/K/V biases where present: qwen2 always) and a SwiGLU
/// feed-forward, a final RMSNorm and an output head (tied to the embedding when <c>output.weight</c> is absent).
/// A llama with experts (<c>llama.expert_count</c>; Hugging Face <c>MixtralForCausalLM</c>) has a mixture-of-experts
/// feed-forward instead: the top-k of <c>num_local_experts</c> experts of <c>intermediate_size</c>, their weights renormalised.
/// Hugging Face <c>mistral</c> and <c>mixtral</c> checkpoints with a <c>sliding_window</c> attend over that window in
/// every layer (<see cref="ModelConfig.SlidingWindows"/>). GGUF llama files carry no window (llama.cpp's converter
/// drops it and llama.cpp attends over the whole context), so a converted file runs without it, as in llama.cpp.
/// </summary>
internal sealed class LlamaArchitecture : ModelArchitecture
{
    private readonly bool _alwaysBiased;

    private LlamaArchitecture(string name, string[] hfClasses, string[] hfModelTypes, RopeLayout ggufRope, int hfContext, bool alwaysBiased)
    {
        _alwaysBiased = alwaysBiased;
        Name = name;
        HfClassNames = hfClasses;
        HfModelTypes = hfModelTypes;
        GgufRopeLayout = ggufRope;
        HfDefaultContextLength = hfContext;
    }

    /// <summary>llama (GGUF Q/K rows permuted for adjacent-pair RoPE).</summary>
    public static LlamaArchitecture Llama { get; } = new("llama", ["LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM"], ["llama", "mistral", "mixtral"],
        RopeLayout.Normal, 2048, alwaysBiased: false);

    /// <summary>qwen2 (Q/K/V biases; NeoX RoPE in GGUF too).</summary>
    public static LlamaArchitecture Qwen2 { get; } = new("qwen2", ["Qwen2ForCausalLM"], ["qwen2"], RopeLayout.Neox, 32768, alwaysBiased: true);

    public override string Name { get; }

    public override IReadOnlyList<string> HfClassNames { get; }

    public override IReadOnlyList<string> HfModelTypes { get; }

    public override RopeLayout GgufRopeLayout { get; }

    public override int HfDefaultContextLength { get; }

    /// <summary>The llama-family names, shared by the architectures built on its blocks.</summary>
    public static TensorNameMap Names { get; } = new(
        [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ],
        [
            ("input_layernorm.weight", "attn_norm.weight"),
            ("self_attn.q_proj.weight", "attn_q.weight"),
            ("self_attn.k_proj.weight", "attn_k.weight"),
            ("self_attn.v_proj.weight", "attn_v.weight"),
            ("self_attn.q_proj.bias", "attn_q.bias"),
            ("self_attn.k_proj.bias", "attn_k.bias"),
            ("self_attn.v_proj.bias", "attn_v.bias"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
            ("mlp.gate_proj.weight", "ffn_gate.weight"),
            ("mlp.up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
        ]);

    /// <summary>Mixtral's router and experts.</summary>
    private static readonly TensorNameMap LlamaNames = Names.With(
        [],
        [("block_sparse_moe.gate.weight", "ffn_gate_inp.weight")],
        [
            ("block_sparse_moe.experts.{0}.w1.weight", "ffn_gate_exps.weight"),
            ("block_sparse_moe.experts.{0}.w3.weight", "ffn_up_exps.weight"),
            ("block_sparse_moe.experts.{0}.w2.weight", "ffn_down_exps.weight"),
        ]);

    public override TensorNameMap TensorNames => _alwaysBiased ? Names : LlamaNames;

    /// <inheritdoc />
    public override bool MayHaveExperts => !_alwaysBiased;

    /// <inheritdoc />
    public override ModelConfig ReadHf(string path, System.Text.Json.JsonElement root, ModelConfig config)
    {
        if (_alwaysBiased) return config with { HasAttentionBias = true };
        // Mistral and Mixtral: a sliding window in every layer when config.json gives one (null or absent: none).
        if (HfCheckpointJson.String(path, root, "model_type") is "mistral" or "mixtral"
            && HfCheckpointJson.Int(path, root, "sliding_window", 1, int.MaxValue) is int window)
        {
            var windows = new int[config.LayerCount];
            Array.Fill(windows, window);
            config = config with { SlidingWindows = windows };
        }
        // Mixtral: num_local_experts experts of intermediate_size, num_experts_per_tok per token (transformers' default 2),
        // the top-k weights renormalised.
        if (HfCheckpointJson.Int(path, root, "num_local_experts", 1, 1 << 16) is not int experts) return config;
        int used = HfCheckpointJson.Int(path, root, "num_experts_per_tok", 1, experts) ?? Math.Min(2, experts);
        return config with { ExpertCount = experts, ExpertUsedCount = used, ExpertWeightsNorm = true };
    }

    /// <inheritdoc />
    public override ModelConfig CompleteConfig(ModelConfig c, int slidingWindow) =>
        c.IsMixtureOfExperts
            ? c with { ExpertUsedCount = c.ExpertUsedCount > 0 ? c.ExpertUsedCount : Math.Min(2, c.ExpertCount), ExpertWeightsNorm = true, ExpertFfnDim = 0, SharedExpertFfnDim = 0 }
            : c with { ExpertCount = 0, ExpertUsedCount = 0, ExpertFfnDim = 0, SharedExpertFfnDim = 0 };

    protected override int Emit(GraphBuilder b) => Blocks.PreNormDecoder(b);
}
