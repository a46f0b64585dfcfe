using System.Numerics.Tensors;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Models;

/// <summary>
/// The llama-family transformer (llama, qwen2) on the CPU: weights stay in the memory-mapped GGUF file; the forward
/// pass runs one <see cref="ModelBatch"/> of tokens from any number of sequences through every weight matrix together.
/// </summary>
/// <remarks>Not thread-safe: one engine thread owns a model and its scratch buffers.</remarks>
public sealed class LlamaModel
{
    private readonly LayerWeights[] _layers;
    private WeightMatrix _embedding;            // [vocab rows, dim]
    private WeightMatrix _output;               // [vocab rows, dim]
    private readonly float[] _outputNorm;       // [dim]
    private readonly double[] _ropeInvFreq;     // [ropeDim / 2]
    private ForwardState _state = new(0, null!);

    private sealed record LayerWeights(
        float[] AttnNorm, WeightMatrix Q, WeightMatrix K, WeightMatrix V, WeightMatrix O,
        float[]? QBias, float[]? KBias, float[]? VBias,
        float[] FfnNorm, WeightMatrix Gate, WeightMatrix Up, WeightMatrix Down);

    /// <summary>Binds the weights of <paramref name="gguf"/> (which must stay open while the model is used).</summary>
    /// <exception cref="ModelFormatException">A tensor is missing, misshapen or of an unsupported type.</exception>
    public LlamaModel(GgufFile gguf, ModelConfig config) : this(new GgufWeightSource(gguf), config)
    {
    }

    /// <summary>
    /// Binds the weights of a Hugging Face checkpoint in place (which must stay open while the model is used), with its
    /// configuration (<see cref="RopeLayout.Neox"/>).
    /// </summary>
    /// <exception cref="ModelFormatException">A tensor is missing, misshapen or of an unsupported type.</exception>
    public LlamaModel(HfCheckpoint checkpoint) : this(checkpoint.Weights, checkpoint.Config)
    {
    }

    /// <summary>Binds the weights of <paramref name="weights"/> (GGUF tensor names), which must outlive the model.</summary>
    internal LlamaModel(IWeightSource weights, ModelConfig config)
    {
        Config = config;
        Weights = weights;
        var c = config;
        _embedding = weights.GetMatrix("token_embd.weight", c.VocabSize, c.Dim);
        _output = !weights.Contains("output.weight") ? _embedding : weights.GetMatrix("output.weight", c.VocabSize, c.Dim);
        _outputNorm = weights.GetVector("output_norm.weight", c.Dim)!;
        _layers = new LayerWeights[c.LayerCount];
        for (int l = 0; l < c.LayerCount; l++)
        {
            string p = $"blk.{l}.";
            _layers[l] = new LayerWeights(
                weights.GetVector(p + "attn_norm.weight", c.Dim)!,
                weights.GetMatrix(p + "attn_q.weight", c.QDim, c.Dim),
                weights.GetMatrix(p + "attn_k.weight", c.KvDim, c.Dim),
                weights.GetMatrix(p + "attn_v.weight", c.KvDim, c.Dim),
                weights.GetMatrix(p + "attn_output.weight", c.Dim, c.QDim),
                weights.GetVector(p + "attn_q.bias", c.QDim, optional: true),
                weights.GetVector(p + "attn_k.bias", c.KvDim, optional: true),
                weights.GetVector(p + "attn_v.bias", c.KvDim, optional: true),
                weights.GetVector(p + "ffn_norm.weight", c.Dim)!,
                weights.GetMatrix(p + "ffn_gate.weight", c.FfnDim, c.Dim),
                weights.GetMatrix(p + "ffn_up.weight", c.FfnDim, c.Dim),
                weights.GetMatrix(p + "ffn_down.weight", c.Dim, c.FfnDim));
        }

        _ropeInvFreq = new double[c.RopeDim / 2];
        float[]? freqFactors = c.RopeScaling == RopeScaling.Llama3 ? weights.GetVector("rope_freqs.weight", c.RopeDim / 2) : null;
        for (int i = 0; i < _ropeInvFreq.Length; i++)
        {
            _ropeInvFreq[i] = Math.Pow(c.RopeBase, -2.0 * i / c.RopeDim);
            if (freqFactors is not null) _ropeInvFreq[i] /= freqFactors[i];
            if (c.RopeScaling == RopeScaling.Linear) _ropeInvFreq[i] /= c.RopeScalingFactor;
        }
    }

