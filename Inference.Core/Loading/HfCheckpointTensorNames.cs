using Inference.Models.Architectures;

namespace Inference.Loading;

/// <summary>
/// Tensor names of Hugging Face llama/qwen2 checkpoints and their GGUF equivalents (the names llama.cpp's converter writes);
/// every architecture keeps its own map (<c>ModelArchitecture.TensorNames</c>), of which this is the llama family's.
/// </summary>
/// <remarks>
/// <code>
/// model.embed_tokens.weight                        token_embd.weight
/// model.layers.N.input_layernorm.weight            blk.N.attn_norm.weight
/// model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}   blk.N.attn_{q,k,v}.{weight,bias}
/// model.layers.N.self_attn.o_proj.weight           blk.N.attn_output.weight
/// model.layers.N.post_attention_layernorm.weight   blk.N.ffn_norm.weight
/// model.layers.N.mlp.{gate,up,down}_proj.weight    blk.N.ffn_{gate,up,down}.weight
/// model.norm.weight                                output_norm.weight
/// lm_head.weight                                   output.weight
/// </code>
/// </remarks>
public static class HfCheckpointTensorNames
{
    /// <summary>The Hugging Face name of GGUF tensor <paramref name="ggufName"/> in a llama or qwen2 model, or null when it has none.</summary>
    public static string? ToHf(string ggufName)
    {
        ArgumentNullException.ThrowIfNull(ggufName);
        return LlamaArchitecture.Names.ToHf(ggufName);
    }

    /// <summary>The GGUF name of Hugging Face tensor <paramref name="hfName"/> in a llama or qwen2 model, or null when it has none.</summary>
    public static string? ToGguf(string hfName)
    {
        ArgumentNullException.ThrowIfNull(hfName);
        return LlamaArchitecture.Names.ToGguf(hfName);
    }
}
