using System.Text;
using System.Text.Json;
using Inference.Loading;
using Inference.Tokenization;

namespace Inference.Tests.Models;

/// <summary>Options of a random-weight Hugging Face llama checkpoint written for tests.</summary>
public sealed record HfTestCheckpointOptions
{
    public int Hidden { get; init; } = 128;
    public int Layers { get; init; } = 2;
    public int Heads { get; init; } = 8;
    public int KvHeads { get; init; } = 2;
    public int Intermediate { get; init; } = 256;
    public SafetensorsDType DType { get; init; } = SafetensorsDType.F32;
    public int Seed { get; init; } = 1234;
    public float WeightScale { get; init; } = 0.08f;
    /// <summary>Number of safetensors shards (1: model.safetensors; more: model-0000N-of-0000M.safetensors with an index).</summary>
    public int Shards { get; init; } = 1;
    public bool TieWordEmbeddings { get; init; }
    public string ModelType { get; init; } = "llama";
    /// <summary>Head size when not hidden / heads (qwen3, gemma); 0: hidden / heads.</summary>
    public int HeadDim { get; init; }
    /// <summary>Sliding window of the layers that have one (see <c>SyntheticModelOptions.SlidingWindow</c>); 0: the architecture's choice.</summary>
    public int SlidingWindow { get; init; }
    /// <summary>Experts of a mixture-of-experts model (mixtral, qwen2moe, qwen3moe); 0 for a dense one.</summary>
    public int Experts { get; init; }
    /// <summary>Experts each token uses.</summary>
    public int ExpertsUsed { get; init; } = 2;
    /// <summary>qwen2moe/qwen3moe's <c>moe_intermediate_size</c> (0: <see cref="Intermediate"/>).</summary>
    public int ExpertIntermediate { get; init; }
    /// <summary>qwen2moe's <c>shared_expert_intermediate_size</c> (0: <see cref="Intermediate"/>).</summary>
    public int SharedExpertIntermediate { get; init; }
    /// <summary>
    /// Writes the checkpoint as transformers saves a gemma3 image-text model (<c>Gemma3ForConditionalGeneration</c>): the
    /// text configuration under <c>text_config</c> (values equal to <c>Gemma3TextConfig</c>'s defaults left out), the text
    /// tensors under a <c>language_model.</c> prefix, and a few vision tower and projector tensors; the text weights are
    /// those of the same options without it.
    /// </summary>
    public bool Multimodal { get; init; }
    /// <summary>With <see cref="Multimodal"/>: transformers ≥ 4.52's names (<c>model.language_model.layers…</c>) instead of <c>language_model.model.layers…</c>.</summary>
    public bool MultimodalNewNames { get; init; }
    /// <summary>qwen2moe/qwen3moe's <c>mlp_only_layers</c>: layers with a dense SwiGLU of <see cref="Intermediate"/> instead of experts.</summary>
    public int[] MlpOnlyLayers { get; init; } = [];
    /// <summary>qwen2moe/qwen3moe's <c>decoder_sparse_step</c>: layer l has experts when (l + 1) is a multiple of it.</summary>
    public int DecoderSparseStep { get; init; } = 1;
    /// <summary>Extra JSON members written into config.json (raw JSON values by key).</summary>
    public IReadOnlyDictionary<string, string> ExtraConfig { get; init; } = new Dictionary<string, string>();
}

