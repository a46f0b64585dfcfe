using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Engine;
using Inference.Kernels;
using Inference.Kernels.Layer;
using Inference.KvCache;
using Inference.Models;
using Device = Inference.Engine.Device;

namespace Inference.Cuda.Runner;

/// <summary>
/// The llama-family forward pass (the math of <see cref="LlamaModel.Forward"/>) on any ILGPU accelerator: weights
/// uploaded once, the paged KV pool in device memory, activations on the device; per step only the batch metadata goes
/// up and the logits of the segments that want them come back.
/// </summary>
/// <remarks>
/// <code>
///  per step, host → device (one int upload, one float upload):
///    tokens [n] · slots [n] · tokenSeqs [n] · positions [n] · seqStarts [S + 1] · contextLens [S] · logitRows [L]
///    · blockTables [S, maxBlocksPerSeq]          cos, sin [n, ropeDim / 2] (the CPU model's angles)
///  per layer, on the device:
///    x ─rmsnorm→ xb ─Wq,Wk,Wv (+bias)→ q,k,v ─rope→ k,v → KV pool slots ─attention→ att ─Wo→ xb; x += xb
///    x ─rmsnorm→ xb ─Wgate,Wup→ gate,up ─swiglu→ gate ─Wdown→ xb; x += xb
///  then x[logitRows] ─rmsnorm→ last ─Woutput→ logits [L, vocab] → host
/// </code>
/// slot of a token = block table[position / blockSize] · blockSize + position % blockSize, the same physical block
/// ids as the CPU path, so the engine's scheduler and KV cache manager drive both unchanged.
/// Engine thread only; the CUDA context is made current on whichever thread calls.
/// </remarks>
internal sealed class DeviceForwardExecutor : IForwardExecutor
{
    private readonly Accelerator _accelerator;
    private readonly IDisposable? _owner;       // the CUDA backend when this executor created it
    private readonly LlamaModel _model;
    private readonly ModelConfig _config;
    private readonly KvCacheManager _kvCache;
    private readonly LayerKernels _kernels;
    private readonly DeviceKvStorage _storage;
    private readonly IDeviceAttention _attention;
    private readonly AttentionShape _shape;
    private readonly DeviceLayer[] _layers;
    private readonly DeviceMatrix _embedding;      // [vocab, dim]
    private readonly DeviceMatrix _output;         // [vocab, dim], the embedding when tied
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _outputNorm;   // [dim]
    private readonly List<IDisposable> _owned = [];
    private StepBuffers? _step;
    private int[] _ints = [];
    private float[] _angles = [];
    private Thread? _boundThread;

    private sealed record DeviceLayer(
        MemoryBuffer1D<float, Stride1D.Dense> AttnNorm, DeviceMatrix Q, DeviceMatrix K, DeviceMatrix V, DeviceMatrix O,
        MemoryBuffer1D<float, Stride1D.Dense>? QBias, MemoryBuffer1D<float, Stride1D.Dense>? KBias, MemoryBuffer1D<float, Stride1D.Dense>? VBias,
        MemoryBuffer1D<float, Stride1D.Dense> FfnNorm, DeviceMatrix Gate, DeviceMatrix Up, DeviceMatrix Down);

