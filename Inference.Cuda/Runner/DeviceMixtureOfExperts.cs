using ILGPU;
using ILGPU.Runtime;
using Inference.Kernels.Layer;
using Inference.Models.Graph;

namespace Inference.Cuda.Runner;

/// <summary>
/// The mixture-of-experts feed-forward (<see cref="OpKind.MixtureOfExperts"/>) on the device, as the CPU's
/// <see cref="Backends.Cpu.MixtureOfExperts"/> defines it, with no host round trip: routing, grouping by expert and the
/// expert products all run on the device, and every launch depends on the step's token count only, never on the routing.
/// </summary>
/// <remarks>
/// <code>
///  logits = router · x                        [n, experts]   (qwen2moe: with the shared expert's gate and up, one conversion of x)
///  Route → chosen [n, k], w [n, k]             softmax, top-k (ties to the lower id), renormalisation as the model defines
///  Group → starts [experts + 1], rowToken [n·k], slotRow [n·k]     the CPU path's counting sort, one thread per expert
///  X = x[rowToken]                             [n·k, dim]    expert e's rows are starts[e] … starts[e + 1] − 1
///  G, U = gate, up (all experts, one launch each)   [n·k, width]   grid (row groups, ⌈n / 16⌉, experts)
///                                              (F16 stacks from TensorCoreMinRows tokens: X staged to f16 once for both,
///                                               grouped tensor-core GEMM, grid (⌈width / 128⌉, ⌈n / 128⌉, experts))
///  SwiGLU over all rows; Y = down (one launch)      [n·k, dim]     (grouped: SwiGLU's output staged to f16 in turn)
///  out[t] = Σⱼ w[t, j] · Y[slotRow[t, j]]      (+ σ(g · x[t]) · shared(x[t]) for qwen2moe, the shared expert run first)
/// </code>
/// Each expert's gate, up and down matrices of a block are stacked in one buffer (<see cref="DeviceMatrix.UploadExperts"/>),
/// so one launch reaches every expert; a group of an expert with no rows in its range returns before reading any weight,
/// so a decode step reads only the chosen experts' weights. Nothing here copies to the host: the step's only
/// device-to-host copy stays the logits (or the sampled tokens). The scratch is the caller's (<see cref="Scratch"/>, one
/// per step-buffer set): the eager steps' grows with them, the captured decode steps' is sized once for the largest bucket,
/// so a captured graph keeps valid addresses. Not thread-safe: the engine thread only.
/// </remarks>
internal sealed class DeviceMixtureOfExperts : IDisposable
{
    private readonly Accelerator _accelerator;
    private readonly LayerKernels _kernels;
    private readonly DeviceMatrix?[] _matrices;                               // by weight id
    private readonly MemoryBuffer1D<float, Stride1D.Dense>?[] _vectors;       // by weight id
    private readonly Dictionary<ExpertLayer, Stack> _stacks = new(ReferenceEqualityComparer.Instance);   // by block
    private readonly int _experts, _topK, _dim, _width;

    /// <summary>A block's experts' matrices, each kind stacked (expert e at e · rows · row bytes).</summary>
    private sealed record Stack(DeviceMatrix Gate, DeviceMatrix Up, DeviceMatrix Down);

