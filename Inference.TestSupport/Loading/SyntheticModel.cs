using Inference.Models;
using Inference.Models.Architectures;

namespace Inference.Loading;

/// <summary>
/// Writes a GGUF of any supported architecture (<see cref="SyntheticModelOptions.Architecture"/>) with random weights and a tokenizer copied from a donor GGUF: a model of any shape for
/// differential tests against llama.cpp and for benchmarks, without downloading weights.
/// </summary>
/// <remarks>
/// Tensor names and shapes are the ones the architecture's forward pass reads (and llama.cpp loads), for llama
/// (ggml <c>ne</c> order, <c>ne[0]</c> = input):
/// <code>
/// token_embd.weight        [dim, vocab]
/// blk.N.attn_norm.weight   [dim]                      F32
/// blk.N.attn_q.weight      [dim, heads * headDim]
/// blk.N.attn_k.weight      [dim, kvHeads * headDim]
/// blk.N.attn_v.weight      [dim, kvHeads * headDim]
/// blk.N.attn_output.weight [heads * headDim, dim]
/// blk.N.ffn_norm.weight    [dim]                      F32
/// blk.N.ffn_gate.weight    [dim, ffn]
/// blk.N.ffn_up.weight      [dim, ffn]
/// blk.N.ffn_down.weight    [ffn, dim]
/// output_norm.weight       [dim]                      F32
/// output.weight            [dim, vocab]               (absent with <see cref="OutputHead.TiedToEmbedding"/>)
/// </code>
/// Weights are normal(0, <see cref="SyntheticModelOptions.WeightScale"/>); each tensor draws from its own generator seeded
/// from <see cref="SyntheticModelOptions.Seed"/> and the tensor's index, so files of different tensor types made from the same
/// options hold the same underlying values. Tensors are generated and written one row at a time.
/// </remarks>
public static class SyntheticModel
{
    /// <summary>Writes the model described by <paramref name="options"/> to <paramref name="path"/>.</summary>
    /// <exception cref="ArgumentException">The options are inconsistent.</exception>
    /// <exception cref="ModelFormatException">The tokenizer donor is not a valid GGUF file or has no <c>tokenizer.ggml.tokens</c>.</exception>
    public static void Write(string path, SyntheticModelOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();

        using var donor = GgufFile.Open(options.TokenizerDonorPath);
        var tokens = donor.GetArray<string>("tokenizer.ggml.tokens")
            ?? throw new ModelFormatException(donor.FilePath, -1, "the tokenizer donor has no tokenizer.ggml.tokens");
        int vocab = tokens.Length;
        var type = options.TensorType;

        var architecture = ModelArchitecture.Find(options.Architecture)
            ?? throw new ArgumentException($"unknown architecture '{options.Architecture}' (supported: {string.Join(", ", ModelConfig.SupportedArchitectures)})");
        if (options.ExpertCount > 0 && !architecture.MayHaveExperts)
            throw new ArgumentException($"architecture '{options.Architecture}' has no mixture-of-experts form (llama, qwen2moe and qwen3moe have)");
        var config = Config(options, vocab);
        // The tensors the architecture's forward pass reads, in its order: matrices in the chosen type, vectors (norms) F32.
        // Experts are one tensor [cols, rows, experts] per block; the router stays F32, as llama.cpp's quantizer keeps it.
        var tensors = new List<(string Name, int Cols, int Rows, GgmlType Type, bool IsNorm, int Experts)>();
        foreach (var spec in architecture.PlanTensors(config, options.OutputHead == OutputHead.TiedToEmbedding))
        {
            bool router = spec.Name.EndsWith("ffn_gate_inp.weight", StringComparison.Ordinal);
            tensors.Add(spec.IsMatrix ? (spec.Name, spec.Cols, spec.Rows, router ? GgmlType.F32 : type, false, spec.Experts)
                : (spec.Name, spec.Rows, 1, GgmlType.F32, !spec.Name.EndsWith("ffn_gate_inp_shexp.weight", StringComparison.Ordinal), 0));
        }

        try
        {
            WriteModel(path, options, architecture, config, donor, tensors, cancellationToken);
        }
        catch
        {
            // NOTE: never leave a half-written model behind (cancellation, full disk).
            File.Delete(path);
            throw;
        }
    }

