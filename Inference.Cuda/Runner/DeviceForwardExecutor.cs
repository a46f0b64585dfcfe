using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Engine;
using Inference.Kernels;
using Inference.Kernels.Layer;
using Inference.KvCache;
using Inference.Models;
using Inference.Models.Graph;
using Inference.Sampling;
using Device = Inference.Engine.Device;

namespace Inference.Cuda.Runner;

/// <summary>
/// A model's forward pass (its <see cref="ModelGraph"/>, the same one <see cref="LlamaModel.Forward"/> runs on the CPU) on
/// any ILGPU accelerator: weights uploaded once, the paged KV pool in device memory, activations on the device; per step
/// only the batch metadata goes up and the logits of the segments that want them come back.
/// </summary>
/// <remarks>
/// <code>
///  per step, host → device (one int upload, one float upload):
///    tokens [n] · slots [n] · tokenSeqs [n] · positions [n] · seqStarts [S + 1] · contextLens [S] · logitRows [L]
///    · blockTables [S, maxBlocksPerSeq]          per rotation table: cos, sin [n, ropeDim / 2] (the graph's angles)
///  on the device, the steps of the plan (<see cref="DeviceStepPlan"/>, fused runs of operations: Add + RmsNorm,
///  Rope(Q) + Rope(K) + K/V write, gate/up MatMul + SwiGlu/GeGlu), each other operation in order, one kernel (or a few):
///    Embed → gather · RmsNorm → rmsnorm · MatMul → one matmul per output (F16 weights and ≥ 16 rows on CUDA: the
///    tensor-core kernel of Ptx/gemm_tensor_core.ptx, the outputs' products reading one f16 copy of the input)
///    · AddBias · Rope → rope from the tables
///    Attention → K/V to the pool slots, then paged attention · Add · SwiGlu · GatherLogitRows → gather
///    MixtureOfExperts → router product, routing, the chosen experts' products (<see cref="DeviceMixtureOfExperts"/>)
///  then the logits buffer [L, vocab] → host
/// </code>
/// slot of a token = block table[position / blockSize] · blockSize + position % blockSize, the same physical block
/// ids as the CPU path, so the engine's scheduler and KV cache manager drive both unchanged.
/// Engine thread only; the CUDA context is made current on whichever thread calls.
/// </remarks>
internal sealed partial class DeviceForwardExecutor : IForwardExecutor
{
    private readonly Accelerator _accelerator;
    private readonly IDisposable? _owner;       // the CUDA backend when this executor created it
    private readonly LlamaModel _model;
    private readonly ModelConfig _config;
    private readonly KvCacheManager _kvCache;
    private readonly LayerKernels _kernels;
    private readonly DeviceKvStorage _storage;
    private readonly IDeviceAttention _attention;
    private readonly PtxTensorCoreGemm? _gemm;                                    // CUDA only: F16 products of many rows
    private readonly AttentionShape _shape;
    private readonly ModelGraph _graph;
    private readonly DeviceStepPlan _plan;                                        // the graph's operations, runs of them fused
    private readonly DeviceMatrix?[] _matrices;                                   // by weight id
    private readonly MemoryBuffer1D<float, Stride1D.Dense>?[] _vectors;           // by weight id
    private readonly DeviceMixtureOfExperts? _experts;                             // when the graph has MoE blocks
    private readonly DeviceSampler? _sampler;                                      // token choice on the device
    private bool[] _sampledRows = [];
    private readonly List<IDisposable> _owned = [];
    private StepBuffers? _step;
    private int[] _ints = [];
    private float[] _angles = [];
    private Thread? _boundThread;
    private readonly string _deviceName;
    private readonly CudaAttentionKernels _attentionChoice;

