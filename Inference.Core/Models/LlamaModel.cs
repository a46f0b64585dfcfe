using System.Numerics.Tensors;
using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Models.Architectures;
using Inference.Models.Graph;

namespace Inference.Models;

/// <summary>
/// A transformer language model on the CPU: its architecture's forward pass (a <see cref="ModelGraph"/>, see
/// <see cref="ModelArchitecture"/>) over weights that stay in the memory-mapped file; <see cref="Forward"/> runs one
/// <see cref="ModelBatch"/> of tokens from any number of sequences through every weight matrix together.
/// </summary>
/// <remarks>Not thread-safe: one engine thread owns a model and its scratch buffers.</remarks>
public sealed class LlamaModel
{
    private readonly WeightMatrix[] _matrices;   // by weight id; default for vectors
    private readonly float[]?[] _vectors;        // by weight id; null for matrices
    private readonly WeightMatrix[] _stored;     // the matrices as bound, before PrepareForCpu repacks or copies them
    private ForwardState _state = new(0, null!);
    private readonly Parallelism.RankPlace? _place;
    private readonly MixtureOfExperts _experts = new();
    private Parallelism.ExpertAllToAll? _expertAllToAll;

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
    /// <param name="weights">The weights (for a tensor-parallel rank, its slice of them).</param>
    /// <param name="config">The configuration (for a tensor-parallel rank, its share of heads and widths).</param>
    /// <param name="place">The rank's place in a parallel layout (the part of the graph it runs, the groups it talks
    /// through), or null for a whole model.</param>
    internal LlamaModel(IWeightSource weights, ModelConfig config, Parallelism.RankPlace? place = null)
    {
        _place = place;
        Config = config;
        Weights = weights;
        var architecture = ModelArchitecture.Find(config.Architecture)
            ?? throw new ModelFormatException(weights.Description, -1, $"unsupported architecture '{config.Architecture}'");
        Graph = architecture.Build(config, weights);
        if (place is not null) Graph = place.Apply(Graph);
        var specs = Graph.Weights;
        // A rank binds only the weights its part of the graph reads (a pipeline stage: its layers').
        var used = place is null ? null : UsedWeights(Graph);
        _matrices = WeightSpec.BindMatrices(weights, specs, used);
        _vectors = new float[]?[specs.Length];
        for (int i = 0; i < specs.Length; i++)
            if (!specs[i].IsMatrix && (used is null || used[i])) _vectors[i] = weights.GetVector(specs[i].Name, specs[i].Rows);
        _stored = (WeightMatrix[])_matrices.Clone();
    }

    private static bool[] UsedWeights(ModelGraph graph)
    {
        var used = new bool[graph.Weights.Length];
        void Use(int w)
        {
            if (w >= 0) used[w] = true;
        }
        foreach (var op in graph.Ops)
        {
            Use(op.W0);
            Use(op.W1);
            Use(op.W2);
            if (op.Kind is not (OpKind.MixtureOfExperts or OpKind.ExpertAllToAll)) continue;
            var layer = graph.Experts[op.Param];
            foreach (int w in (ReadOnlySpan<int>)[layer.Router, layer.SharedGate, layer.SharedUp, layer.SharedDown, layer.SharedGateInput]) Use(w);
            for (int e = 0; e < layer.Count; e++)
            {
                Use(layer.Gate[e]);
                Use(layer.Up[e]);
                Use(layer.Down[e]);
            }
        }
        return used;
    }

    /// <summary>
    /// A 128-bit hash of every weight as bound (matrices as stored, before <see cref="PrepareForCpu()"/>; vectors as
    /// floats): each weight is hashed on its own with XXH3-128, in parallel, then their names, types, shapes and hashes
    /// together. Two models hash alike only when every weight is equal, so a fine-tune of the same shapes differs. Reads
    /// every weight byte once (at memory speed once the weights are paged in).
    /// </summary>
    internal UInt128 HashWeights()
    {
        var hashes = new UInt128[Graph.Weights.Length];
        Parallel.For(0, hashes.Length, i => hashes[i] = HashWeight(i));
        return CombineWeightHashes(DescribeWeights(), hashes);
    }