    /// <param name="accelerator">The device.</param>
    /// <param name="kernels">The layer kernels.</param>
    /// <param name="graph">The model's graph (its <see cref="ModelGraph.Experts"/>).</param>
    /// <param name="bound">Every weight matrix of the graph on the host, by weight id; the experts' are uploaded here, stacked.</param>
    /// <param name="matrices">The other matrices on the device (router, shared expert), by weight id.</param>
    /// <param name="vectors">The vectors on the device, by weight id.</param>
    public DeviceMixtureOfExperts(Accelerator accelerator, LayerKernels kernels, ModelGraph graph, Backends.Cpu.WeightMatrix[] bound,
        DeviceMatrix?[] matrices, MemoryBuffer1D<float, Stride1D.Dense>?[] vectors)
    {
        _accelerator = accelerator;
        _kernels = kernels;
        _matrices = matrices;
        _vectors = vectors;
        try
        {
            foreach (var layer in graph.Experts)
            {
                _experts = Math.Max(_experts, layer.Count);
                _topK = Math.Max(_topK, layer.TopK);
                _dim = Math.Max(_dim, graph.Weights[layer.Router].Cols);
                _width = Math.Max(_width, Math.Max(layer.Width * layer.TopK, layer.SharedWidth));
                DeviceMatrix? gate = null, up = null;
                try
                {
                    gate = Upload(bound, layer.Gate);
                    up = Upload(bound, layer.Up);
                    _stacks[layer] = new Stack(gate, up, Upload(bound, layer.Down));
                }
                catch
                {
                    // the stacks uploaded for this layer before the failure are in no Stack yet
                    up?.Dispose();
                    gate?.Dispose();
                    throw;
                }
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Bytes of the stacked experts' matrices.</summary>
    public long WeightBytes
    {
        get
        {
            long total = 0;
            foreach (var s in _stacks.Values) total += s.Gate.ByteCount + s.Up.ByteCount + s.Down.ByteCount;
            return total;
        }
    }

    private DeviceMatrix Upload(Backends.Cpu.WeightMatrix[] bound, int[] ids)
    {
        var parts = new Backends.Cpu.WeightMatrix[ids.Length];
        for (int e = 0; e < ids.Length; e++)
        {
            // NOTE: an expert-parallel rank's graph marks the other ranks' experts -1; the device runs whole blocks.
            if (ids[e] < 0) throw new NotSupportedException("the device executor runs every expert of a block (no expert parallelism)");
            parts[e] = bound[ids[e]];
        }
        return DeviceMatrix.UploadExperts(_accelerator, parts);
    }

    /// <summary>
    /// dst = the mixture-of-experts block <paramref name="layer"/> of src (<c>[n, dim]</c> each), in
    /// <paramref name="scratch"/>; the router, expert and shared-expert products take <paramref name="gemm"/> where it
    /// applies (the experts' on its grouped form, <see cref="DeviceMatrix.MatMulExperts"/>; null: the row kernels only,
    /// as a captured step's products).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> is more tokens than <paramref name="scratch"/> holds.</exception>
    public void Run(ExpertLayer layer, ArrayView<float> src, ArrayView<float> dst, int n, Scratch scratch, PtxTensorCoreGemm? gemm)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(n, scratch.Capacity);
        int experts = layer.Count, k = layer.TopK, width = layer.Width, slots = n * k;
        var router = _matrices[layer.Router]!;
        var stack = _stacks[layer];
        int dim = router.Cols;
        // scratch, [capacity] rows each: logits [n, E] | w [n, k] | X [n·k, dim] | G, U [n·k, width] or [n, sharedWidth] | Y [n·k, dim] | S [n, dim] | g [n]
        ArrayView<float> f = scratch.Floats.View;
        long c = scratch.Capacity, at = 0;
        ArrayView<float> Take(long length)
        {
            var v = f.SubView(at, length);
            at += (length + 3) & ~3L;   // NOTE: each part 16-byte aligned, so the row kernels' wide loads apply
            return v;
        }
        var logits = Take(c * _experts).SubView(0, (long)n * experts);
        var weights = Take(c * _topK).SubView(0, slots);
        var x = Take(c * _topK * _dim);
        var gate = Take(c * _width);
        var up = Take(c * _width);
        var y = Take(c * _topK * _dim);
        var shared = Take(c * _dim);
        var sharedGate = Take(c);
        // ints: chosen [n·k] | rowToken [n·k] | slotRow [n·k] | starts [experts + 1]
        ArrayView<int> ints = scratch.Ints.View;
        long ck = c * _topK;
        var chosen = ints.SubView(0, slots);
        var rowToken = ints.SubView(ck, slots);
        var slotRow = ints.SubView(2 * ck, slots);
        var starts = ints.SubView(3 * ck, experts + 1);

        // NOTE: the shared expert runs first, so that its gate and up products read the router's conversion of src
        // (DeviceMatrix.MatMulSameInput) before the experts' products convert their own rows; its gate and up lie in G and
        // U, free until then, its output in S and g, which nothing else writes.
        if (layer.HasShared)
        {
            int sw = layer.SharedWidth;
            var sGate = gate.SubView(0, (long)n * sw);
            var sUp = up.SubView(0, (long)n * sw);
            DeviceMatrix.MatMulSameInput(_kernels, gemm, src, n, [router, _matrices[layer.SharedGate]!, _matrices[layer.SharedUp]!], [logits, sGate, sUp]);
            _kernels.SwiGlu(sGate, sUp, sGate, n * sw);
            _matrices[layer.SharedDown]!.MatMul(_kernels, gemm, sGate, shared.SubView(0, (long)n * dim), n);
            // σ's input g = gate_inp_shexp · x: the gate vector is a one-row matrix
            _kernels.MatMul(_vectors[layer.SharedGateInput]!.View, src, sharedGate.SubView(0, n), 1, dim, n);
        }
        else router.MatMul(_kernels, gemm, src, logits, n);
        _kernels.RouteExperts(logits, chosen, weights, n, experts, k, layer.NormalizeWeights);
        _kernels.GroupExperts(chosen, starts, rowToken, slotRow, n, experts, k);
        _kernels.GatherRows(src, rowToken, x, slots, dim);
        DeviceMatrix.MatMulExpertsSameInput(_kernels, gemm, x, starts, slots, n, [stack.Gate, stack.Up], [gate, up]);
        _kernels.SwiGlu(gate, up, gate, slots * width);
        stack.Down.MatMulExperts(_kernels, gemm, gate, y, starts, slots, n);
        _kernels.CombineExperts(y, weights, slotRow, dst, n, dim, k);
        if (layer.HasShared) _kernels.AddSigmoidGated(dst, shared.SubView(0, (long)n * dim), sharedGate.SubView(0, n), n, dim);
    }

    /// <summary>Scratch for <see cref="Run"/> of up to <paramref name="tokens"/> tokens of any block of this model.</summary>
    public Scratch CreateScratch(int tokens)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        // 8 parts, each rounded up to 4 floats
        long k = _topK, floats = (long)tokens * (_experts + k + 2 * k * _dim + 2L * _width + _dim + 1) + 8 * 3;
        return new Scratch(_accelerator, tokens, floats, 3L * tokens * k + _experts + 1);
    }

    /// <summary>The device scratch of <see cref="Run"/> for up to <see cref="Capacity"/> tokens (<see cref="CreateScratch"/>).</summary>
    internal sealed class Scratch : IDisposable
    {
        internal Scratch(Accelerator accelerator, int capacity, long floats, long ints)
        {
            Capacity = capacity;
            Floats = accelerator.Allocate1D<float>(floats);
            try { Ints = accelerator.Allocate1D<int>(ints); }
            catch
            {
                Floats.Dispose();
                throw;
            }
        }

        /// <summary>Tokens a step may have.</summary>
        public int Capacity { get; }
        public MemoryBuffer1D<float, Stride1D.Dense> Floats { get; }
        public MemoryBuffer1D<int, Stride1D.Dense> Ints { get; }

        /// <summary>Bytes in device memory.</summary>
        public long ByteCount => Floats.LengthInBytes + Ints.LengthInBytes;

        public void Dispose()
        {
            Floats.Dispose();
            Ints.Dispose();
        }
    }

    public void Dispose()
    {
        foreach (var s in _stacks.Values)
        {
            s.Gate.Dispose();
            s.Up.Dispose();
            s.Down.Dispose();
        }
    }
}