    /// <param name="accelerator">Where to run; its context must have ILGPU.Algorithms enabled.</param>
    /// <param name="context">Model, KV cache manager and pool geometry.</param>
    /// <param name="attention">Which attention kernels to use on CUDA (other accelerators always use ILGPU's).</param>
    /// <param name="owner">Disposed with the executor (the backend that owns <paramref name="accelerator"/>), or null.</param>
    /// <param name="tensorCoreMatMul">On CUDA, run F16 products of many rows on the tensor-core kernel.</param>
    /// <param name="flashPrefill">On CUDA with PTX attention and an f16 KV cache, run prefill attention on the flash kernel.</param>
    /// <param name="deviceSampling">Choose tokens on the device (<see cref="SamplesOnDevice"/>).</param>
    /// <param name="quantizedTensorCoreMatMul">On CUDA, widen Q8_0 and block-type matrices to f16 for products of many rows on the tensor-core kernel.</param>
    /// <param name="decodeGraphs">How pure decode steps run (<see cref="DecodeGraphOptions"/>); null: always eager.</param>
    /// <param name="fusedKernels">Run the fused kernels where the graph allows (<see cref="DeviceStepPlan"/>); false runs every operation on its own.</param>
    public DeviceForwardExecutor(Accelerator accelerator, ForwardExecutorContext context, CudaAttentionKernels attention, IDisposable? owner,
        bool tensorCoreMatMul = true, bool flashPrefill = false, bool deviceSampling = true, bool quantizedTensorCoreMatMul = false,
        DecodeGraphOptions? decodeGraphs = null, bool fusedKernels = true)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(context);
        _accelerator = accelerator;
        _owner = owner;
        _model = context.Model;
        _config = context.Model.Config;
        _kvCache = context.KvCache;
        RefuseUnsupported(_model.Graph, _config.Architecture);
        Bind();
        var c = _config;
        string? gemmUnavailable = null;
        try
        {
            // NOTE: on ILGPU's CPU accelerator (tests) one-thread groups: each matrix row is a plain loop, no barriers.
            _kernels = new LayerKernels(accelerator, accelerator.AcceleratorType == AcceleratorType.CPU ? 1 : MatMulKernels.GroupSize);
            var kv = context.KvOptions;
            int maxBlocks = (context.ContextLength + kv.BlockSize - 1) / kv.BlockSize;
            _shape = new AttentionShape(c.HeadCount, c.KvHeadCount, c.HeadDim, kv.BlockSize, maxBlocks);
            _storage = Own(new DeviceKvStorage(accelerator, c.LayerCount, context.BlockCount, kv.BlockSize, c.KvHeadCount, c.HeadDim, kv.DataType));
            if ((tensorCoreMatMul || quantizedTensorCoreMatMul) && accelerator is CudaAccelerator cudaAccelerator)
            {
                // NOTE: a driver whose JIT refuses the module leaves every product on the row kernels (DeviceName says why).
                try { _gemm = Own(new PtxTensorCoreGemm(cudaAccelerator) { F16Products = tensorCoreMatMul, QuantizedProducts = quantizedTensorCoreMatMul }); }
                catch (InvalidOperationException e) { gemmUnavailable = e.Message; }
            }
            // NOTE: the PTX kernels take the sliding window (p_window), checked on the CPU by a lane-level model of the
            // PTX; until its windowed cases (AttentionSelfCheck, scripts/device-check.sh) have passed on a device, a
            // model with local layers keeps the ILGPU kernels on CUDA. They have no score soft-capping (gemma2) at all.
            bool ilgpuOnly = c.SlidingWindows is { Count: > 0 } || c.AttentionLogitSoftCap != 0f;
            _attentionChoice = ilgpuOnly ? CudaAttentionKernels.Ilgpu : attention;
            _attention = Own(CreateAttention(accelerator, _shape, kv.DataType, _attentionChoice, flashPrefill));

            var w = _model.Weights;
            _graph = _model.Graph;
            _plan = DeviceStepPlan.Build(_graph, fusedKernels, kv.DataType is KvCacheDataType.Float32 or KvCacheDataType.Float16);
            var specs = _graph.Weights;
            _matrices = new DeviceMatrix?[specs.Length];
            _vectors = new MemoryBuffer1D<float, Stride1D.Dense>?[specs.Length];
            var bound = WeightSpec.BindMatrices(w, specs);
            for (int i = 0; i < specs.Length; i++)
            {
                // NOTE: the experts' matrices go up stacked, one buffer per kind and block (DeviceMixtureOfExperts).
                if (specs[i].IsExpert) continue;
                if (specs[i].IsMatrix) _matrices[i] = Own(DeviceMatrix.Upload(accelerator, bound[i]));
                else _vectors[i] = Own(accelerator.Allocate1D(w.GetVector(specs[i].Name, specs[i].Rows)!));
            }
            if (_graph.Experts.Length > 0) _experts = Own(new DeviceMixtureOfExperts(accelerator, _kernels, _graph, bound, _matrices, _vectors));
            // NOTE: on ILGPU's CPU accelerator one thread per row, as the layer kernels (no barriers to pay for).
            if (deviceSampling) _sampler = Own(new DeviceSampler(accelerator, accelerator.AcceleratorType == AcceleratorType.CPU ? 1 : SamplingKernels.MaxGroupSize));
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
        _deviceName = $"{what}, {_attention.Name} attention" +
            (_attention is PtxDeviceAttention<ILGPU.Half> { FlashPrefill: true } ? " (flash prefill)" : "") +
            (_gemm is not null ? (_gemm.F16Products ? ", tensor-core F16 matmul" : "") + (_gemm.QuantizedProducts ? ", tensor-core quantized matmul (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K in-kernel; IQ4_NL, Q2_K, Q3_K, IQ4_XS in f16 slabs)" : "") : gemmUnavailable is not null ? $", tensor-core matmul unavailable ({gemmUnavailable})" : "");
        // NOTE: the engine never runs more than MaxSequenceCount (vLLM's max_num_seqs) sequences in one step: a larger
        // bucket would only hold padding, so the largest one (and the static buffers sized for it) follows that limit.
        _graphOptions = decodeGraphs is null ? null
            : decodeGraphs with { MaxCaptureSize = DecodeBucketFor(decodeGraphs.MaxCaptureSize, context.MaxSequenceCount) };
        _graphsOff = DecodeGraphsOffReason(decodeGraphs);
    }