/// <summary>
/// Writes Hugging Face checkpoints the way transformers saves them: config.json, safetensors shards (with
/// model.safetensors.index.json), generation_config.json, and a tokenizer.json / tokenizer_config.json made from a GGUF
/// vocabulary the way transformers' SentencePiece converter makes them.
/// </summary>
public static class HfTestCheckpoint
{
    /// <summary>Writes a random llama checkpoint into <paramref name="dir"/> with stories260K's vocabulary (512 tokens).</summary>
    public static void Write(string dir, HfTestCheckpointOptions o)
    {
        Directory.CreateDirectory(dir);
        using var donor = GgufFile.Open(Support.TestData.Stories260K);
        int vocab = donor.GetArray<string>("tokenizer.ggml.tokens")!.Length;
        int headDim = o.HeadDim > 0 ? o.HeadDim : o.Hidden / o.Heads, kvDim = o.KvHeads * headDim;
        var architecture = Inference.Models.Architectures.ModelArchitecture.FindByHfModelType(o.ModelType)
            ?? throw new ArgumentException($"unknown model type '{o.ModelType}'");
        bool llamaFamily = o.ModelType is "llama" or "qwen2";

        // [name, shape] in the order transformers' state dict has them.
        var tensors = new List<(string Name, long[] Shape, bool Norm)> { ("model.embed_tokens.weight", [vocab, o.Hidden], false) };
        if (!llamaFamily)
        {
            // Any other architecture: the tensors its forward pass reads, under their Hugging Face names.
            tensors.Clear();
            var config = architecture.CompleteConfig(new Inference.Models.ModelConfig
            {
                Architecture = architecture.Name, Dim = o.Hidden, LayerCount = o.Layers, HeadCount = o.Heads, KvHeadCount = o.KvHeads,
                HeadDim = headDim, FfnDim = o.Intermediate, VocabSize = vocab, ContextLength = 2048, RmsEps = 1e-5f,
                RopeBase = 10000f, RopeDim = headDim, RopeLayout = Inference.Models.RopeLayout.Neox,
                ExpertCount = o.Experts, ExpertUsedCount = o.Experts > 0 ? o.ExpertsUsed : 0,
                ExpertFfnDim = o.ExpertIntermediate, SharedExpertFfnDim = o.SharedExpertIntermediate,
            }, o.SlidingWindow);
            var dense = Enumerable.Range(0, o.Layers).Where(l => o.MlpOnlyLayers.Contains(l) || (l + 1) % o.DecoderSparseStep != 0).ToArray();
            if (dense.Length > 0) config = config with { DenseLayers = dense };
            foreach (var spec in architecture.PlanTensors(config, o.TieWordEmbeddings))
            {
                // Vectors computed from config.json (LongRoPE factors) come with the options' ExtraConfig.
                if (architecture.ComputedVectors(config).Any(v => v.Name == spec.Name)) continue;
                if (spec.IsExpert)
                {
                    // One tensor per expert, as transformers saves a ModuleList of experts.
                    for (int e = 0; e < spec.Experts; e++)
                        tensors.Add((architecture.TensorNames.ToHfExpert(spec.Name, e)!, [spec.Rows, spec.Cols], false));
                    continue;
                }
                string hf = architecture.TensorNames.ToHf(spec.Name) ?? throw new InvalidOperationException($"'{spec.Name}' has no Hugging Face name");
                // NOTE: qwen2moe's shared expert gate is a Linear(hidden, 1): [1, hidden].
                bool gateVector = spec.Name.EndsWith("ffn_gate_inp_shexp.weight", StringComparison.Ordinal);
                tensors.Add((hf, spec.IsMatrix ? [spec.Rows, spec.Cols] : gateVector ? [1, spec.Rows] : [spec.Rows], !spec.IsMatrix && !gateVector));
            }
        }
        for (int l = 0; l < (llamaFamily ? o.Layers : 0); l++)
        {
            string p = $"model.layers.{l}.";
            tensors.Add((p + "self_attn.q_proj.weight", [o.Hidden, o.Hidden], false));
            tensors.Add((p + "self_attn.k_proj.weight", [kvDim, o.Hidden], false));
            tensors.Add((p + "self_attn.v_proj.weight", [kvDim, o.Hidden], false));
            if (o.ModelType == "qwen2")
            {
                tensors.Add((p + "self_attn.q_proj.bias", [o.Hidden], false));
                tensors.Add((p + "self_attn.k_proj.bias", [kvDim], false));
                tensors.Add((p + "self_attn.v_proj.bias", [kvDim], false));
            }
            tensors.Add((p + "self_attn.o_proj.weight", [o.Hidden, o.Hidden], false));
            tensors.Add((p + "mlp.gate_proj.weight", [o.Intermediate, o.Hidden], false));
            tensors.Add((p + "mlp.up_proj.weight", [o.Intermediate, o.Hidden], false));
            tensors.Add((p + "mlp.down_proj.weight", [o.Hidden, o.Intermediate], false));
            tensors.Add((p + "input_layernorm.weight", [o.Hidden], true));
            tensors.Add((p + "post_attention_layernorm.weight", [o.Hidden], true));
        }
        if (llamaFamily)
        {
            tensors.Add(("model.norm.weight", [o.Hidden], true));
            if (!o.TieWordEmbeddings) tensors.Add(("lm_head.weight", [vocab, o.Hidden], false));
        }

        // A multimodal checkpoint stores the same text tensors under other names, then its vision tensors (drawn after them).
        var textNames = tensors.Select(t => t.Name).ToHashSet();
        string Stored(string name) => !o.Multimodal || !textNames.Contains(name) ? name
            : o.MultimodalNewNames ? (name.StartsWith("model.", StringComparison.Ordinal) ? "model.language_model." + name["model.".Length..] : name)
            : "language_model." + name;
        if (o.Multimodal)
        {
            string p = o.MultimodalNewNames ? "model." : "";
            tensors.Add(($"{p}vision_tower.vision_model.embeddings.patch_embedding.weight", [32, 3, 4, 4], false));
            tensors.Add(($"{p}vision_tower.vision_model.post_layernorm.weight", [32], false));
            tensors.Add(($"{p}multi_modal_projector.mm_input_projection_weight", [32, o.Hidden], false));
            tensors.Add(($"{p}multi_modal_projector.mm_soft_emb_norm.weight", [32], false));
        }

        var rng = new Random(o.Seed);
        var weightMap = new Dictionary<string, string>();
        int perShard = (tensors.Count + o.Shards - 1) / o.Shards;
        for (int s = 0; s < o.Shards; s++)
        {
            string file = o.Shards == 1 ? "model.safetensors" : $"model-{s + 1:D5}-of-{o.Shards:D5}.safetensors";
            var part = tensors.Skip(s * perShard).Take(perShard).ToList();
            using var w = SafetensorsWriter.Create(Path.Combine(dir, file));
            w.AddMetadata("format", "pt");
            foreach (var t in part) w.AddTensor(Stored(t.Name), t.Norm ? SafetensorsDType.F32 : o.DType, t.Shape);
            w.WriteHeader();
            foreach (var t in part)
            {
                var values = new float[t.Shape.Aggregate(1L, (a, b) => a * b)];
                for (int i = 0; i < values.Length; i++)
                {
                    float z = Normal(rng);
                    // NOTE: a norm's weight is near 1 as the model applies it (gemma stores it less 1).
                    // A router's weights are larger, so that the top-k choice is clear (far from a tie rounding could flip).
                    values[i] = t.Norm ? 1f - architecture.HfNormOffset(architecture.TensorNames.ToGguf(t.Name) ?? "") + 0.1f * o.WeightScale * z
                        : t.Name.EndsWith("block_sparse_moe.gate.weight", StringComparison.Ordinal) || t.Name.EndsWith("mlp.gate.weight", StringComparison.Ordinal) ? 4 * o.WeightScale * z
                        : o.WeightScale * z;
                }
                w.WriteTensorData(Stored(t.Name), values);
                weightMap[Stored(t.Name)] = file;
            }
            w.Complete();
        }
        if (o.Shards > 1)
        {
            WriteJson(Path.Combine(dir, "model.safetensors.index.json"), w =>
            {
                w.WriteStartObject();
                w.WriteStartObject("metadata");
                w.WriteNumber("total_size", 0);
                w.WriteEndObject();
                w.WriteStartObject("weight_map");
                foreach (var (name, file) in weightMap) w.WriteString(name, file);
                w.WriteEndObject();
                w.WriteEndObject();
            });
        }

        WriteJson(Path.Combine(dir, "config.json"), w =>
        {
            w.WriteStartObject();
            w.WriteStartArray("architectures");
            w.WriteStringValue(architecture.HfClassNames[0]);
            w.WriteEndArray();
            w.WriteString("model_type", o.ModelType);
            w.WriteNumber("hidden_size", o.Hidden);
            w.WriteNumber("num_hidden_layers", o.Layers);
            w.WriteNumber("num_attention_heads", o.Heads);
            w.WriteNumber("num_key_value_heads", o.KvHeads);
            w.WriteNumber("intermediate_size", o.Intermediate);
            if (o.HeadDim > 0) w.WriteNumber("head_dim", o.HeadDim);
            w.WriteNumber("rms_norm_eps", 1e-5);
            if (!o.ExtraConfig.ContainsKey("rope_theta")) w.WriteNumber("rope_theta", 10000.0);
            w.WriteNumber("max_position_embeddings", 2048);
            w.WriteNumber("vocab_size", vocab);
            w.WriteBoolean("tie_word_embeddings", o.TieWordEmbeddings);
            if (!o.ExtraConfig.ContainsKey("hidden_act")) w.WriteString("hidden_act", "silu");
            if (!o.ExtraConfig.ContainsKey("rope_scaling")) w.WriteNull("rope_scaling");
            w.WriteString("torch_dtype", o.DType switch { SafetensorsDType.F32 => "float32", SafetensorsDType.F16 => "float16", _ => "bfloat16" });
            w.WriteNumber("bos_token_id", 1);
            w.WriteNumber("eos_token_id", 2);
            if (o.Experts > 0)
            {
                if (o.ModelType == "mixtral") w.WriteNumber("num_local_experts", o.Experts);
                else
                {
                    w.WriteNumber("num_experts", o.Experts);
                    w.WriteNumber("moe_intermediate_size", o.ExpertIntermediate > 0 ? o.ExpertIntermediate : o.Intermediate);
                    if (o.ModelType == "qwen2moe") w.WriteNumber("shared_expert_intermediate_size", o.SharedExpertIntermediate > 0 ? o.SharedExpertIntermediate : o.Intermediate);
                    w.WriteBoolean("norm_topk_prob", o.ModelType == "qwen3moe");
                    w.WriteNumber("decoder_sparse_step", o.DecoderSparseStep);
                    w.WriteStartArray("mlp_only_layers");
                    foreach (int l in o.MlpOnlyLayers) w.WriteNumberValue(l);
                    w.WriteEndArray();
                }
                w.WriteNumber("num_experts_per_tok", o.ExpertsUsed);
            }
            foreach (var (key, raw) in o.ExtraConfig)
            {
                w.WritePropertyName(key);
                w.WriteRawValue(raw);
            }
            w.WriteEndObject();
        });
        if (o.Multimodal) NestTextConfig(Path.Combine(dir, "config.json"));
        WriteJson(Path.Combine(dir, "generation_config.json"), w =>
        {
            w.WriteStartObject();
            w.WriteNumber("bos_token_id", 1);
            w.WriteStartArray("eos_token_id");
            w.WriteNumberValue(2);
            w.WriteEndArray();
            w.WriteEndObject();
        });
        WriteSentencePieceTokenizer(donor, dir, addBos: true);
    }