    /// <param name="accelerator">Where to run; its context must have ILGPU.Algorithms enabled.</param>
    /// <param name="context">Model, KV cache manager and pool geometry.</param>
    /// <param name="attention">Which attention kernels to use on CUDA (other accelerators always use ILGPU's).</param>
    /// <param name="owner">Disposed with the executor (the backend that owns <paramref name="accelerator"/>), or null.</param>
    public DeviceForwardExecutor(Accelerator accelerator, ForwardExecutorContext context, CudaAttentionKernels attention, IDisposable? owner)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(context);
        _accelerator = accelerator;
        _owner = owner;
        _model = context.Model;
        _config = context.Model.Config;
        _kvCache = context.KvCache;
        Bind();
        var c = _config;
        try
        {
            // NOTE: on ILGPU's CPU accelerator (tests) one-thread groups: each matrix row is a plain loop, no barriers.
            _kernels = new LayerKernels(accelerator, accelerator.AcceleratorType == AcceleratorType.CPU ? 1 : MatMulKernels.GroupSize);
            var kv = context.KvOptions;
            int maxBlocks = (context.ContextLength + kv.BlockSize - 1) / kv.BlockSize;
            _shape = new AttentionShape(c.HeadCount, c.KvHeadCount, c.HeadDim, kv.BlockSize, maxBlocks);
            _storage = Own(new DeviceKvStorage(accelerator, c.LayerCount, context.BlockCount, kv.BlockSize, c.KvHeadCount, c.HeadDim, kv.DataType));
            _attention = Own(CreateAttention(accelerator, _shape, kv.DataType, c.SlidingWindows is { Count: > 0 } ? CudaAttentionKernels.Ilgpu : attention));

            var w = _model.Weights;
            _embedding = Own(DeviceMatrix.Upload(accelerator, w.GetMatrix("token_embd.weight", c.VocabSize, c.Dim)));
            _output = w.Contains("output.weight") ? Own(DeviceMatrix.Upload(accelerator, w.GetMatrix("output.weight", c.VocabSize, c.Dim))) : _embedding;
            _outputNorm = Vector(w.GetVector("output_norm.weight", c.Dim)!);
            _layers = new DeviceLayer[c.LayerCount];
            for (int l = 0; l < c.LayerCount; l++)
            {
                string p = $"blk.{l}.";
                _layers[l] = new DeviceLayer(
                    Vector(w.GetVector(p + "attn_norm.weight", c.Dim)!),
                    Matrix(p + "attn_q.weight", c.QDim, c.Dim),
                    Matrix(p + "attn_k.weight", c.KvDim, c.Dim),
                    Matrix(p + "attn_v.weight", c.KvDim, c.Dim),
                    Matrix(p + "attn_output.weight", c.Dim, c.QDim),
                    OptionalVector(w.GetVector(p + "attn_q.bias", c.QDim, optional: true)),
                    OptionalVector(w.GetVector(p + "attn_k.bias", c.KvDim, optional: true)),
                    OptionalVector(w.GetVector(p + "attn_v.bias", c.KvDim, optional: true)),
                    Vector(w.GetVector(p + "ffn_norm.weight", c.Dim)!),
                    Matrix(p + "ffn_gate.weight", c.FfnDim, c.Dim),
                    Matrix(p + "ffn_up.weight", c.FfnDim, c.Dim),
                    Matrix(p + "ffn_down.weight", c.Dim, c.FfnDim));
            }
            _accelerator.Synchronize();
        }
        catch (Exception e) when (e is OutOfMemoryException or CudaException)
        {
            long weights = 0;
            foreach (var r in _owned) if (r is DeviceMatrix m) weights += m.ByteCount;
            DisposeOwned();
            long pool = KvCacheStorage.GetBlockByteCount(c.LayerCount, context.KvOptions.BlockSize, c.KvHeadCount, c.HeadDim, context.KvOptions.DataType) * context.BlockCount;
            throw new InvalidOperationException(
                $"the model does not fit {accelerator.Name} ({accelerator.MemorySize / (1 << 20):N0} MiB): KV pool {pool / (1 << 20):N0} MiB, " +
                $"weights uploaded so far {weights / (1 << 20):N0} MiB; lower KvCacheOptions.PoolBytes, MaxNumSeqs or ContextLength ({e.Message.ReplaceLineEndings(" ")})", e);
        }
        catch
        {
            DisposeOwned();
            throw;
        }