    /// <summary>Refuses, before anything is uploaded, a graph with an operation this executor does not run.</summary>
    /// <exception cref="NotSupportedException">The architecture needs an operation the device kernels lack.</exception>
    private static void RefuseUnsupported(ModelGraph graph, string architecture)
    {
        foreach (var op in graph.Ops)
        {
            bool supported = op.Kind switch
            {
                OpKind.Embed or OpKind.RmsNorm or OpKind.MatMul or OpKind.AddBias or OpKind.Rope or OpKind.Add or OpKind.SwiGlu
                    or OpKind.GeGlu or OpKind.Scale or OpKind.SoftCap or OpKind.GatherLogitRows or OpKind.Attention
                    or OpKind.MixtureOfExperts => true,
                _ => false,
            };
            if (!supported)
                throw new NotSupportedException($"architecture '{architecture}' needs the {op.Kind} operation, which the device executor does not run; use the CPU backend");
        }
    }

    public Device Device { get; }

    /// <summary>The device, the kernels in use and how decode steps run (captured CUDA graphs or eager, and why).</summary>
    public string DeviceName => $"{_deviceName}, {DecodeGraphStatus}";

    /// <summary>
    /// Bytes of the weights in device memory: the matrices as uploaded (the file's tensor bytes for every type kept as
    /// stored, <see cref="DeviceMatrix.DeviceType"/>) and the vectors as f32.
    /// </summary>
    internal long WeightBytes
    {
        get
        {
            long total = 0;
            foreach (var m in _matrices) total += m?.ByteCount ?? 0;
            foreach (var v in _vectors) total += v?.LengthInBytes ?? 0;
            return total + (_experts?.WeightBytes ?? 0);
        }
    }

    public IKvBlockStorage Storage => _storage;

    /// <summary>The steps each forward pass runs (the graph's operations, runs of them fused).</summary>
    internal DeviceStepPlan Plan => _plan;

    /// <summary>The attention kernels in use: "PTX" or "ILGPU".</summary>
    public string AttentionName => _attention.Name;

    /// <remarks>
    /// The block formats (Q8_0, FP8) run the ILGPU kernels on every accelerator: the hand-written PTX kernels read f32
    /// and f16 rows only.
    /// </remarks>
    private static IDeviceAttention CreateAttention(Accelerator accelerator, AttentionShape shape, KvCacheDataType type, CudaAttentionKernels choice,
        bool flashPrefill)
    {
        switch (type)
        {
            case KvCacheDataType.Q8_0: return new IlgpuDeviceAttention<byte, Q8_0Kv>(accelerator, shape);
            case KvCacheDataType.Fp8E4M3: return new IlgpuDeviceAttention<byte, Fp8E4M3Kv>(accelerator, shape);
        }
        bool f16 = type == KvCacheDataType.Float16;
        if (choice == CudaAttentionKernels.Ptx && accelerator is CudaAccelerator cuda && PtxDeviceAttention<float>.Supports(shape))
            return f16 ? new PtxDeviceAttention<ILGPU.Half>(cuda, shape, flashPrefill) : new PtxDeviceAttention<float>(cuda, shape);
        return f16
            ? new IlgpuDeviceAttention<ILGPU.Half, F16Element>(accelerator, shape)
            : new IlgpuDeviceAttention<float, F32Element>(accelerator, shape);
    }

    public bool SamplesOnDevice => _sampler is not null;

    public void Forward(ModelBatch batch, Span<float> logits)
    {
        if (Run(batch, logits) is { } output) ((ArrayView<float>)output).CopyToCPU(logits[..(batch.LogitCount * _config.VocabSize)]);
    }

    public void Forward(ModelBatch batch, Span<float> logits, DeviceSamplingRows rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        if (_sampler is null) throw new NotSupportedException("this executor was created without device sampling");
        if (Run(batch, logits) is not { } output) return;
        int vocab = _config.VocabSize, logitCount = batch.LogitCount;
        rows.VocabSize = vocab;
        if (_sampledRows.Length < logitCount) _sampledRows = new bool[Math.Max(logitCount, 2 * _sampledRows.Length)];
        var sampled = _sampledRows.AsSpan(0, logitCount);
        sampled.Clear();
        for (int r = 0; r < rows.Count; r++)
        {
            int row = rows.Ints[2 * r];
            if ((uint)row >= (uint)logitCount) throw new ArgumentOutOfRangeException(nameof(rows), $"logit row {row} is outside the step's {logitCount}");
            sampled[row] = true;
        }
        // The other rows' logits first: the penalties change the sampled rows in place.
        for (int start = 0; start < logitCount;)
        {
            if (sampled[start]) { start++; continue; }
            int end = start + 1;
            while (end < logitCount && !sampled[end]) end++;
            ((ArrayView<float>)output.SubView((long)start * vocab, (long)(end - start) * vocab)).CopyToCPU(logits.Slice(start * vocab, (end - start) * vocab));
            start = end;
        }
        _sampler.Run(output, rows);
    }

