namespace Inference.Loading;

/// <summary>
/// Tensor names of Hugging Face llama/qwen2 checkpoints and their GGUF equivalents (the names llama.cpp's converter writes).
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
    private static readonly (string Hf, string Gguf)[] LayerSuffixes =
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
    ];

    private static readonly (string Hf, string Gguf)[] Globals =
    [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];

    /// <summary>The Hugging Face name of GGUF tensor <paramref name="ggufName"/>, or null when it has none.</summary>
    public static string? ToHf(string ggufName)
    {
        ArgumentNullException.ThrowIfNull(ggufName);
        foreach (var (hf, gguf) in Globals)
            if (gguf == ggufName) return hf;
        if (!TrySplitLayer(ggufName, "blk.", out int layer, out string suffix)) return null;
        foreach (var (hf, gguf) in LayerSuffixes)
            if (gguf == suffix) return $"model.layers.{layer}.{hf}";
        return null;
    }

    /// <summary>The GGUF name of Hugging Face tensor <paramref name="hfName"/>, or null when it has none.</summary>
    public static string? ToGguf(string hfName)
    {
        ArgumentNullException.ThrowIfNull(hfName);
        foreach (var (hf, gguf) in Globals)
            if (hf == hfName) return gguf;
        if (!TrySplitLayer(hfName, "model.layers.", out int layer, out string suffix)) return null;
        foreach (var (hf, gguf) in LayerSuffixes)
            if (hf == suffix) return $"blk.{layer}.{gguf}";
        return null;
    }

    private static bool TrySplitLayer(string name, string prefix, out int layer, out string suffix)
    {
        layer = -1;
        suffix = "";
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return false;
        int dot = name.IndexOf('.', prefix.Length);
        if (dot < 0) return false;
        var digits = name.AsSpan(prefix.Length, dot - prefix.Length);
        if (digits.IsEmpty || (digits.Length > 1 && digits[0] == '0')) return false;
        foreach (char c in digits)
            if (c is < '0' or > '9') return false;
        if (!int.TryParse(digits, System.Globalization.NumberStyles.None, null, out layer)) return false;
        suffix = name[(dot + 1)..];
        return true;
    }
}