    /// <summary>The hyperparameters the options describe, as the model's reader will see them.</summary>
    private static ModelConfig Config(SyntheticModelOptions o, int vocab)
    {
        var architecture = ModelArchitecture.Find(o.Architecture)!;
        var c = architecture.CompleteConfig(new ModelConfig
        {
            Architecture = o.Architecture,
            Dim = o.Dimension,
            LayerCount = o.LayerCount,
            HeadCount = o.HeadCount,
            KvHeadCount = o.KvHeadCount,
            HeadDim = o.HeadDimension,
            FfnDim = o.FeedForwardLength,
            VocabSize = vocab,
            ContextLength = o.ContextLength,
            RmsEps = o.RmsNormEpsilon,
            RopeBase = o.RopeFreqBase,
            RopeDim = o.HeadDimension,
            RopeLayout = architecture.GgufRopeLayout,
            ExpertCount = o.ExpertCount,
            ExpertUsedCount = o.ExpertUsedCount,
            ExpertFfnDim = o.ExpertFeedForwardLength,
            SharedExpertFfnDim = o.SharedExpertFeedForwardLength,
        }, o.SlidingWindow);
        return o.AttentionLogitSoftCap > 0 ? c with { AttentionLogitSoftCap = o.AttentionLogitSoftCap, FinalLogitSoftCap = o.FinalLogitSoftCap } : c;
    }

    private static void WriteModel(string path, SyntheticModelOptions options, ModelArchitecture architecture, ModelConfig config, GgufFile donor,
        List<(string Name, int Cols, int Rows, GgmlType Type, bool IsNorm, int Experts)> tensors, CancellationToken cancellationToken)
    {
        var type = options.TensorType;
        using var w = GgufWriter.Create(path);
        w.AddString("general.architecture", architecture.Name);
        w.AddString("general.name", options.Name);
        w.AddUInt32("general.file_type", type switch
        {
            GgmlType.F32 => 0u, // LLAMA_FTYPE_ALL_F32
            GgmlType.F16 => 1u, // LLAMA_FTYPE_MOSTLY_F16
            GgmlType.BF16 => 32u, // LLAMA_FTYPE_MOSTLY_BF16
            _ => 7u,            // LLAMA_FTYPE_MOSTLY_Q8_0
        });
        architecture.WriteGgufMetadata(w, config);
        foreach (var key in donor.MetadataKeys)
            if (key.StartsWith("tokenizer.", StringComparison.Ordinal)) w.AddValue(key, donor.Metadata[key]);

        foreach (var t in tensors)
            w.AddTensorInfo(t.Name, t.Experts > 0 ? [t.Cols, t.Rows, t.Experts] : t.Rows == 1 ? [t.Cols] : [t.Cols, t.Rows], t.Type);
        w.WriteHeader();

        int maxCols = 0;
        foreach (var t in tensors) maxCols = Math.Max(maxCols, t.Cols);
        var row = new float[maxCols];
        var encoded = new byte[SyntheticModelQuantizer.RowBytes(GgmlType.F32, maxCols)];
        for (int i = 0; i < tensors.Count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var t = tensors[i];
            var rng = new NormalGenerator(unchecked(options.Seed * 1_000_003 + i));
            var values = row.AsSpan(0, t.Cols);
            int rowBytes = SyntheticModelQuantizer.RowBytes(t.Type, t.Cols);
            for (int r = 0; r < t.Rows * Math.Max(1, t.Experts); r++)
            {
                for (int c = 0; c < values.Length; c++)
                {
                    float z = rng.Next();
                    // NOTE: LongRoPE factors are divisors of the frequencies, 1 and up; a router's weights are larger, so that
                    // the top-k choice is clear (far from a tie that rounding could flip).
                    values[c] = t.Name.StartsWith("rope_factors", StringComparison.Ordinal) ? 1f + MathF.Abs(z)
                        : t.Name.EndsWith("ffn_gate_inp.weight", StringComparison.Ordinal) ? z * options.WeightScale * 4f
                        : t.IsNorm ? 1f + z * options.WeightScale * 0.1f : z * options.WeightScale;
                }
                SyntheticModelQuantizer.EncodeRow(t.Type, values, encoded.AsSpan(0, rowBytes));
                w.WriteTensorData(t.Name, encoded.AsSpan(0, rowBytes));
            }
        }
        w.Complete();
    }

    /// <summary>
    /// Standard normal numbers: SplitMix64 uniforms through Box–Muller, both outputs used.
    /// </summary>
    /// <remarks>NOTE: a fixed, documented generator rather than <see cref="Random"/>, so files do not change with the runtime.</remarks>
    private sealed class NormalGenerator(int seed)
    {
        private ulong _state = (ulong)(uint)seed * 0x9E3779B97F4A7C15UL + 0xD1B54A32D192ED03UL;
        private float _spare;
        private bool _hasSpare;

        public float Next()
        {
            if (_hasSpare)
            {
                _hasSpare = false;
                return _spare;
            }
            double u1 = ((NextBits() >> 11) + 1) * (1.0 / (1UL << 53)); // (0, 1]: the log stays finite
            double u2 = (NextBits() >> 11) * (1.0 / (1UL << 53));
            float radius = MathF.Sqrt(-2f * MathF.Log((float)u1));
            var (sin, cos) = MathF.SinCos(2f * MathF.PI * (float)u2);
            _spare = radius * sin;
            _hasSpare = true;
            return radius * cos;
        }

        private ulong NextBits()
        {
            ulong z = _state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }
}