    /// <summary>Runs the step on the device; returns the logits on the device, or null when the step wants none.</summary>
    private ArrayView1D<float, Stride1D.Dense>? Run(ModelBatch batch, Span<float> logits)
    {
        var c = _config;
        var g = _graph;
        int n = batch.TokenCount;
        if (n == 0) return null;
        int seqs = batch.Segments.Count, logitCount = batch.LogitCount;
        if (logits.Length < logitCount * c.VocabSize) throw new ArgumentException("logits buffer too small", nameof(logits));
        Bind();
        // NOTE: after a failed capture decode stays eager for good: the padded steps' buffers go (the last step's
        // logits in them were read when its Forward returned).
        if (_graphFailure is not null && _decode is not null) DisposeDecodeGraphs();
        if (TryDecodeBucket(batch) is int bucket) return RunDecodeStep(batch, bucket);
        var s = EnsureStep(n, seqs, logitCount);
        var step = Upload(batch, s);
        if (logitCount == 0)
        {
            EnqueueOps(s, step, n, 0, _plan.HeadStep, _attention, _gemm);
            _accelerator.Synchronize();
            return null;
        }
        EnqueueOps(s, step, n, logitCount, _plan.Steps.Length, _attention, _gemm);
        return View(s, g.LogitsBuffer, n, logitCount);
    }

    /// <summary>
    /// Enqueues the plan's steps [0, <paramref name="stepEnd"/>) (<see cref="DeviceStepPlan"/>: the graph's operations,
    /// runs of them fused) of a step over <paramref name="n"/> tokens and <paramref name="logitCount"/> logit rows, on the
    /// accelerator's default stream.
    /// </summary>
    /// <remarks>
    /// Every launch argument comes from <paramref name="s"/>'s buffers, <paramref name="step"/>, the two counts and the
    /// graph: a step padded to a captured batch size passes the same values every time (see <see cref="RunDecodeStep"/>).
    /// </remarks>
    private void EnqueueOps(StepBuffers s, in AttentionStep step, int n, int logitCount, int stepEnd, IDeviceAttention attention, PtxTensorCoreGemm? gemm)
    {
        var g = _graph;
        var ops = g.Ops;
        var steps = _plan.Steps;
        for (int i = 0; i < stepEnd; i++)
        {
            var planned = steps[i];
            if (LaunchLog is { } log)
                foreach (int o in (ReadOnlySpan<int>)[planned.Op, planned.Op2, planned.Op3, planned.Op4])
                    if (o >= 0) log.Add($"{planned.Kind} " + DescribeLaunch(o, s, step, n, logitCount));
            switch (planned.Kind)
            {
                case PlanStepKind.AddRmsNorm:
                {
                    var add = ops[planned.Op];
                    var norm = ops[planned.Op2];
                    var x = View(s, add.Dst, n, logitCount);
                    _kernels.AddRmsNorm(x, View(s, add.Src, n, logitCount), _vectors[norm.W0]!.View, View(s, norm.Dst, n, logitCount),
                        (int)(x.Length / norm.Width), norm.Width, norm.Value);
                    break;
                }
                case PlanStepKind.RopeAttention:
                    RopeAttention(planned, s, step, n, logitCount, attention);
                    break;
                case PlanStepKind.GluMatMul:
                {
                    var mm = ops[planned.Op];
                    var glu = ops[planned.Op2];
                    int rows = g.Buffers[mm.Src].LogitRows ? logitCount : n;
                    var activation = glu.Kind == OpKind.GeGlu ? GluActivation.GeluTanh : GluActivation.Silu;
                    if (!_matrices[mm.W0]!.TryMatMulGlu(_kernels, gemm, _matrices[mm.W1]!, activation, View(s, mm.Src, n, logitCount), View(s, mm.Dst, n, logitCount), rows))
                    {
                        RunOp(mm, s, step, n, logitCount, attention, gemm);
                        RunOp(glu, s, step, n, logitCount, attention, gemm);
                    }
                    break;
                }
                default:
                    RunOp(ops[planned.Op], s, step, n, logitCount, attention, gemm);
                    break;
            }
        }
    }

