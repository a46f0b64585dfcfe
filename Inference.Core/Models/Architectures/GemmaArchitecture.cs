using System.Text.Json;
using Inference.Loading;
using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// gemma2 and gemma3: the embedding scaled by √dim; blocks of attention and a GeGLU feed-forward (GELU's tanh
/// approximation), each with an RMSNorm before and after it (<c>post_attention_norm</c>, <c>post_ffw_norm</c>);
/// interleaved sliding-window and global layers; NeoX RoPE; an output head tied to the embedding.
/// gemma2: attention and final logit soft-capping, every even layer local. gemma3: per-head Q/K RMSNorm, five local
/// layers in six with their own RoPE base (10 000, unscaled) beside the global layers' (1 000 000, linear scaling).
/// </summary>
/// <remarks>
/// Hugging Face stores gemma's RMSNorm weights less 1 (the model applies 1 + w); llama.cpp's converter adds the 1,
/// so GGUF files hold the applied weights (<see cref="HfNormOffset"/>). The attention scale is
/// <c>query_pre_attn_scalar</c>^−½ in <c>config.json</c>; GGUF does not store it and llama.cpp takes 1/√headDim, or
/// 1/√(dim/heads) for the 27B models (known by their layer count), as here.
/// </remarks>
internal sealed class GemmaArchitecture : ModelArchitecture
{
    private readonly bool _gemma3;