        Device = accelerator.AcceleratorType == AcceleratorType.Cuda ? Device.Cuda : Device.Cpu;
        string what = accelerator is CudaAccelerator cuda
            ? $"CUDA: {accelerator.Name} (sm_{cuda.Architecture.Major}{cuda.Architecture.Minor})"
            : $"ILGPU {accelerator.AcceleratorType} accelerator: {accelerator.Name}";
        DeviceName = $"{what}, {_attention.Name} attention";
    }

    public Device Device { get; }

    public string DeviceName { get; }

    public IKvBlockStorage Storage => _storage;

    /// <summary>The attention kernels in use: "PTX" or "ILGPU".</summary>
    public string AttentionName => _attention.Name;

    private static IDeviceAttention CreateAttention(Accelerator accelerator, AttentionShape shape, KvCacheDataType type, CudaAttentionKernels choice)
    {
        bool f16 = type == KvCacheDataType.Float16;
        if (choice == CudaAttentionKernels.Ptx && accelerator is CudaAccelerator cuda && PtxDeviceAttention<float>.Supports(shape))
            return f16 ? new PtxDeviceAttention<ILGPU.Half>(cuda, shape) : new PtxDeviceAttention<float>(cuda, shape);
        return f16
            ? new IlgpuDeviceAttention<ILGPU.Half, F16Element>(accelerator, shape)
            : new IlgpuDeviceAttention<float, F32Element>(accelerator, shape);
    }

    public void Forward(ModelBatch batch, Span<float> logits)
    {
        var c = _config;
        int n = batch.TokenCount;
        if (n == 0) return;
        int seqs = batch.Segments.Count, logitCount = batch.LogitCount;
        if (logits.Length < logitCount * c.VocabSize) throw new ArgumentException("logits buffer too small", nameof(logits));
        Bind();
        var s = EnsureStep(n, seqs, logitCount);
        var step = Upload(batch, s);

        _embedding.Gather(_kernels, s.Tokens, s.X.View, n);
        int half = c.RopeDim / 2;
        var cos = s.Angles.View.SubView(0, (long)n * half);
        var sin = s.Angles.View.SubView((long)n * half, (long)n * half);
        var x = s.X.View.SubView(0, (long)n * c.Dim);
        var xb = s.Xb.View.SubView(0, (long)n * c.Dim);
        var q = s.Q.View.SubView(0, (long)n * c.QDim);
        var k = s.K.View.SubView(0, (long)n * c.KvDim);
        var v = s.V.View.SubView(0, (long)n * c.KvDim);
        var att = s.Att.View.SubView(0, (long)n * c.QDim);
        var gate = s.Gate.View.SubView(0, (long)n * c.FfnDim);
        var up = s.Up.View.SubView(0, (long)n * c.FfnDim);
        var layout = c.RopeLayout;

        for (int l = 0; l < c.LayerCount; l++)
        {
            var w = _layers[l];
            _kernels.RmsNorm(x, w.AttnNorm.View, xb, n, c.Dim, c.RmsEps);
            w.Q.MatMul(_kernels, xb, q, n);
            w.K.MatMul(_kernels, xb, k, n);
            w.V.MatMul(_kernels, xb, v, n);
            if (w.QBias is not null) _kernels.AddBias(q, w.QBias.View, n, c.QDim);
            if (w.KBias is not null) _kernels.AddBias(k, w.KBias.View, n, c.KvDim);
            if (w.VBias is not null) _kernels.AddBias(v, w.VBias.View, n, c.KvDim);
            _kernels.RopeTable(q, cos, sin, n, c.HeadCount, c.HeadDim, c.RopeDim, layout);
            _kernels.RopeTable(k, cos, sin, n, c.KvHeadCount, c.HeadDim, c.RopeDim, layout);
            if (_storage.DataType == KvCacheDataType.Float32)
                _kernels.WriteKv(k, v, s.Slots, _storage.Keys(l).Cast<float>(), _storage.Values(l).Cast<float>(), n, c.KvDim);
            else
                _kernels.WriteKv(k, v, s.Slots, _storage.Keys(l).Cast<ILGPU.Half>(), _storage.Values(l).Cast<ILGPU.Half>(), n, c.KvDim);
            _attention.Run(step, _storage.Keys(l), _storage.Values(l), q, att, c.LayerSlidingWindow(l));
            w.O.MatMul(_kernels, att, xb, n);
            _kernels.Add(x, xb, n * c.Dim);

            _kernels.RmsNorm(x, w.FfnNorm.View, xb, n, c.Dim, c.RmsEps);
            w.Gate.MatMul(_kernels, xb, gate, n);
            w.Up.MatMul(_kernels, xb, up, n);
            _kernels.SwiGlu(gate, up, gate, n * c.FfnDim);
            w.Down.MatMul(_kernels, gate, xb, n);
            _kernels.Add(x, xb, n * c.Dim);
        }

        if (logitCount == 0)
        {
            _accelerator.Synchronize();
            return;
        }
        var last = s.Last.View.SubView(0, (long)logitCount * c.Dim);
        _kernels.GatherRows(x, s.LogitRows, last, logitCount, c.Dim);
        _kernels.RmsNorm(last, _outputNorm.View, last, logitCount, c.Dim, c.RmsEps);
        var output = s.Logits.View.SubView(0, (long)logitCount * c.VocabSize);
        _output.MatMul(_kernels, last, output, logitCount);
        ((ArrayView<float>)output).CopyToCPU(logits[..(logitCount * c.VocabSize)]);
    }

    /// <summary>Builds and uploads the step's metadata; returns the attention views over it.</summary>
    private AttentionStep Upload(ModelBatch batch, StepBuffers s)
    {
        var c = _config;
        int n = batch.TokenCount, seqs = batch.Segments.Count, logitCount = batch.LogitCount;
        int bs = _shape.BlockSize, maxBlocks = _shape.MaxBlocksPerSeq;
        // [tokens n | slots n | tokenSeqs n | positions n | seqStarts S+1 | contextLens S | logitRows L | blockTables S·maxBlocks]
        int oSlots = n, oSeqs = 2 * n, oPos = 3 * n, oStarts = 4 * n, oLens = oStarts + seqs + 1, oRows = oLens + seqs,
            oTables = oRows + logitCount, total = oTables + seqs * maxBlocks;
        if (_ints.Length < total) _ints = new int[Math.Max(total, _ints.Length * 2)];
        var ints = _ints.AsSpan(0, total);
        int maxContext = 0, maxChunk = 0;
        for (int si = 0; si < seqs; si++)
        {
            var seg = batch.Segments[si];
            int end = seg.StartPosition + seg.TokenCount;
            if (end > _shape.MaxContextLength)
                throw new ArgumentOutOfRangeException(nameof(batch), $"position {end - 1} is beyond the context of {_shape.MaxContextLength}");
            var table = _kvCache.GetBlockTable(seg.SequenceId);
            int used = (end + bs - 1) / bs;
            if (table.Length < used) throw new InvalidOperationException($"sequence {seg.SequenceId} has {table.Length} blocks; {used} are needed for position {end - 1}");
            var row = ints.Slice(oTables + si * maxBlocks, maxBlocks);
            table[..used].CopyTo(row);
            row[used..].Clear();
            for (int i = 0; i < seg.TokenCount; i++)
            {
                int t = seg.TokenStart + i, pos = seg.StartPosition + i;
                int token = batch.Tokens[t];
                if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(batch), $"token id {token} is outside the vocabulary of {c.VocabSize}");
                ints[t] = token;
                ints[oSlots + t] = table[pos / bs] * bs + pos % bs;
                ints[oSeqs + t] = si;
                ints[oPos + t] = pos;
            }
            ints[oStarts + si] = seg.TokenStart;
            ints[oLens + si] = end;
            for (int r = 0; r < seg.LogitRowCount; r++) ints[oRows + seg.LogitIndex + r] = seg.FirstLogitToken + r;
            maxContext = Math.Max(maxContext, end);
            maxChunk = Math.Max(maxChunk, seg.TokenCount);
        }
        ints[oStarts + seqs] = n;
        ((ArrayView<int>)s.Ints.View.SubView(0, total)).CopyFromCPU<int, ArrayView<int>>(ints);

        int half = c.RopeDim / 2;
        if (_angles.Length < 2 * n * half) _angles = new float[Math.Max(2 * n * half, _angles.Length * 2)];
        var angles = _angles.AsSpan(0, 2 * n * half);
        _model.ComputeRopeAngles(batch, angles[..(n * half)], angles[(n * half)..]);
        ((ArrayView<float>)s.Angles.View.SubView(0, angles.Length)).CopyFromCPU<float, ArrayView<float>>(angles);

        var view = s.Ints.View;
        s.Tokens = view.SubView(0, n);
        s.Slots = view.SubView(oSlots, n);
        s.LogitRows = view.SubView(oRows, Math.Max(1, logitCount));
        return new AttentionStep(view.SubView(oTables, (long)seqs * maxBlocks), view.SubView(oLens, seqs), view.SubView(oStarts, seqs + 1),
            view.SubView(oSeqs, n), view.SubView(oPos, n), n, seqs, maxContext, maxChunk);
    }

    private StepBuffers EnsureStep(int tokens, int seqs, int logitCount)
    {
        if (_step is { } s && s.TokenCapacity >= tokens && s.SeqCapacity >= seqs && s.LogitCapacity >= logitCount) return s;
        int had = _step?.TokenCapacity ?? 0;
        int t = tokens > had ? Math.Max(tokens, had * 2) : had;
        int sc = Math.Max(seqs, _step?.SeqCapacity ?? 0);
        int lc = Math.Max(Math.Max(logitCount, 1), _step?.LogitCapacity ?? 0);
        _step?.Dispose();
        _step = null;
        _step = new StepBuffers(_accelerator, _config, t, sc, lc, _shape.MaxBlocksPerSeq);
        return _step;
    }

    private DeviceMatrix Matrix(string name, int rows, int cols) =>
        Own(DeviceMatrix.Upload(_accelerator, _model.Weights.GetMatrix(name, rows, cols)));

    private MemoryBuffer1D<float, Stride1D.Dense> Vector(float[] values) => Own(_accelerator.Allocate1D(values));

    private MemoryBuffer1D<float, Stride1D.Dense>? OptionalVector(float[]? values) => values is null ? null : Vector(values);

    private T Own<T>(T resource) where T : IDisposable
    {
        _owned.Add(resource);
        return resource;
    }

    /// <summary>Makes the accelerator's context current on the calling thread (the engine thread differs from the loader's).</summary>
    private void Bind()
    {
        if (_boundThread == Thread.CurrentThread) return;
        _accelerator.Bind();
        _boundThread = Thread.CurrentThread;
    }

    private void DisposeOwned()
    {
        _step?.Dispose();
        _step = null;
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }

    public void Dispose()
    {
        _boundThread = null;
        Bind();
        DisposeOwned();
        _owner?.Dispose();
    }

    /// <summary>Device activations and metadata for up to <see cref="TokenCapacity"/> tokens, grown on demand.</summary>
    private sealed class StepBuffers : IDisposable
    {
        public StepBuffers(Accelerator a, ModelConfig c, int tokens, int seqs, int logits, int maxBlocks)
        {
            TokenCapacity = tokens;
            SeqCapacity = seqs;
            LogitCapacity = logits;
            X = a.Allocate1D<float>((long)tokens * c.Dim);
            Xb = a.Allocate1D<float>((long)tokens * c.Dim);
            Q = a.Allocate1D<float>((long)tokens * c.QDim);
            K = a.Allocate1D<float>((long)tokens * c.KvDim);
            V = a.Allocate1D<float>((long)tokens * c.KvDim);
            Att = a.Allocate1D<float>((long)tokens * c.QDim);
            Gate = a.Allocate1D<float>((long)tokens * c.FfnDim);
            Up = a.Allocate1D<float>((long)tokens * c.FfnDim);
            Last = a.Allocate1D<float>((long)logits * c.Dim);
            Logits = a.Allocate1D<float>((long)logits * c.VocabSize);
            Angles = a.Allocate1D<float>(Math.Max(1L, (long)tokens * c.RopeDim));
            Ints = a.Allocate1D<int>(4L * tokens + 2L * seqs + 1 + logits + (long)seqs * maxBlocks);
        }

        public int TokenCapacity { get; }
        public int SeqCapacity { get; }
        public int LogitCapacity { get; }
        public MemoryBuffer1D<float, Stride1D.Dense> X { get; }       // [n, dim] residual stream
        public MemoryBuffer1D<float, Stride1D.Dense> Xb { get; }      // [n, dim] normed input / block output
        public MemoryBuffer1D<float, Stride1D.Dense> Q { get; }       // [n, heads, headDim]
        public MemoryBuffer1D<float, Stride1D.Dense> K { get; }       // [n, kvHeads, headDim]
        public MemoryBuffer1D<float, Stride1D.Dense> V { get; }       // [n, kvHeads, headDim]
        public MemoryBuffer1D<float, Stride1D.Dense> Att { get; }     // [n, heads, headDim]
        public MemoryBuffer1D<float, Stride1D.Dense> Gate { get; }    // [n, ffn]
        public MemoryBuffer1D<float, Stride1D.Dense> Up { get; }      // [n, ffn]
        public MemoryBuffer1D<float, Stride1D.Dense> Last { get; }    // [logitCount, dim]
        public MemoryBuffer1D<float, Stride1D.Dense> Logits { get; }  // [logitCount, vocab]
        public MemoryBuffer1D<float, Stride1D.Dense> Angles { get; }  // cos [n, ropeDim / 2] then sin, same shape
        public MemoryBuffer1D<int, Stride1D.Dense> Ints { get; }      // the step's metadata (see Upload)

        // views into Ints, set by Upload for the current step
        public ArrayView<int> Tokens { get; set; }
        public ArrayView<int> Slots { get; set; }
        public ArrayView<int> LogitRows { get; set; }

        public void Dispose()
        {
            foreach (var b in new MemoryBuffer[] { X, Xb, Q, K, V, Att, Gate, Up, Last, Logits, Angles, Ints }) b.Dispose();
        }
    }
}
