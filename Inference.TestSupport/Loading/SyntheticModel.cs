namespace Inference.Loading;

/// <summary>
/// Writes a llama-architecture GGUF with random weights and a tokenizer copied from a donor GGUF: a model of any shape for
/// differential tests against llama.cpp and for benchmarks, without downloading weights.
/// </summary>
/// <remarks>
/// Tensor names and shapes are the ones llama.cpp's llama architecture loads (ggml <c>ne</c> order, <c>ne[0]</c> = input):
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
        int dim = options.Dimension, ffn = options.FeedForwardLength;
        int kvDim = options.KvHeadCount * options.HeadDimension;
        var type = options.TensorType;

        var tensors = new List<(string Name, int Cols, int Rows, GgmlType Type, bool IsNorm)>
        {
            ("token_embd.weight", dim, vocab, type, false),
        };
        for (int l = 0; l < options.LayerCount; l++)
        {
            tensors.Add(($"blk.{l}.attn_norm.weight", dim, 1, GgmlType.F32, true));
            tensors.Add(($"blk.{l}.attn_q.weight", dim, dim, type, false));
            tensors.Add(($"blk.{l}.attn_k.weight", dim, kvDim, type, false));
            tensors.Add(($"blk.{l}.attn_v.weight", dim, kvDim, type, false));
            tensors.Add(($"blk.{l}.attn_output.weight", dim, dim, type, false));
            tensors.Add(($"blk.{l}.ffn_norm.weight", dim, 1, GgmlType.F32, true));
            tensors.Add(($"blk.{l}.ffn_gate.weight", dim, ffn, type, false));
            tensors.Add(($"blk.{l}.ffn_up.weight", dim, ffn, type, false));
            tensors.Add(($"blk.{l}.ffn_down.weight", ffn, dim, type, false));
        }
        tensors.Add(("output_norm.weight", dim, 1, GgmlType.F32, true));
        if (options.OutputHead == OutputHead.Separate) tensors.Add(("output.weight", dim, vocab, type, false));

        try
        {
            WriteModel(path, options, donor, tensors, vocab, cancellationToken);
        }
        catch
        {
            // NOTE: never leave a half-written model behind (cancellation, full disk).
            File.Delete(path);
            throw;
        }
    }

    private static void WriteModel(string path, SyntheticModelOptions options, GgufFile donor,
        List<(string Name, int Cols, int Rows, GgmlType Type, bool IsNorm)> tensors, int vocab, CancellationToken cancellationToken)
    {
        int dim = options.Dimension, ffn = options.FeedForwardLength;
        var type = options.TensorType;
        using var w = GgufWriter.Create(path);
        w.AddString("general.architecture", "llama");
        w.AddString("general.name", options.Name);
        w.AddUInt32("general.file_type", type switch
        {
            GgmlType.F32 => 0u, // LLAMA_FTYPE_ALL_F32
            GgmlType.F16 => 1u, // LLAMA_FTYPE_MOSTLY_F16
            _ => 7u,            // LLAMA_FTYPE_MOSTLY_Q8_0
        });
        w.AddUInt32("llama.context_length", (uint)options.ContextLength);
        w.AddUInt32("llama.embedding_length", (uint)dim);
        w.AddUInt32("llama.block_count", (uint)options.LayerCount);
        w.AddUInt32("llama.feed_forward_length", (uint)ffn);
        w.AddUInt32("llama.rope.dimension_count", (uint)options.HeadDimension);
        w.AddUInt32("llama.attention.head_count", (uint)options.HeadCount);
        w.AddUInt32("llama.attention.head_count_kv", (uint)options.KvHeadCount);
        w.AddFloat32("llama.attention.layer_norm_rms_epsilon", options.RmsNormEpsilon);
        w.AddFloat32("llama.rope.freq_base", options.RopeFreqBase);
        w.AddUInt32("llama.vocab_size", (uint)vocab);
        foreach (var key in donor.MetadataKeys)
            if (key.StartsWith("tokenizer.", StringComparison.Ordinal)) w.AddValue(key, donor.Metadata[key]);

        foreach (var t in tensors)
            w.AddTensorInfo(t.Name, t.Rows == 1 ? [t.Cols] : [t.Cols, t.Rows], t.Type);
        w.WriteHeader();

        int maxCols = Math.Max(dim, ffn);
        var row = new float[maxCols];
        var encoded = new byte[SyntheticModelQuantizer.RowBytes(GgmlType.F32, maxCols)];
        for (int i = 0; i < tensors.Count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var t = tensors[i];
            var rng = new NormalGenerator(unchecked(options.Seed * 1_000_003 + i));
            var values = row.AsSpan(0, t.Cols);
            int rowBytes = SyntheticModelQuantizer.RowBytes(t.Type, t.Cols);
            for (int r = 0; r < t.Rows; r++)
            {
                for (int c = 0; c < values.Length; c++)
                {
                    float z = rng.Next();
                    values[c] = t.IsNorm ? 1f + z * options.WeightScale * 0.1f : z * options.WeightScale;
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