    private GemmaArchitecture(bool gemma3)
    {
        _gemma3 = gemma3;
        Name = gemma3 ? "gemma3" : "gemma2";
        HfClassNames = gemma3 ? ["Gemma3ForCausalLM"] : ["Gemma2ForCausalLM"];
        HfModelTypes = gemma3 ? ["gemma3", "gemma3_text"] : ["gemma2"];
        var layers = new List<(string Hf, string Gguf)>
        {
            ("input_layernorm.weight", "attn_norm.weight"),
            ("self_attn.q_proj.weight", "attn_q.weight"),
            ("self_attn.k_proj.weight", "attn_k.weight"),
            ("self_attn.v_proj.weight", "attn_v.weight"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
            ("post_attention_layernorm.weight", "post_attention_norm.weight"),
            ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
            ("mlp.gate_proj.weight", "ffn_gate.weight"),
            ("mlp.up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
            ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        };
        if (gemma3)
        {
            layers.Add(("self_attn.q_norm.weight", "attn_q_norm.weight"));
            layers.Add(("self_attn.k_norm.weight", "attn_k_norm.weight"));
        }
        TensorNames = new TensorNameMap(
            [
                ("model.embed_tokens.weight", "token_embd.weight"),
                ("model.norm.weight", "output_norm.weight"),
                ("lm_head.weight", "output.weight"),
            ],
            layers);
    }

    /// <summary>gemma2.</summary>
    public static GemmaArchitecture Gemma2 { get; } = new(gemma3: false);

    /// <summary>gemma3 (text).</summary>
    public static GemmaArchitecture Gemma3 { get; } = new(gemma3: true);

    public override string Name { get; }

    public override IReadOnlyList<string> HfClassNames { get; }

    public override IReadOnlyList<string> HfModelTypes { get; }

    public override int HfDefaultContextLength => 8192;

    /// <summary>gemma3's image-text checkpoints (Gemma 3 4B, 12B, 27B): the text model runs, the SigLIP vision tower and projector are ignored.</summary>
    public override string? HfMultimodalClassName => _gemma3 ? "Gemma3ForConditionalGeneration" : null;

    /// <summary>transformers' <c>Gemma3TextConfig</c> defaults (the 1B-like shapes, 4096 window, bases 10⁶ and 10⁴, no soft-capping).</summary>
    public override string HfTextConfigDefaults => _gemma3
        ? """
          {"model_type": "gemma3_text", "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
           "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
           "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "bos_token_id": 2, "eos_token_id": 1, "tie_word_embeddings": true,
           "rope_theta": 1000000.0, "attention_bias": false, "query_pre_attn_scalar": 256, "sliding_window": 4096,
           "final_logit_softcapping": null, "attn_logit_softcapping": null, "rope_scaling": null, "rope_local_base_freq": 10000.0,
           "sliding_window_pattern": 6}
          """
        : "{}";

    public override IReadOnlyList<string> HfActivations { get; } = ["gelu_pytorch_tanh", "gelu"];

    public override TensorNameMap TensorNames { get; }

    /// <summary>Local layers: gemma2's even layers, gemma3's five in six ((l + 1) mod 6 ≠ 0).</summary>
    private bool IsLocal(int layer) => _gemma3 ? (layer + 1) % 6 != 0 : layer % 2 == 0;

    private int[] Windows(int layers, int window)
    {
        var w = new int[layers];
        for (int l = 0; l < layers; l++) w[l] = IsLocal(l) ? window : 0;
        return w;
    }

    /// <summary>llama.cpp's attention scale: 1/√headDim, or 1/√(dim/heads) for the 27B models (46 and 62 layers).</summary>
    private float GgufAttentionScale(ModelConfig c) =>
        1f / MathF.Sqrt(c.LayerCount == (_gemma3 ? 62 : 46) ? c.Dim / c.HeadCount : c.HeadDim);

    public override float HfNormOffset(string ggufName) => ggufName.EndsWith("norm.weight", StringComparison.Ordinal) ? 1f : 0f;

    public override ModelConfig ReadGguf(GgufFile gguf, ModelConfig config)
    {
        string a = Name;
        long? window = gguf.GetInteger($"{a}.attention.sliding_window");
        if (window is null && _gemma3) throw gguf.Bad(-1, $"metadata '{a}.attention.sliding_window' is missing");
        long w = window ?? 4096; // llama.cpp's default for gemma2
        if (w < 1 || w > int.MaxValue) throw gguf.Bad(-1, $"'{a}.attention.sliding_window' = {w} is out of range");
        var c = config with
        {
            SlidingWindows = Windows(config.LayerCount, (int)w),
            AttentionScale = GgufAttentionScale(config),
        };
        if (_gemma3) return c with { SlidingWindowRopeBase = 10000f };
        // NOTE: llama.cpp always soft-caps gemma2, 50 and 30 unless the file says otherwise.
        float attnCap = (float)(gguf.GetFloat($"{a}.attn_logit_softcapping") ?? 50.0);
        float finalCap = (float)(gguf.GetFloat($"{a}.final_logit_softcapping") ?? 30.0);
        if (!(attnCap > 0) || !(finalCap > 0)) throw gguf.Bad(-1, "gemma2 logit soft-capping must be positive");
        return c with { AttentionLogitSoftCap = attnCap, FinalLogitSoftCap = finalCap };
    }

    public override ModelConfig ReadHf(string path, JsonElement root, ModelConfig config)
    {
        int window = HfCheckpointJson.Int(path, root, "sliding_window", 1, int.MaxValue) ?? (_gemma3 ? 512 : 4096);
        var windows = Windows(config.LayerCount, window);
        if (HfCheckpointJson.Find(root, "layer_types") is JsonElement types)
        {
            if (types.ValueKind != JsonValueKind.Array || types.GetArrayLength() != config.LayerCount)
                throw new ModelFormatException(path, -1, $"'layer_types' must list {config.LayerCount} layers");
            int l = 0;
            foreach (var t in types.EnumerateArray())
            {
                windows[l++] = t.ValueKind == JsonValueKind.String ? t.GetString() switch
                {
                    "sliding_attention" => window,
                    "full_attention" => 0,
                    _ => throw new ModelFormatException(path, -1, $"unknown layer type '{t}'"),
                } : throw new ModelFormatException(path, -1, "'layer_types' must hold strings");
            }
        }
        else if (_gemma3 && HfCheckpointJson.Int(path, root, "sliding_window_pattern", 1, 1 << 16) is int pattern && pattern != 6)
        {
            for (int l = 0; l < windows.Length; l++) windows[l] = (l + 1) % pattern != 0 ? window : 0;
        }
        double scalar = HfCheckpointJson.Number(path, root, "query_pre_attn_scalar") ?? config.HeadDim;
        if (!(scalar > 0)) throw new ModelFormatException(path, -1, "'query_pre_attn_scalar' must be positive");
        var c = config with { SlidingWindows = windows, AttentionScale = 1f / MathF.Sqrt((float)scalar) };
        if (_gemma3)
        {
            double local = HfCheckpointJson.Number(path, root, "rope_local_base_freq") ?? 10000.0;
            if (!(local > 0)) throw new ModelFormatException(path, -1, "'rope_local_base_freq' must be positive");
            c = c with { SlidingWindowRopeBase = (float)local };
        }
        // A cap absent from config.json takes transformers' default (gemma2: 50 and 30); null turns it off.
        return c with
        {
            AttentionLogitSoftCap = Cap(path, root, "attn_logit_softcapping", _gemma3 ? 0 : 50),
            FinalLogitSoftCap = Cap(path, root, "final_logit_softcapping", _gemma3 ? 0 : 30),
        };
    }

    private static float Cap(string path, JsonElement root, string key, float fallback)
    {
        if (!root.TryGetProperty(key, out var v)) return fallback;
        double? cap = HfCheckpointJson.Number(path, root, key);
        if (cap is < 0) throw new ModelFormatException(path, -1, $"'{key}' must not be negative");
        return (float)(cap ?? 0);
    }

    public override ModelConfig CompleteConfig(ModelConfig c, int slidingWindow)
    {
        c = c with { SlidingWindows = Windows(c.LayerCount, slidingWindow > 0 ? slidingWindow : 4), AttentionScale = GgufAttentionScale(c) };
        return _gemma3
            ? c with { SlidingWindowRopeBase = 10000f }
            : c with { AttentionLogitSoftCap = 50f, FinalLogitSoftCap = 30f };
    }

    public override void WriteGgufMetadata(GgufWriter w, ModelConfig c)
    {
        base.WriteGgufMetadata(w, c);
        int window = 0;
        if (c.SlidingWindows is { } windows)
            foreach (int lw in windows) window = Math.Max(window, lw);
        if (window > 0) w.AddUInt32($"{Name}.attention.sliding_window", (uint)window);
        if (!_gemma3 && c.AttentionLogitSoftCap > 0 && c.FinalLogitSoftCap > 0)
        {
            w.AddFloat32($"{Name}.attn_logit_softcapping", c.AttentionLogitSoftCap);
            w.AddFloat32($"{Name}.final_logit_softcapping", c.FinalLogitSoftCap);
        }
    }

    protected override int Emit(GraphBuilder b)
    {
        var c = b.Config;
        int x = b.Buffer("x", c.Dim), xb = b.Buffer("xb", c.Dim);
        int embedding = Blocks.Embedding(b, x);
        b.Scale(x, MathF.Sqrt(c.Dim));
        int global = b.RopeTable(Blocks.DefaultRope(b));
        int local = c.SlidingWindowRopeBase > 0 ? b.RopeTable(Blocks.DefaultRope(b, c.SlidingWindowRopeBase)) : global;
        for (int l = 0; l < c.LayerCount; l++)
        {
            b.Layer = l;
            Blocks.SelfAttention(b, x, xb, c.LayerSlidingWindow(l) > 0 ? local : global, qkNorm: _gemma3, postNorm: true);
            Blocks.SwiGluFeedForward(b, x, xb, gelu: true, postNorm: true);
        }
        return Blocks.OutputHead(b, x, embedding);
    }
}
