using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// qwen3: the llama block with per-head RMSNorm of Q and K before RoPE (<c>attn_q_norm</c>, <c>attn_k_norm</c>, one
/// [headDim] weight each shared by all heads), no Q/K/V biases, NeoX RoPE, and a head dimension of its own
/// (<c>attention.key_length</c> / <c>head_dim</c>, not necessarily dim / heads).
/// </summary>
internal sealed class Qwen3Architecture : ModelArchitecture
{
    public static Qwen3Architecture Instance { get; } = new();

    public override string Name => "qwen3";

    public override IReadOnlyList<string> HfClassNames { get; } = ["Qwen3ForCausalLM"];

    public override int HfDefaultContextLength => 32768;

    public override TensorNameMap TensorNames { get; } = LlamaArchitecture.Names.With(
        [],
        [
            ("self_attn.q_norm.weight", "attn_q_norm.weight"),
            ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        ]);

    protected override int Emit(GraphBuilder b) => Blocks.PreNormDecoder(b, qkNorm: true);
}