    /// <summary>Runs graph operation <paramref name="op"/> as it is (one kernel or a few).</summary>
    private void RunOp(in ModelOp op, StepBuffers s, in AttentionStep step, int n, int logitCount, IDeviceAttention attention, PtxTensorCoreGemm? gemm)
    {
        var g = _graph;
        switch (op.Kind)
        {
            case OpKind.Embed:
                _matrices[op.W0]!.Gather(_kernels, s.Tokens, View(s, op.Dst, n, logitCount), n);
                break;
            case OpKind.RmsNorm:
            {
                var src = View(s, op.Src, n, logitCount);
                _kernels.RmsNorm(src, _vectors[op.W0]!.View, View(s, op.Dst, n, logitCount), (int)(src.Length / op.Width), op.Width, op.Value);
                break;
            }
            case OpKind.MatMul:
            {
                var src = View(s, op.Src, n, logitCount);
                int rows = g.Buffers[op.Src].LogitRows ? logitCount : n;
                if (op.W1 < 0)
                {
                    _matrices[op.W0]!.MatMul(_kernels, gemm, src, View(s, op.Dst, n, logitCount), rows);
                    break;
                }
                // q, k and v (or gate and up) read one conversion of src where they share a tensor-core input type
                DeviceMatrix m0 = _matrices[op.W0]!, m1 = _matrices[op.W1]!;
                ArrayView<float> y0 = View(s, op.Dst, n, logitCount), y1 = View(s, op.Dst2, n, logitCount);
                if (op.W2 < 0) DeviceMatrix.MatMulSameInput(_kernels, gemm, src, rows, [m0, m1], [y0, y1]);
                else DeviceMatrix.MatMulSameInput(_kernels, gemm, src, rows, [m0, m1, _matrices[op.W2]!], [y0, y1, View(s, op.Dst3, n, logitCount)]);
                break;
            }
            case OpKind.AddBias:
            {
                var dst = View(s, op.Dst, n, logitCount);
                int width = g.Buffers[op.Dst].Width;
                _kernels.AddBias(dst, _vectors[op.W0]!.View, (int)(dst.Length / width), width);
                break;
            }
            case OpKind.Rope:
            {
                var table = g.RopeTables[op.Param];
                var (cos, sin) = Angles(s, op.Param, n);
                _kernels.RopeTable(View(s, op.Dst, n, logitCount), cos, sin, n, g.Buffers[op.Dst].Width / table.HeadDim, table.HeadDim, table.RopeDim, table.Layout);
                break;
            }
            case OpKind.Attention:
            {
                int l = op.Layer, kvDim = g.Buffers[op.Src2].Width;
                WriteKv(l, View(s, op.Src2, n, logitCount), View(s, op.Src3, n, logitCount), s.Slots, n, kvDim, rope: null);
                Attend(op, s, step, n, logitCount, attention);
                break;
            }
            case OpKind.Add:
            {
                var dst = View(s, op.Dst, n, logitCount);
                _kernels.Add(dst, View(s, op.Src, n, logitCount), (int)dst.Length);
                break;
            }
            case OpKind.SwiGlu:
            {
                var gate = View(s, op.Dst, n, logitCount);
                _kernels.SwiGlu(gate, View(s, op.Src, n, logitCount), gate, (int)gate.Length);
                break;
            }
            case OpKind.Scale:
            {
                var dst = View(s, op.Dst, n, logitCount);
                _kernels.Scale(dst, op.Value, (int)dst.Length);
                break;
            }
            case OpKind.SoftCap:
            {
                var dst = View(s, op.Dst, n, logitCount);
                _kernels.SoftCap(dst, op.Value, (int)dst.Length);
                break;
            }
            case OpKind.GeGlu:
            {
                var gate = View(s, op.Dst, n, logitCount);
                _kernels.GeGlu(gate, View(s, op.Src, n, logitCount), gate, (int)gate.Length);
                break;
            }
            case OpKind.MixtureOfExperts:
                _experts!.Run(g.Experts[op.Param], View(s, op.Src, n, logitCount), View(s, op.Dst, n, logitCount), n, s.Experts!, gemm);
                break;
            case OpKind.GatherLogitRows:
                _kernels.GatherRows(View(s, op.Src, n, logitCount), s.LogitRows, View(s, op.Dst, n, logitCount), logitCount, g.Buffers[op.Src].Width);
                break;
            default:
                throw new NotSupportedException($"the device executor has no {op.Kind} operation");
        }
    }

    /// <summary>Attention operation <paramref name="op"/> over the pool, its K/V already written.</summary>
    private void Attend(in ModelOp op, StepBuffers s, in AttentionStep step, int n, int logitCount, IDeviceAttention attention) =>
        attention.Run(step, _storage.Keys(op.Layer), _storage.Values(op.Layer), View(s, op.Src, n, logitCount), View(s, op.Dst, n, logitCount), op.Param, op.Value);

    /// <summary>
    /// A <see cref="PlanStepKind.RopeAttention"/> step: Q rotated (and scaled) in place, the rotated K and V written to
    /// the pool slots, in one launch; then the attention kernels.
    /// </summary>
    private void RopeAttention(in PlanStep planned, StepBuffers s, in AttentionStep step, int n, int logitCount, IDeviceAttention attention)
    {
        var g = _graph;
        var op = g.Ops[planned.Op];
        var rope = g.Ops[planned.Op2];
        var (cos, sin) = Angles(s, rope.Param, n);
        WriteKv(op.Layer, View(s, op.Src2, n, logitCount), View(s, op.Src3, n, logitCount), s.Slots, n, g.Buffers[op.Src2].Width,
            new RopeKvWrite(View(s, op.Src, n, logitCount), cos, sin, planned.RopeKv));
        Attend(op, s, step, n, logitCount, attention);
    }