    /// <summary>The XXH3-128 of weight <paramref name="index"/> (in <see cref="ModelGraph.Weights"/> order) as bound.</summary>
    internal unsafe UInt128 HashWeight(int index)
    {
        var hash = new System.IO.Hashing.XxHash128();
        if (_vectors[index] is { } vector) hash.Append(System.Runtime.InteropServices.MemoryMarshal.AsBytes(vector.AsSpan()));
        else
        {
            var w = _stored[index];
            long total = w.RowBytes * w.Rows;
            for (long at = 0; at < total; at += 1 << 30)
                hash.Append(new ReadOnlySpan<byte>(w.Data + at, (int)Math.Min(1 << 30, total - at)));
        }
        return hash.GetCurrentHashAsUInt128();
    }

    /// <summary>"name/type/rowsxcols" of every weight, in <see cref="ModelGraph.Weights"/> order.</summary>
    internal string[] DescribeWeights()
    {
        var specs = Graph.Weights;
        var result = new string[specs.Length];
        for (int i = 0; i < specs.Length; i++)
            result[i] = $"{specs[i].Name}/{(specs[i].IsMatrix ? _stored[i].Type.ToString() : "f32")}/{specs[i].Rows}x{specs[i].Cols}";
        return result;
    }

    /// <summary>The names, types, shapes and per-tensor hashes hashed together (<see cref="HashWeights"/>).</summary>
    internal static UInt128 CombineWeightHashes(string[] descriptors, ReadOnlySpan<UInt128> hashes)
    {
        var all = new System.IO.Hashing.XxHash128();
        for (int i = 0; i < descriptors.Length; i++)
            all.Append(System.Text.Encoding.UTF8.GetBytes($"{descriptors[i]}/{hashes[i]}\n"));
        return all.GetCurrentHashAsUInt128();
    }

    /// <summary>The model's hyperparameters.</summary>
    public ModelConfig Config { get; }

    /// <summary>The forward pass every backend runs.</summary>
    internal ModelGraph Graph { get; }

    private bool _prepared;

    /// <summary>
    /// Copies the weight matrices into the layouts this machine's fastest CPU kernels read (<see cref="MatMul.Prepare"/>),
    /// once; <see cref="Forward"/> does it on first use. A model whose weights run elsewhere (a GPU) never calls it.
    /// </summary>
    /// <remarks>Only matrices that a matmul reads are prepared; an embedding table read by lookups alone stays as stored,
    /// and a tied head's prepared copy serves the embedding lookups too (the same rows), rather than a second copy of them.</remarks>
    internal void PrepareForCpu() => PrepareForCpu(CpuCaches.StreamsFromMemory(MatMulBytes));

    /// <summary><see cref="PrepareForCpu()"/> with the decision whether the weights stream from memory made by the caller
    /// (<see cref="WeightArena.StreamsFromMemory"/>): ranks that share one machine's cache decide from their sum.</summary>
    internal void PrepareForCpu(bool streamsFromMemory)
    {
        if (_prepared) return;
        var arena = new WeightArena { StreamsFromMemory = streamsFromMemory };
        foreach (int w in MatMulMatrices()) _matrices[w] = MatMul.PrepareInto(_matrices[w], arena);
        _prepared = true;
    }

    /// <summary>Bytes of the matrices the products read (<see cref="MatMulMatrices"/>) as bound: what one decoded token
    /// streams at most (every expert counted).</summary>
    internal long MatMulBytes
    {
        get
        {
            long total = 0;
            foreach (int w in MatMulMatrices()) total += _matrices[w].Rows * _matrices[w].RowBytes;
            return total;
        }
    }