    /// <summary>The model's hyperparameters.</summary>
    public ModelConfig Config { get; }

    private bool _prepared;

    /// <summary>
    /// Copies the weight matrices into the layouts this machine's fastest CPU kernels read (<see cref="MatMul.Prepare"/>),
    /// once; <see cref="Forward"/> does it on first use. A model whose weights run elsewhere (a GPU) never calls it.
    /// </summary>
    internal void PrepareForCpu()
    {
        if (_prepared) return;
        var arena = new WeightArena();
        for (int l = 0; l < _layers.Length; l++)
        {
            var w = _layers[l];
            _layers[l] = w with
            {
                Q = MatMul.PrepareInto(w.Q, arena), K = MatMul.PrepareInto(w.K, arena), V = MatMul.PrepareInto(w.V, arena),
                O = MatMul.PrepareInto(w.O, arena), Gate = MatMul.PrepareInto(w.Gate, arena), Up = MatMul.PrepareInto(w.Up, arena),
                Down = MatMul.PrepareInto(w.Down, arena),
            };
        }
        bool tied = SameMatrix(_output, _embedding);
        _output = MatMul.PrepareInto(_output, arena);
        // A tied head's float copy serves the embedding lookups too (the same rows), rather than a second copy of them.
        if (tied) _embedding = _output;
        _prepared = true;
    }

    /// <summary>Where the weights are bound (device executors upload them from here).</summary>
    internal IWeightSource Weights { get; }

    private static unsafe bool SameMatrix(in WeightMatrix a, in WeightMatrix b) => a.Data == b.Data;

    /// <summary>Number of weights (all matrices and vectors; a tied output head counts once).</summary>
    public long ParameterCount
    {
        get
        {
            long n = (long)_embedding.Rows * _embedding.Cols + _outputNorm.Length;
            if (!SameMatrix(_output, _embedding)) n += (long)_output.Rows * _output.Cols;
            foreach (var l in _layers)
            {
                foreach (var m in new[] { l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down }) n += (long)m.Rows * m.Cols;
                n += l.AttnNorm.Length + l.FfnNorm.Length + (l.QBias?.Length ?? 0) + (l.KBias?.Length ?? 0) + (l.VBias?.Length ?? 0);
            }
            return n;
        }
    }

    /// <summary>Adds a sample of the weights (the start of a few matrices) to <paramref name="hash"/>: enough to tell models apart.</summary>
    internal unsafe void AppendWeightSample(System.IO.Hashing.NonCryptographicHashAlgorithm hash)
    {
        foreach (var w in new[] { _embedding, _output, _layers[^1].Q, _layers[^1].Down })
            hash.Append(new ReadOnlySpan<byte>(w.Data, (int)Math.Min(1 << 16, w.RowBytes * w.Rows)));
        foreach (var v in _outputNorm) hash.Append(BitConverter.GetBytes(v));
    }