    /// <summary>
    /// Rewrites a gemma3 config.json as <c>Gemma3ForConditionalGeneration</c>'s: the text settings under
    /// <c>text_config</c> without those equal to <c>Gemma3TextConfig</c>'s defaults, dtype, token ids and tying at the top
    /// level, and a SigLIP <c>vision_config</c>.
    /// </summary>
    private static void NestTextConfig(string path)
    {
        var text = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        var root = new System.Text.Json.Nodes.JsonObject
        {
            ["architectures"] = new System.Text.Json.Nodes.JsonArray("Gemma3ForConditionalGeneration"),
            ["model_type"] = "gemma3",
            ["mm_tokens_per_image"] = 256,
            ["image_token_index"] = 262144,
        };
        foreach (string key in (string[])["torch_dtype", "tie_word_embeddings", "bos_token_id", "eos_token_id"])
        {
            root[key] = text[key]?.DeepClone();
            text.Remove(key);
        }
        text.Remove("architectures");
        text["model_type"] = "gemma3_text";
        (string Key, string Value)[] defaults =
        [
            ("rope_theta", "1000000.0"), ("rope_local_base_freq", "10000.0"), ("sliding_window_pattern", "6"), ("hidden_activation", "\"gelu_pytorch_tanh\""),
            ("final_logit_softcapping", "null"), ("attn_logit_softcapping", "null"), ("rope_scaling", "null"),
        ];
        foreach (var (key, value) in defaults)
            if (text.TryGetPropertyValue(key, out var v) && (v?.ToJsonString() ?? "null") == value) text.Remove(key);
        root["text_config"] = text;
        root["vision_config"] = System.Text.Json.Nodes.JsonNode.Parse("""{"model_type": "siglip_vision_model", "hidden_size": 32, "image_size": 16, "patch_size": 4, "num_hidden_layers": 1}""");
        File.WriteAllText(path, root.ToJsonString());
    }