    /// <summary>The rotation a fused K/V write applies on the way: Q rotated (and scaled) in place, K rotated before it is stored.</summary>
    private readonly record struct RopeKvWrite(ArrayView<float> Q, ArrayView<float> Cos, ArrayView<float> Sin, RopeKvShape Shape);

    /// <summary>
    /// Writes <paramref name="n"/> rows of K and V (<c>[n, kvDim]</c>) to their slots in layer <paramref name="layer"/>'s
    /// pool, in the pool's data type; with <paramref name="rope"/>, the fused kernel rotating Q and K first (f32 and f16
    /// pools only: <see cref="DeviceStepPlan"/> fuses nothing else).
    /// </summary>
    private void WriteKv(int layer, ArrayView<float> k, ArrayView<float> v, ArrayView<int> slots, int n, int kvDim, RopeKvWrite? rope)
    {
        var keys = _storage.Keys(layer);
        var values = _storage.Values(layer);
        switch (_storage.DataType)
        {
            case KvCacheDataType.Float32:
                if (rope is { } r32) _kernels.RopeWriteKv(r32.Q, k, v, r32.Cos, r32.Sin, slots, keys.Cast<float>(), values.Cast<float>(), n, r32.Shape);
                else _kernels.WriteKv(k, v, slots, keys.Cast<float>(), values.Cast<float>(), n, kvDim);
                break;
            case KvCacheDataType.Float16:
                if (rope is { } r16) _kernels.RopeWriteKv(r16.Q, k, v, r16.Cos, r16.Sin, slots, keys.Cast<ILGPU.Half>(), values.Cast<ILGPU.Half>(), n, r16.Shape);
                else _kernels.WriteKv(k, v, slots, keys.Cast<ILGPU.Half>(), values.Cast<ILGPU.Half>(), n, kvDim);
                break;
            default:
                if (rope is not null) throw new InvalidOperationException($"the fused RoPE + K/V write takes f32 and f16 pools, not {_storage.DataType}");
                _kernels.WriteKv(k, v, slots, keys, values, n, kvDim, _storage.DataType);
                break;
        }
    }

    /// <summary>The step's cos and sin tables of rotation table <paramref name="table"/>, <c>[n, ropeDim / 2]</c> each.</summary>
    private (ArrayView<float> Cos, ArrayView<float> Sin) Angles(StepBuffers s, int table, int n)
    {
        long half = _graph.RopeTables[table].RopeDim / 2, offset = 2L * n * RopeOffset(table);
        return (s.Angles.View.SubView(offset, n * half), s.Angles.View.SubView(offset + n * half, n * half));
    }

    /// <summary>The rows of graph buffer <paramref name="id"/> this step uses.</summary>
    private ArrayView1D<float, Stride1D.Dense> View(StepBuffers s, int id, int tokens, int logitRows)
    {
        var spec = _graph.Buffers[id];
        return s.Buffers[id].View.SubView(0, (long)(spec.LogitRows ? logitRows : tokens) * spec.Width);
    }

    /// <summary>Sum of the half rotated dimensions of the tables before <paramref name="table"/> (its place in the angle upload).</summary>
    private int RopeOffset(int table)
    {
        int offset = 0;
        for (int r = 0; r < table; r++) offset += _graph.RopeTables[r].RopeDim / 2;
        return offset;
    }

    /// <summary>Builds and uploads the step's metadata; returns the attention views over it.</summary>
    private AttentionStep Upload(ModelBatch batch, StepBuffers s)
    {
        var c = _config;
        int n = batch.TokenCount, seqs = batch.Segments.Count, logitCount = batch.LogitCount;
        int maxBlocks = _shape.MaxBlocksPerSeq;
        var o = new StepIntLayout(n, seqs, logitCount, maxBlocks);
        int total = (int)o.Length;
        if (_ints.Length < total) _ints = new int[Math.Max(total, _ints.Length * 2)];
        var ints = _ints.AsSpan(0, total);
        int maxContext = 0, maxChunk = 0;
        for (int si = 0; si < seqs; si++)
        {
            var seg = batch.Segments[si];
            int end = seg.StartPosition + seg.TokenCount;
            if (end > _shape.MaxContextLength)
                throw new ArgumentOutOfRangeException(nameof(batch), $"position {end - 1} is beyond the context of {_shape.MaxContextLength}");
            var table = UsedBlocks(seg.SequenceId, end);
            var row = ints.Slice(o.BlockTables + si * maxBlocks, maxBlocks);
            table.CopyTo(row);
            row[table.Length..].Clear();
            for (int i = 0; i < seg.TokenCount; i++)
            {
                int t = seg.TokenStart + i, pos = seg.StartPosition + i;
                int token = batch.Tokens[t];
                if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(batch), $"token id {token} is outside the vocabulary of {c.VocabSize}");
                ints[t] = token;
                ints[o.Slots + t] = Slot(table, pos);
                ints[o.TokenSeqs + t] = si;
                ints[o.Positions + t] = pos;
            }
            ints[o.SeqStarts + si] = seg.TokenStart;
            ints[o.ContextLens + si] = end;
            for (int r = 0; r < seg.LogitRowCount; r++) ints[o.LogitRows + seg.LogitIndex + r] = seg.FirstLogitToken + r;
            maxContext = Math.Max(maxContext, end);
            maxChunk = Math.Max(maxChunk, seg.TokenCount);
        }
        ints[o.SeqStarts + seqs] = n;
        ((ArrayView<int>)s.Ints.View.SubView(0, total)).CopyFromCPU<int, ArrayView<int>>(ints);