    /// <summary>Weight types this CPU path computes with.</summary>
    public static IReadOnlyList<GgmlType> SupportedWeightTypes { get; } =
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1,
         GgmlType.IQ4_NL, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_XS];

    /// <summary>
    /// Runs <paramref name="batch"/> through the model, storing K/V in <paramref name="kv"/>, and writes the logits of
    /// the segments that want them to <paramref name="logits"/> ([batch.LogitCount, vocab]).
    /// </summary>
    public void Forward(ModelBatch batch, IKvAttention kv, Span<float> logits, WorkerPool pool)
    {
        var c = Config;
        int n = batch.TokenCount;
        if (n == 0) return;
        if (logits.Length < batch.LogitCount * c.VocabSize) throw new ArgumentException("logits buffer too small", nameof(logits));
        PrepareForCpu();
        if (_state.Capacity < n) _state = new ForwardState(Math.Max(n, _state.Capacity * 2), c);
        var s = _state;

        var x = s.X.AsSpan(0, n * c.Dim);
        for (int t = 0; t < n; t++)
        {
            int token = batch.Tokens[t];
            if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(batch), $"token id {token} is outside the vocabulary of {c.VocabSize}");
            Dequantize.Row(_embedding.Type, _embedding.Row(token), x.Slice(t * c.Dim, c.Dim));
        }

        var xb = s.Xb.AsSpan(0, n * c.Dim);
        var q = s.Q.AsSpan(0, n * c.QDim);
        var k = s.K.AsSpan(0, n * c.KvDim);
        var v = s.V.AsSpan(0, n * c.KvDim);
        var att = s.Att.AsSpan(0, n * c.QDim);
        var gate = s.Gate.AsSpan(0, n * c.FfnDim);
        var up = s.Up.AsSpan(0, n * c.FfnDim);
        var ropeCos = s.RopeCos.AsSpan(0, n * (c.RopeDim / 2));
        var ropeSin = s.RopeSin.AsSpan(0, n * (c.RopeDim / 2));
        ComputeRopeAngles(batch, ropeCos, ropeSin);

        for (int l = 0; l < c.LayerCount; l++)
        {
            var w = _layers[l];
            RmsNorm(x, w.AttnNorm, xb, n, c.Dim, c.RmsEps);
            MatMul.MultiplyShared(xb, n, pool, w.Q, q, w.K, k, w.V, v);
            if (w.QBias is not null) AddBias(q, w.QBias, n);
            if (w.KBias is not null) AddBias(k, w.KBias, n);
            if (w.VBias is not null) AddBias(v, w.VBias, n);
            Rope(q, n, c.HeadCount, ropeCos, ropeSin);
            Rope(k, n, c.KvHeadCount, ropeCos, ropeSin);
            kv.Attend(l, batch, q, k, v, att, pool, c.LayerSlidingWindow(l));
            MatMul.Multiply(w.O, att, xb, n, pool);
            TensorPrimitives.Add(x, xb, x);

            RmsNorm(x, w.FfnNorm, xb, n, c.Dim, c.RmsEps);
            MatMul.MultiplyShared(xb, n, pool, w.Gate, gate, w.Up, up, default, default);
            SwiGlu(gate, up, pool);
            MatMul.Multiply(w.Down, gate, xb, n, pool);
            TensorPrimitives.Add(x, xb, x);
        }

        if (batch.LogitCount == 0) return;
        var last = s.Last.AsSpan(0, batch.LogitCount * c.Dim);
        foreach (var seg in batch.Segments)
        {
            if (seg.LogitIndex < 0) continue;
            int t = seg.FirstLogitToken;
            RmsNorm(x.Slice(t * c.Dim, seg.LogitRowCount * c.Dim), _outputNorm, last.Slice(seg.LogitIndex * c.Dim, seg.LogitRowCount * c.Dim), seg.LogitRowCount, c.Dim, c.RmsEps);
        }
        MatMul.Multiply(_output, last, logits, batch.LogitCount, pool);
    }

    // ---- layer ops -------------------------------------------------------------------------------------------------

    /// <summary>out[t] = x[t] / sqrt(mean(x[t]²) + eps) ⊙ weight, per row of <paramref name="dim"/>.</summary>
    internal static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> output, int rows, int dim, float eps)
    {
        for (int t = 0; t < rows; t++)
        {
            var row = x.Slice(t * dim, dim);
            var o = output.Slice(t * dim, dim);
            double sumSquares = TensorPrimitives.SumOfSquares(row);
            float scale = (float)(1.0 / Math.Sqrt(sumSquares / dim + eps));
            TensorPrimitives.Multiply(row, scale, o);
            TensorPrimitives.Multiply(o, weight, o);
        }
    }

    private static void AddBias(Span<float> y, ReadOnlySpan<float> bias, int rows)
    {
        for (int t = 0; t < rows; t++)
        {
            var row = y.Slice(t * bias.Length, bias.Length);
            TensorPrimitives.Add(row, bias, row);
        }
    }

    /// <summary>cos/sin of every token's rotation angles, [tokenCount, RopeDim / 2] each: once per forward pass, shared by all layers.</summary>
    internal void ComputeRopeAngles(ModelBatch batch, Span<float> cos, Span<float> sin)
    {
        int half = Config.RopeDim / 2;
        for (int t = 0; t < batch.TokenCount; t++)
        {
            int pos = batch.Positions[t];
            for (int i = 0; i < half; i++)
            {
                double theta = pos * _ropeInvFreq[i];
                cos[t * half + i] = (float)Math.Cos(theta);
                sin[t * half + i] = (float)Math.Sin(theta);
            }
        }
    }

    /// <summary>Rotates the first RopeDim dimensions of every head of every token by its position.</summary>
    private void Rope(Span<float> qk, int tokenCount, int heads, ReadOnlySpan<float> cosTable, ReadOnlySpan<float> sinTable)
    {
        int hd = Config.HeadDim, half = Config.RopeDim / 2;
        bool neox = Config.RopeLayout == RopeLayout.Neox;
        for (int t = 0; t < tokenCount; t++)
        {
            for (int i = 0; i < half; i++)
            {
                float cos = cosTable[t * half + i], sin = sinTable[t * half + i];
                for (int h = 0; h < heads; h++)
                {
                    int b = (t * heads + h) * hd;
                    int i0 = neox ? b + i : b + 2 * i;
                    int i1 = neox ? b + i + half : b + 2 * i + 1;
                    float x0 = qk[i0], x1 = qk[i1];
                    qk[i0] = x0 * cos - x1 * sin;
                    qk[i1] = x0 * sin + x1 * cos;
                }
            }
        }
    }

    /// <summary>gate = silu(gate) ⊙ up = gate·σ(gate)·up; <paramref name="up"/> is overwritten. Runs over slices of
    /// <see cref="SwiGluSlice"/> values spread over the pool, each slice's three passes while it is in the L1 cache.</summary>
    private static unsafe void SwiGlu(Span<float> gate, Span<float> up, WorkerPool pool)
    {
        // NOTE: three whole-array passes over a 128-token prefill's 1.4 MB arrays (beyond L2 with both) took 8 ms of the
        // benchmark model's 140 ms prefill at two threads; slice by slice on both threads, about 4 ms.
        fixed (float* g = gate)
        fixed (float* u = up)
        {
            // The last slice takes the remainder, so no slice is shorter than a vector (a value's bits must not depend
            // on how many tokens share the step, and a remainder shorter than a vector may take another code path).
            int slices = Math.Max(1, gate.Length / SwiGluSlice);
            pool.Run(slices, new SwiGluJob(g, u, gate.Length, slices), 8L * gate.Length);
        }
    }

    private const int SwiGluSlice = 2048;

    private readonly unsafe struct SwiGluJob(float* gate, float* up, int length, int slices) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            for (int s = start; s < end; s++)
            {
                int offset = s * SwiGluSlice, n = s == slices - 1 ? length - offset : SwiGluSlice;
                var g = new Span<float>(gate + offset, n);
                var u = new Span<float>(up + offset, n);
                TensorPrimitives.Multiply(g, u, u);
                TensorPrimitives.Sigmoid(g, g);
                TensorPrimitives.Multiply(g, u, g);
            }
        }
    }

    /// <summary>Activation buffers, grown to the largest batch seen.</summary>
    private sealed class ForwardState
    {
        public ForwardState(int capacity, ModelConfig c)
        {
            Capacity = capacity;
            if (capacity == 0) return;
            X = new float[capacity * c.Dim];
            Xb = new float[capacity * c.Dim];
            Q = new float[capacity * c.QDim];
            K = new float[capacity * c.KvDim];
            V = new float[capacity * c.KvDim];
            Att = new float[capacity * c.QDim];
            Gate = new float[capacity * c.FfnDim];
            Up = new float[capacity * c.FfnDim];
            Last = new float[capacity * c.Dim];
            RopeCos = new float[capacity * (c.RopeDim / 2)];
            RopeSin = new float[capacity * (c.RopeDim / 2)];
        }

        public int Capacity { get; }
        public float[] X { get; } = [];     // [n, dim] residual stream
        public float[] Xb { get; } = [];    // [n, dim] normed input / block output
        public float[] Q { get; } = [];     // [n, heads, headDim]
        public float[] K { get; } = [];     // [n, kvHeads, headDim]
        public float[] V { get; } = [];     // [n, kvHeads, headDim]
        public float[] Att { get; } = [];   // [n, heads, headDim]
        public float[] Gate { get; } = [];  // [n, ffn]
        public float[] Up { get; } = [];    // [n, ffn]
        public float[] Last { get; } = [];  // [logitCount, dim]
        public float[] RopeCos { get; } = [];  // [n, ropeDim / 2]
        public float[] RopeSin { get; } = [];  // [n, ropeDim / 2]
    }
}