    /// <summary>Each matrix a product reads, once, in the order the operations first read them: the ones
    /// <see cref="PrepareForCpu()"/> prepares.</summary>
    private IEnumerable<int> MatMulMatrices()
    {
        var done = new bool[_matrices.Length];
        var order = new List<int>();
        void Add(int w)
        {
            if (w < 0 || done[w]) return;
            done[w] = true;
            order.Add(w);
        }
        foreach (var op in Graph.Ops)
        {
            if (op.Kind is OpKind.MixtureOfExperts or OpKind.ExpertAllToAll)
            {
                var layer = Graph.Experts[op.Param];
                Add(layer.Router);
                for (int e = 0; e < layer.Count; e++)
                {
                    Add(layer.Gate[e]);
                    Add(layer.Up[e]);
                    Add(layer.Down[e]);
                }
                Add(layer.SharedGate);
                Add(layer.SharedUp);
                Add(layer.SharedDown);
            }
            if (op.Kind != OpKind.MatMul) continue;
            Add(op.W0);
            Add(op.W1);
            Add(op.W2);
        }
        return order;
    }

    /// <summary>Bytes of the weights as bound (each stored tensor once, vectors as floats): what the KV pool's memory rule subtracts.</summary>
    internal long WeightBytes
    {
        get
        {
            long total = 0;
            // NOTE: by name and expert: the experts of a stacked tensor share its name (each spec is one expert's rows),
            // while the slices of one fused tensor share both.
            var seen = new HashSet<(string, int)>();
            var specs = Graph.Weights;
            for (int i = 0; i < specs.Length; i++)
            {
                if (!seen.Add((specs[i].Name, specs[i].Expert))) continue;
                total += specs[i].IsMatrix ? _stored[i].RowBytes * specs[i].TensorRows : 4L * specs[i].Rows;
            }
            return total;
        }
    }

    /// <summary>Bytes of the activation buffers of a step of <paramref name="tokenCount"/> tokens (every buffer of the graph, floats).</summary>
    internal long ActivationBytes(int tokenCount)
    {
        long floats = 0;
        foreach (var b in Graph.Buffers) floats += (long)b.Width * tokenCount;
        return 4 * floats;
    }

    /// <summary>Where the weights are bound (device executors upload them from here).</summary>
    internal IWeightSource Weights { get; }

    /// <summary>Number of weights (all matrices and vectors; a tied output head counts once).</summary>
    public long ParameterCount
    {
        get
        {
            long n = 0;
            foreach (var w in Graph.Weights) n += w.IsMatrix ? (long)w.Rows * w.Cols : w.Rows;
            return n;
        }
    }