    /// <summary>
    /// tokenizer.json and tokenizer_config.json of a Llama-2-style tokenizer made from a GGUF SentencePiece vocabulary:
    /// Prepend/Replace normalizer, BPE with byte_fallback, merges generated from the piece scores the way transformers'
    /// SentencePieceExtractor does (every split of a piece into two pieces, ordered by the merged piece's score).
    /// </summary>
    public static void WriteSentencePieceTokenizer(GgufFile donor, string dir, bool addBos)
    {
        string[] tokens = donor.GetArray<string>("tokenizer.ggml.tokens")!;
        float[] scores = donor.GetArray<float>("tokenizer.ggml.scores")!;
        int[] types = donor.GetIntArray("tokenizer.ggml.token_type")!;
        var normalIds = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int id = 0; id < tokens.Length; id++)
            if (types[id] == (int)TokenType.Normal) normalIds[tokens[id]] = id;
        var merges = new List<(int Merged, int Left, int Right)>();
        foreach (var (piece, id) in normalIds)
            for (int cut = 1; cut < piece.Length; cut++)
                if (normalIds.TryGetValue(piece[..cut], out int l) && normalIds.TryGetValue(piece[cut..], out int r)) merges.Add((id, l, r));
        merges.Sort((a, b) =>
        {
            int c = scores[b.Merged].CompareTo(scores[a.Merged]);
            if (c != 0) return c;
            c = a.Merged.CompareTo(b.Merged);
            return c != 0 ? c : a.Left != b.Left ? a.Left.CompareTo(b.Left) : a.Right.CompareTo(b.Right);
        });

