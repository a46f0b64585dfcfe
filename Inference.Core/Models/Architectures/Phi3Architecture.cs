using System.Text.Json;
using Inference.Loading;
using Inference.Models.Graph;

namespace Inference.Models.Architectures;

/// <summary>
/// phi3 (Phi-3, Phi-3.5, Phi-4-mini): the llama block with Q, K and V fused in one <c>attn_qkv</c> matrix and the gate and
/// up projections in one <c>ffn_up</c> (gate first), read as row ranges of the stored tensors; NeoX RoPE, partial where
/// <c>partial_rotary_factor</c> says; LongRoPE ("su") scaling: per-dimension divisors (<c>rope_factors_short</c> within
/// the original context, <c>rope_factors_long</c> beyond it) and cos/sin times √(1 + ln(ctx / orig) / ln(orig)).
/// </summary>
/// <remarks>
/// Phi-3's sliding window is not applied, as llama.cpp does not apply it either. Which factors apply is chosen by the
/// engine's context window (<see cref="ModelConfig.ForContextWindow"/>), as llama.cpp chooses by its context size.
/// </remarks>
internal sealed class Phi3Architecture : ModelArchitecture
{
    private const string ShortFactors = "rope_factors_short.weight", LongFactors = "rope_factors_long.weight";

    public static Phi3Architecture Instance { get; } = new();

    public override string Name => "phi3";

    public override IReadOnlyList<string> HfClassNames { get; } = ["Phi3ForCausalLM"];

    public override int HfDefaultContextLength => 4096;

    public override TensorNameMap TensorNames { get; } = new(
        [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ],
        [
            ("input_layernorm.weight", "attn_norm.weight"),
            ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
            ("mlp.gate_up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
        ]);

    public override IReadOnlyList<(string Name, int Length)> ComputedVectors(ModelConfig config) =>
        config.RopeScaling == RopeScaling.LongRope ? [(LongFactors, config.RopeDim / 2), (ShortFactors, config.RopeDim / 2)] : [];

    public override ModelConfig ReadHf(string path, JsonElement root, ModelConfig config)
    {
        if (HfCheckpointJson.Number(path, root, "partial_rotary_factor") is double partial)
        {
            int ropeDim = (int)(config.HeadDim * partial);
            if (!(partial > 0 && partial <= 1) || ropeDim < 2 || ropeDim % 2 != 0)
                throw new ModelFormatException(path, -1, $"'partial_rotary_factor' {partial} does not give an even rotated width of head {config.HeadDim}");
            config = config with { RopeDim = ropeDim };
        }
        if (config.RopeScaling != RopeScaling.LongRope) return config;
        int original = HfCheckpointJson.Int(path, root, "original_max_position_embeddings", 1, 1 << 24) ?? config.ContextLength;
        double scale = (double)config.ContextLength / original;
        float attnFactor = scale > 1 ? (float)Math.Sqrt(1 + Math.Log(scale) / Math.Log(original)) : 1f;
        return config with { RopeOriginalContextLength = original, RopeAttentionFactor = attnFactor };
    }

    public override IReadOnlyDictionary<string, float[]> ReadHfVectors(string path, JsonElement root, ModelConfig config)
    {
        if (config.RopeScaling != RopeScaling.LongRope) return new Dictionary<string, float[]>();
        var rs = HfCheckpointJson.Find(root, "rope_scaling")!.Value;
        float[] Factors(string key)
        {
            if (HfCheckpointJson.Find(rs, key) is not JsonElement list || list.ValueKind != JsonValueKind.Array || list.GetArrayLength() != config.RopeDim / 2)
                throw new ModelFormatException(path, -1, $"'rope_scaling.{key}' must list {config.RopeDim / 2} numbers");
            var f = new float[config.RopeDim / 2];
            int i = 0;
            foreach (var e in list.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !(e.GetDouble() > 0))
                    throw new ModelFormatException(path, -1, $"'rope_scaling.{key}' must hold positive numbers");
                f[i++] = (float)e.GetDouble();
            }
            return f;
        }
        return new Dictionary<string, float[]> { [ShortFactors] = Factors("short_factor"), [LongFactors] = Factors("long_factor") };
    }

    public override ModelConfig CompleteConfig(ModelConfig c, int slidingWindow) =>
        c with { RopeScaling = RopeScaling.LongRope, RopeOriginalContextLength = c.ContextLength, RopeAttentionFactor = 1.0625f };

    public override void WriteGgufMetadata(GgufWriter w, ModelConfig c)
    {
        base.WriteGgufMetadata(w, c);
        if (c.RopeScaling != RopeScaling.LongRope) return;
        w.AddFloat32($"{Name}.rope.scaling.attn_factor", c.RopeAttentionFactor);
        w.AddUInt32($"{Name}.rope.scaling.original_context_length", (uint)c.RopeOriginalContextLength);
    }

    protected override int Emit(GraphBuilder b) => Blocks.PreNormDecoder(b, fusedWhereStored: true);
}