        // per rotation table r: cos [n, half_r] then sin [n, half_r], tables one after another
        int totalHalf = RopeOffset(_graph.RopeTables.Length);
        if (_angles.Length < 2 * n * totalHalf) _angles = new float[Math.Max(2 * n * totalHalf, _angles.Length * 2)];
        for (int r = 0; r < _graph.RopeTables.Length; r++)
        {
            int half = _graph.RopeTables[r].RopeDim / 2, offset = 2 * n * RopeOffset(r);
            _graph.ComputeRopeAngles(r, batch, _angles.AsSpan(offset, n * half), _angles.AsSpan(offset + n * half, n * half));
        }
        if (totalHalf > 0)
            ((ArrayView<float>)s.Angles.View.SubView(0, 2L * n * totalHalf)).CopyFromCPU<float, ArrayView<float>>(_angles.AsSpan(0, 2 * n * totalHalf));

        var view = s.Ints.View;
        s.Tokens = view.SubView(o.Tokens, n);
        s.Slots = view.SubView(o.Slots, n);
        s.LogitRows = view.SubView(o.LogitRows, Math.Max(1, logitCount));
        return new AttentionStep(view.SubView(o.BlockTables, (long)seqs * maxBlocks), view.SubView(o.ContextLens, seqs), view.SubView(o.SeqStarts, seqs + 1),
            view.SubView(o.TokenSeqs, n), view.SubView(o.Positions, n), n, seqs, maxContext, maxChunk);
    }

    /// <summary>
    /// The blocks of sequence <paramref name="sequenceId"/> that hold positions [0, <paramref name="end"/>), from the KV
    /// cache manager's block table.
    /// </summary>
    /// <exception cref="InvalidOperationException">The table has fewer blocks.</exception>
    private ReadOnlySpan<int> UsedBlocks(long sequenceId, int end)
    {
        var table = _kvCache.GetBlockTable(sequenceId);
        int used = (end + _shape.BlockSize - 1) / _shape.BlockSize;
        if (table.Length < used) throw new InvalidOperationException($"sequence {sequenceId} has {table.Length} blocks; {used} are needed for position {end - 1}");
        return table[..used];
    }

    /// <summary>The pool slot of <paramref name="position"/>: block table[position / blockSize] · blockSize + position % blockSize.</summary>
    private int Slot(ReadOnlySpan<int> blocks, int position) => blocks[position / _shape.BlockSize] * _shape.BlockSize + position % _shape.BlockSize;

    /// <summary>The eager steps' buffers, grown to hold <paramref name="tokens"/>, <paramref name="seqs"/> and <paramref name="logitCount"/> rows.</summary>
    /// <remarks>
    /// NOTE: only the buffers whose size follows a count that grew are replaced (<see cref="StepBuffers.Grow"/>). No
    /// captured decode graph reads these: the padded decode steps have static buffers of their own
    /// (<see cref="DecodeGraphState.Step"/>, sized once for the largest bucket), so replacing one here invalidates nothing.
    /// </remarks>
    private StepBuffers EnsureStep(int tokens, int seqs, int logitCount)
    {
        var s = _step ?? new StepBuffers(_accelerator, _graph, _shape.MaxBlocksPerSeq, _experts);
        int had = s.TokenCapacity;
        s.Grow(tokens > had ? Math.Max(tokens, had * 2) : had, seqs, Math.Max(logitCount, 1));
        return _step = s;
    }

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
        DisposeDecodeGraphs();
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

    /// <summary>Test hook: the eager steps' buffers, null before the first eager step.</summary>
    internal StepBuffers? EagerStep => _step;

    /// <summary>
    /// Device activations and metadata for up to <see cref="TokenCapacity"/> tokens, <see cref="SeqCapacity"/> sequences
    /// and <see cref="LogitCapacity"/> logit rows, grown on demand (<see cref="Grow"/>).
    /// </summary>
    /// <remarks>
    /// <code>
    ///  buffer                                     size follows
    ///  activations of token rows, angles, MoE     tokens
    ///  activations of logit rows                  logits
    ///  ints (StepIntLayout)                       tokens, seqs, logits
    /// </code>
    /// </remarks>
    internal sealed class StepBuffers : IDisposable
    {
        private readonly Accelerator _accelerator;
        private readonly ModelGraph _graph;
        private readonly int _maxBlocks;
        private readonly DeviceMixtureOfExperts? _experts;

        /// <summary>Holds nothing until the first <see cref="Grow"/>.</summary>
        public StepBuffers(Accelerator a, ModelGraph graph, int maxBlocks, DeviceMixtureOfExperts? experts)
        {
            _accelerator = a;
            _graph = graph;
            _maxBlocks = maxBlocks;
            _experts = experts;
            Buffers = new MemoryBuffer1D<float, Stride1D.Dense>[graph.Buffers.Length];
        }

        public int TokenCapacity { get; private set; }
        public int SeqCapacity { get; private set; }
        public int LogitCapacity { get; private set; }
        public MemoryBuffer1D<float, Stride1D.Dense>[] Buffers { get; }                 // by graph buffer id, [rows, width]
        public MemoryBuffer1D<float, Stride1D.Dense> Angles { get; private set; } = null!;  // per rotation table: cos [n, ropeDim / 2] then sin
        public MemoryBuffer1D<int, Stride1D.Dense> Ints { get; private set; } = null!;      // the step's metadata, laid out as StepIntLayout
        public DeviceMixtureOfExperts.Scratch? Experts { get; private set; }                 // the mixture-of-experts blocks' scratch, when the model has any

        /// <summary>
        /// Raises each capacity to its count where that is larger, replacing only the buffers whose size follows a count
        /// that grew; when an allocation fails, what was allocated is freed and every buffer and capacity stays as it was.
        /// </summary>
        public void Grow(int tokens, int seqs, int logits)
        {
            bool moreTokens = tokens > TokenCapacity, moreLogits = logits > LogitCapacity;
            if (!moreTokens && !moreLogits && seqs <= SeqCapacity) return;
            tokens = Math.Max(tokens, TokenCapacity);
            seqs = Math.Max(seqs, SeqCapacity);
            logits = Math.Max(logits, LogitCapacity);
            var buffers = (MemoryBuffer1D<float, Stride1D.Dense>[])Buffers.Clone();
            MemoryBuffer1D<float, Stride1D.Dense>? angles = null;
            MemoryBuffer1D<int, Stride1D.Dense>? ints = null;
            DeviceMixtureOfExperts.Scratch? experts = null;
            try
            {
                for (int i = 0; i < buffers.Length; i++)
                {
                    var spec = _graph.Buffers[i];
                    if (spec.LogitRows ? moreLogits : moreTokens) buffers[i] = AllocateActivation(spec, spec.LogitRows ? logits : tokens);
                }
                if (moreTokens)
                {
                    angles = AllocateAngles(tokens);
                    experts = _experts?.CreateScratch(tokens);
                }
                ints = _accelerator.Allocate1D<int>(new StepIntLayout(tokens, seqs, logits, _maxBlocks).Length);
            }
            catch
            {
                for (int i = 0; i < buffers.Length; i++)
                    if (buffers[i] != Buffers[i]) buffers[i].Dispose();
                angles?.Dispose();
                experts?.Dispose();
                ints?.Dispose();
                throw;
            }
            for (int i = 0; i < buffers.Length; i++)
            {
                if (buffers[i] == Buffers[i]) continue;
                Buffers[i]?.Dispose();
                Buffers[i] = buffers[i];
            }
            if (moreTokens)
            {
                Angles?.Dispose();
                Angles = angles!;
                Experts?.Dispose();
                Experts = experts;
            }
            Ints?.Dispose();
            Ints = ints;
            (TokenCapacity, SeqCapacity, LogitCapacity) = (tokens, seqs, logits);
        }

        /// <summary>Graph buffer <paramref name="spec"/> for <paramref name="rows"/> rows, <c>[rows, width]</c>.</summary>
        private MemoryBuffer1D<float, Stride1D.Dense> AllocateActivation(BufferSpec spec, int rows) =>
            _accelerator.Allocate1D<float>(Math.Max(1L, (long)rows * spec.Width));

        /// <summary>Every rotation table's cos and sin for <paramref name="tokens"/> tokens.</summary>
        private MemoryBuffer1D<float, Stride1D.Dense> AllocateAngles(int tokens)
        {
            int ropeFloats = 0;
            foreach (var r in _graph.RopeTables) ropeFloats += r.RopeDim;
            return _accelerator.Allocate1D<float>(Math.Max(1L, (long)tokens * ropeFloats));
        }

        /// <summary>Bytes of the activations, angles and metadata in device memory.</summary>
        public long ByteCount
        {
            get
            {
                long total = Angles.LengthInBytes + Ints.LengthInBytes + (Experts?.ByteCount ?? 0);
                foreach (var b in Buffers) total += b.LengthInBytes;
                return total;
            }
        }

        // views into Ints, set by Upload for the current step
        public ArrayView<int> Tokens { get; set; }
        public ArrayView<int> Slots { get; set; }
        public ArrayView<int> LogitRows { get; set; }

        public void Dispose()
        {
            foreach (var b in Buffers) b?.Dispose();
            Angles?.Dispose();
            Ints?.Dispose();
            Experts?.Dispose();
        }
    }
}