        WriteJson(Path.Combine(dir, "tokenizer.json"), w =>
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            for (int id = 0; id < tokens.Length; id++)
            {
                if (types[id] is not ((int)TokenType.Control or (int)TokenType.Unknown)) continue;
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("content", tokens[id]);
                w.WriteBoolean("single_word", false);
                w.WriteBoolean("lstrip", false);
                w.WriteBoolean("rstrip", false);
                w.WriteBoolean("normalized", false);
                w.WriteBoolean("special", true);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("normalizer");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("normalizers");
            w.WriteRawValue("""{"type":"Prepend","prepend":"▁"}""");
            w.WriteRawValue("""{"type":"Replace","pattern":{"String":" "},"content":"▁"}""");
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteNull("pre_tokenizer");
            w.WritePropertyName("post_processor");
            w.WriteRawValue("""{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"pair":[],"special_tokens":{}}""");
            w.WritePropertyName("decoder");
            w.WriteRawValue("""{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]}""");
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            w.WriteString("unk_token", "<unk>");
            w.WriteNull("continuing_subword_prefix");
            w.WriteNull("end_of_word_suffix");
            w.WriteBoolean("fuse_unk", true);
            w.WriteBoolean("byte_fallback", true);
            w.WriteStartObject("vocab");
            for (int id = 0; id < tokens.Length; id++) w.WriteNumber(tokens[id], id);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var m in merges) w.WriteStringValue(tokens[m.Left] + " " + tokens[m.Right]);
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        });
        WriteJson(Path.Combine(dir, "tokenizer_config.json"), w =>
        {
            w.WriteStartObject();
            w.WriteBoolean("add_bos_token", addBos);
            w.WriteBoolean("add_eos_token", false);
            w.WriteString("bos_token", "<s>");
            w.WriteString("eos_token", "</s>");
            w.WriteString("unk_token", "<unk>");
            w.WriteString("chat_template", "{% for message in messages %}{{ message['content'] }}{% endfor %}");
            w.WriteBoolean("legacy", false);
            w.WriteEndObject();
        });
    }

    /// <summary>A byte-level BPE tokenizer.json from a GGUF gpt2-model vocabulary (vocab and merges as stored).</summary>
    public static void WriteByteLevelTokenizer(GgufFile donor, string dir, string? splitRegex)
    {
        string[] tokens = donor.GetArray<string>("tokenizer.ggml.tokens")!;
        string[] merges = donor.GetArray<string>("tokenizer.ggml.merges")!;
        int[]? types = donor.GetIntArray("tokenizer.ggml.token_type");
        WriteJson(Path.Combine(dir, "tokenizer.json"), w =>
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteStartArray("added_tokens");
            for (int id = 0; id < tokens.Length; id++)
            {
                if (types is null || types[id] != (int)TokenType.Control) continue;
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("content", tokens[id]);
                w.WriteBoolean("special", true);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteNull("normalizer");
            w.WritePropertyName("pre_tokenizer");
            string byteLevel = splitRegex is null
                ? """{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"""
                : """{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}""";
            if (splitRegex is null) w.WriteRawValue(byteLevel);
            else
            {
                w.WriteStartObject();
                w.WriteString("type", "Sequence");
                w.WriteStartArray("pretokenizers");
                w.WriteStartObject();
                w.WriteString("type", "Split");
                w.WriteStartObject("pattern");
                w.WriteString("Regex", splitRegex);
                w.WriteEndObject();
                w.WriteString("behavior", "Isolated");
                w.WriteBoolean("invert", false);
                w.WriteEndObject();
                w.WriteRawValue(byteLevel);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteBoolean("byte_fallback", false);
            w.WriteStartObject("vocab");
            for (int id = 0; id < tokens.Length; id++) w.WriteNumber(tokens[id], id);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            // The newer list-of-pairs form.
            foreach (var m in merges)
            {
                int space = m.IndexOf(' ', 1);
                w.WriteStartArray();
                w.WriteStringValue(m[..space]);
                w.WriteStringValue(m[(space + 1)..]);
                w.WriteEndArray();
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        });
    }

    public static void WriteJson(string path, Action<Utf8JsonWriter> body)
    {
        using var stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        body(w);
    }

    private static float Normal(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
    }
}
