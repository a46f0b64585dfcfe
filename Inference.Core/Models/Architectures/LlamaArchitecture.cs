using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// llama and qwen2: pre-norm blocks of RoPE self-attention (Q/K/V biases where present: qwen2 always) and a SwiGLU
/// feed-forward, a final RMSNorm and an output head (tied to the embedding when <c>output.weight</c> is absent).
/// </summary>
internal sealed class LlamaArchitecture : ModelArchitecture
{
    private readonly bool _alwaysBiased;

    private LlamaArchitecture(string name, string hfClass, RopeLayout ggufRope, int hfContext, bool alwaysBiased)
    {
        _alwaysBiased = alwaysBiased;
        Name = name;
        HfClassNames = [hfClass];
        GgufRopeLayout = ggufRope;
        HfDefaultContextLength = hfContext;
    }

    /// <summary>llama (GGUF Q/K rows permuted for adjacent-pair RoPE).</summary>
    public static LlamaArchitecture Llama { get; } = new("llama", "LlamaForCausalLM", RopeLayout.Normal, 2048, alwaysBiased: false);

    /// <summary>qwen2 (Q/K/V biases; NeoX RoPE in GGUF too).</summary>
    public static LlamaArchitecture Qwen2 { get; } = new("qwen2", "Qwen2ForCausalLM", RopeLayout.Neox, 32768, alwaysBiased: true);

    public override string Name { get; }

    public override IReadOnlyList<string> HfClassNames { get; }

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

    public override TensorNameMap TensorNames => Names;

    /// <inheritdoc />
    public override ModelConfig ReadHf(string path, System.Text.Json.JsonElement root, ModelConfig config) =>
        _alwaysBiased ? config with { HasAttentionBias = true } : config;

    protected override int Emit(GraphBuilder b) => Blocks.PreNormDecoder(b);
}