    /// <summary>Adds a sample of the weights (the start of a few matrices) to <paramref name="hash"/>: enough to tell models apart.</summary>
    /// <remarks>The embedding, the output head, the last block's first and last matrices, then the final norm's values.</remarks>
    internal unsafe void AppendWeightSample(System.IO.Hashing.NonCryptographicHashAlgorithm hash)
    {
        var ops = Graph.Ops;
        int embedding = -1, output = -1, first = -1, last = -1, finalNorm = -1, lastLayer = Config.LayerCount - 1;
        for (int i = 0; i < ops.Length; i++)
        {
            var op = ops[i];
            if (op.Kind == OpKind.Embed && embedding < 0) embedding = op.W0;
            if (op.Kind == OpKind.MatMul && op.Layer == lastLayer)
            {
                if (first < 0) first = op.W0;
                last = op.W0;
            }
            if (i >= Graph.HeadStart && op.Kind == OpKind.MatMul) output = op.W0;
            if (i >= Graph.HeadStart && op.Kind == OpKind.RmsNorm && finalNorm < 0) finalNorm = op.W0;
        }
        foreach (int id in (ReadOnlySpan<int>)[embedding, output, first, last])
        {
            // NOTE: the matrices as bound: preparing may rescale F16 rows (WeightMatrix.HalfShift), and the identity must
            // not depend on whether a forward pass has run yet.
            var w = _stored[id];
            hash.Append(new ReadOnlySpan<byte>(w.Data, (int)Math.Min(1 << 16, w.RowBytes * w.Rows)));
        }
        foreach (var v in _vectors[finalNorm]!) hash.Append(BitConverter.GetBytes(v));
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
        var g = Graph;
        int n = batch.TokenCount, logitRows = batch.LogitCount;
        if (n == 0) return;
        if (WritesLogits && logits.Length < logitRows * c.VocabSize) throw new ArgumentException("logits buffer too small", nameof(logits));
        PrepareForCpu();
        if (_state.Capacity < n) _state = new ForwardState(Math.Max(n, _state.Capacity * 2), g);
        var s = _state;
        for (int r = 0; r < g.RopeTables.Length; r++)
        {
            int half = g.RopeTables[r].RopeDim / 2;
            g.ComputeRopeAngles(r, batch, s.RopeCos[r].AsSpan(0, n * half), s.RopeSin[r].AsSpan(0, n * half));
        }

        var ops = g.Ops;
        for (int i = 0; i < ops.Length; i++)
        {
            if (i == g.HeadStart && logitRows == 0) return;
            BeforeOperation?.Invoke(i);
            var op = ops[i];
            switch (op.Kind)
            {
                case OpKind.Embed:
                {
                    var table = _matrices[op.W0];
                    var x = Buffer(op.Dst, n, logitRows, logits);
                    int dim = table.Cols;
                    for (int t = 0; t < n; t++)
                    {
                        int token = batch.Tokens[t];
                        if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(batch), $"token id {token} is outside the vocabulary of {c.VocabSize}");
                        // A vocabulary-parallel rank holds rows Param … of the table: other tokens are zeros, which the
                        // all-reduce after this adds to the holder's row exactly.
                        int row = token - op.Param;
                        // NOTE: a tied head's prepared F16 rows may be stored times a power of two (WeightMatrix.HalfShift).
                        if ((uint)row < (uint)table.Rows) table.DequantizeRow(row, x.Slice(t * dim, dim));
                        else x.Slice(t * dim, dim).Clear();
                    }
                    break;
                }
                case OpKind.RmsNorm:
                {
                    var src = Buffer(op.Src, n, logitRows, logits);
                    RmsNorm(src, _vectors[op.W0], Buffer(op.Dst, n, logitRows, logits), src.Length / op.Width, op.Width, op.Value);
                    break;
                }
                case OpKind.MatMul:
                {
                    var src = Buffer(op.Src, n, logitRows, logits);
                    int rows = g.Buffers[op.Src].LogitRows ? logitRows : n;
                    if (op.W1 < 0) MatMul.Multiply(_matrices[op.W0], src, Buffer(op.Dst, n, logitRows, logits), rows, pool);
                    else
                    {
                        MatMul.MultiplyShared(src, rows, pool, _matrices[op.W0], Buffer(op.Dst, n, logitRows, logits),
                            _matrices[op.W1], Buffer(op.Dst2, n, logitRows, logits),
                            op.W2 < 0 ? default : _matrices[op.W2], op.W2 < 0 ? default : Buffer(op.Dst3, n, logitRows, logits));
                    }
                    break;
                }
                case OpKind.AddBias:
                    AddBias(Buffer(op.Dst, n, logitRows, logits), _vectors[op.W0]);
                    break;
                case OpKind.Rope:
                {
                    var table = g.RopeTables[op.Param];
                    var dst = Buffer(op.Dst, n, logitRows, logits);
                    int half = table.RopeDim / 2;
                    Rope(dst, n, g.Buffers[op.Dst].Width / table.HeadDim, table, s.RopeCos[op.Param].AsSpan(0, n * half), s.RopeSin[op.Param].AsSpan(0, n * half));
                    break;
                }
                case OpKind.Attention:
                    kv.Attend(op.Layer, batch, Buffer(op.Src, n, logitRows, logits), Buffer(op.Src2, n, logitRows, logits),
                        Buffer(op.Src3, n, logitRows, logits), Buffer(op.Dst, n, logitRows, logits), pool, op.Param, op.Value);
                    break;
                case OpKind.Add:
                {
                    var dst = Buffer(op.Dst, n, logitRows, logits);
                    TensorPrimitives.Add(dst, Buffer(op.Src, n, logitRows, logits), dst);
                    break;
                }
                case OpKind.SwiGlu:
                    SwiGlu(Buffer(op.Dst, n, logitRows, logits), Buffer(op.Src, n, logitRows, logits), pool);
                    break;
                case OpKind.Scale:
                {
                    var dst = Buffer(op.Dst, n, logitRows, logits);
                    TensorPrimitives.Multiply(dst, op.Value, dst);
                    break;
                }
                case OpKind.SoftCap:
                    SoftCap(Buffer(op.Dst, n, logitRows, logits), op.Value);
                    break;
                case OpKind.GeGlu:
                    GeGlu(Buffer(op.Dst, n, logitRows, logits), Buffer(op.Src, n, logitRows, logits), pool);
                    break;
                case OpKind.GatherLogitRows:
                {
                    var src = Buffer(op.Src, n, logitRows, logits);
                    var dst = Buffer(op.Dst, n, logitRows, logits);
                    int width = g.Buffers[op.Src].Width;
                    foreach (var seg in batch.Segments)
                    {
                        if (seg.LogitIndex < 0) continue;
                        src.Slice(seg.FirstLogitToken * width, seg.LogitRowCount * width).CopyTo(dst.Slice(seg.LogitIndex * width, seg.LogitRowCount * width));
                    }
                    break;
                }
                case OpKind.MixtureOfExperts:
                    _experts.Run(g.Experts[op.Param], _matrices, _vectors, Buffer(op.Src, n, logitRows, logits), Buffer(op.Dst, n, logitRows, logits), n, pool);
                    break;
                case OpKind.ExpertAllToAll:
                    _expertAllToAll ??= new Parallelism.ExpertAllToAll();
                    _expertAllToAll.Run(g.Experts[op.Param], _matrices, _vectors, Buffer(op.Src, n, logitRows, logits), Buffer(op.Dst, n, logitRows, logits), n, pool,
                        _place!.Tensor, _place.TensorRank);
                    break;
                case OpKind.AllReduce:
                    _place!.Tensor.AllReduce(_place.TensorRank, Buffer(op.Dst, n, logitRows, logits));
                    break;
                case OpKind.GatherColumns:
                    _place!.Tensor.GatherColumns(_place.TensorRank, 0, Buffer(op.Src, n, logitRows, logits), logitRows,
                        _place.TensorRank == 0 ? Buffer(op.Dst, n, logitRows, logits) : Span<float>.Empty);
                    break;
                case OpKind.Send:
                    _place!.Pipeline!.Send(_place.PipelineRank, op.Param, Buffer(op.Src, n, logitRows, logits));
                    break;
                case OpKind.Receive:
                    _place!.Pipeline!.Receive(_place.PipelineRank, op.Param, Buffer(op.Dst, n, logitRows, logits));
                    break;
                default:
                    throw new NotSupportedException($"the CPU path has no {op.Kind} operation");
            }
        }
    }

    /// <summary>Called with each operation's index before <see cref="Forward"/> runs it (tests inject a rank's fault here); null by default.</summary>
    internal Action<int>? BeforeOperation { get; set; }

    /// <summary>Whether <see cref="Forward"/> writes logits (not a pipeline stage before the last, nor a tensor-parallel rank but the first).</summary>
    internal bool WritesLogits => Graph.HasHead && (_place is null || _place.TensorRank == 0);

    /// <summary>The rows of buffer <paramref name="id"/> this step uses (the caller's logits for the logits buffer).</summary>
    private Span<float> Buffer(int id, int tokens, int logitRows, Span<float> logits)
    {
        var spec = Graph.Buffers[id];
        int length = (spec.LogitRows ? logitRows : tokens) * spec.Width;
        return id == Graph.LogitsBuffer ? logits[..length] : _state.Buffers[id].AsSpan(0, length);
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

    private static void AddBias(Span<float> y, ReadOnlySpan<float> bias)
    {
        for (int t = 0; t < y.Length / bias.Length; t++)
        {
            var row = y.Slice(t * bias.Length, bias.Length);
            TensorPrimitives.Add(row, bias, row);
        }
    }

    /// <summary>Rotates the first RopeDim dimensions of every head of every token by its position.</summary>
    private static void Rope(Span<float> qk, int tokenCount, int heads, RopeTable table, ReadOnlySpan<float> cosTable, ReadOnlySpan<float> sinTable)
    {
        int hd = table.HeadDim, half = table.RopeDim / 2;
        bool neox = table.Layout == RopeLayout.Neox;
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
    internal static unsafe void SwiGlu(Span<float> gate, Span<float> up, WorkerPool pool)
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

    /// <summary>x = c · tanh(x / c).</summary>
    internal static void SoftCap(Span<float> x, float cap)
    {
        TensorPrimitives.Multiply(x, 1f / cap, x);
        TensorPrimitives.Tanh(x, x);
        TensorPrimitives.Multiply(x, cap, x);
    }

    /// <summary>
    /// gate = gelu(gate) ⊙ up with GELU's tanh approximation, gelu(g) = g/2 · (1 + tanh(√(2/π) · (g + 0.044715 g³)));
    /// <paramref name="up"/> is overwritten. Sliced over the pool as <see cref="SwiGlu"/>.
    /// </summary>
    private static unsafe void GeGlu(Span<float> gate, Span<float> up, WorkerPool pool)
    {
        fixed (float* g = gate)
        fixed (float* u = up)
        {
            int slices = Math.Max(1, gate.Length / SwiGluSlice);
            pool.Run(slices, new GeGluJob(g, u, gate.Length, slices), 8L * gate.Length);
        }
    }

    private readonly unsafe struct GeGluJob(float* gate, float* up, int length, int slices) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            const float Sqrt2OverPi = 0.7978845608028654f;
            for (int s = start; s < end; s++)
            {
                int offset = s * SwiGluSlice, n = s == slices - 1 ? length - offset : SwiGluSlice;
                var g = new Span<float>(gate + offset, n);
                var u = new Span<float>(up + offset, n);
                // u = g/2 · up; g = tanh(√(2/π) · g · (1 + 0.044715 g²)); g = u · g + u
                TensorPrimitives.Multiply(g, u, u);
                TensorPrimitives.Multiply(u, 0.5f, u);
                for (int i = 0; i < n; i++)
                {
                    float x = g[i];
                    g[i] = Sqrt2OverPi * x * (1f + 0.044715f * x * x);
                }
                TensorPrimitives.Tanh(g, g);
                TensorPrimitives.MultiplyAdd(u, g, u, g);
            }
        }
    }

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

    /// <summary>Activation buffers and rotation angles, grown to the largest batch seen.</summary>
    private sealed class ForwardState
    {
        public ForwardState(int capacity, ModelGraph graph)
        {
            Capacity = capacity;
            if (capacity == 0) return;
            // NOTE: logit rows never outnumber tokens, so every buffer holds `capacity` rows; the logits are the caller's.
            Buffers = new float[graph.Buffers.Length][];
            for (int i = 0; i < Buffers.Length; i++)
                Buffers[i] = i == graph.LogitsBuffer ? [] : new float[capacity * graph.Buffers[i].Width];
            RopeCos = new float[graph.RopeTables.Length][];
            RopeSin = new float[graph.RopeTables.Length][];
            for (int i = 0; i < RopeCos.Length; i++)
            {
                RopeCos[i] = new float[capacity * (graph.RopeTables[i].RopeDim / 2)];
                RopeSin[i] = new float[capacity * (graph.RopeTables[i].RopeDim / 2)];
            }
        }

        public int Capacity { get; }
        public float[][] Buffers { get; } = [];   // by buffer id, [capacity, width]
        public float[][] RopeCos { get; } = [];   // by rotation table, [capacity, ropeDim / 2]
        public float[][] RopeSin { get; } = [];
    }
}
