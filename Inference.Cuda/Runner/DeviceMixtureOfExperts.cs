using ILGPU;
using ILGPU.Runtime;
using Inference.Kernels.Layer;
using Inference.Models.Graph;

namespace Inference.Cuda.Runner;

/// <summary>
/// The mixture-of-experts feed-forward (<see cref="OpKind.MixtureOfExperts"/>) on the device, as the CPU's
/// <see cref="Backends.Cpu.MixtureOfExperts"/> defines it: route on the device, group the token slots by expert on the
/// host, then run each chosen expert once over the rows routed to it, so a step reads only the selected experts' weights.
/// </summary>
/// <remarks>
/// <code>
///  device  logits = router · x                   [n, experts]
///          Route → chosen [n, k], w [n, k]          (softmax, top-k, renormalisation as the model defines)
///  host    chosen → host; counting sort by expert: rowToken [n·k] (token of each row of Y), slotRow [n·k] → device
///  device  X = x[rowToken]                        [n·k, dim]   one gather
///          per expert e with rows [first, first + count):  G = gateₑ X, U = upₑ X   [count, width]
///          SwiGLU over all rows, then per expert Y[first …] = downₑ G                [n·k, dim]
///          out[t] = Σⱼ w[t, j] · Y[slotRow[t, j]]   (+ σ(g · x[t]) · shared(x[t]) for qwen2moe)
/// </code>
/// NOTE: reading the expert ids back costs one device-to-host copy per MoE layer and step (n·k ints); in exchange each
/// expert's products are launched with exactly its rows, with the same matrix kernels (and the same batch invariance)
/// as every other product. Not thread-safe: the engine thread only.
/// </remarks>
internal sealed class DeviceMixtureOfExperts : IDisposable
{
    private readonly Accelerator _accelerator;
    private readonly LayerKernels _kernels;
    private readonly PtxTensorCoreGemm? _gemm;                                // CUDA: F16 products of many rows, as for every product
    private readonly DeviceMatrix?[] _matrices;                               // by weight id
    private readonly MemoryBuffer1D<float, Stride1D.Dense>?[] _vectors;       // by weight id
    private MemoryBuffer1D<float, Stride1D.Dense>? _floats;
    private MemoryBuffer1D<int, Stride1D.Dense>? _ints;
    private int _capacity;                                                    // tokens the scratch holds
    private int[] _chosen = [];       // [n, k] expert of each slot (host copy)
    private int[] _rows = [];         // [rowToken n·k | slotRow n·k]
    private int[] _counts = [];       // [experts]
    private int[] _starts = [];       // [experts + 1]
    private readonly int _experts, _topK, _dim, _width;

    public DeviceMixtureOfExperts(Accelerator accelerator, LayerKernels kernels, PtxTensorCoreGemm? gemm, ModelGraph graph, DeviceMatrix?[] matrices,
        MemoryBuffer1D<float, Stride1D.Dense>?[] vectors)
    {
        _accelerator = accelerator;
        _kernels = kernels;
        _gemm = gemm;
        _matrices = matrices;
        _vectors = vectors;
        foreach (var layer in graph.Experts)
        {
            _experts = Math.Max(_experts, layer.Count);
            _topK = Math.Max(_topK, layer.TopK);
            _dim = Math.Max(_dim, graph.Weights[layer.Router].Cols);
            _width = Math.Max(_width, Math.Max(layer.Width * layer.TopK, layer.SharedWidth));
        }
    }

    /// <summary>dst = the mixture-of-experts block <paramref name="layer"/> of src (<c>[n, dim]</c> each).</summary>
    public void Run(ExpertLayer layer, ArrayView<float> src, ArrayView<float> dst, int n)
    {
        int experts = layer.Count, k = layer.TopK, width = layer.Width, slots = n * k;
        var router = _matrices[layer.Router]!;
        int dim = router.Cols;
        Ensure(n);
        // scratch, [capacity] rows each: logits [n, E] | w [n, k] | X [n·k, dim] | G, U [n·k, width] or [n, sharedWidth] | Y [n·k, dim] | S [n, dim] | g [n]
        ArrayView<float> f = _floats!.View;
        long c = _capacity, at = 0;
        ArrayView<float> Take(long length)
        {
            var v = f.SubView(at, length);
            at += length;
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
        // ints: chosen [n·k] | rowToken [n·k] then slotRow [n·k] (adjacent: one upload)
        ArrayView<int> ints = _ints!.View;
        var chosen = ints.SubView(0, slots);
        var rowToken = ints.SubView(c * _topK, slots);
        var slotRow = ints.SubView(c * _topK + slots, slots);

        router.MatMul(_kernels, _gemm, src, logits, n);
        _kernels.RouteExperts(logits, chosen, weights, n, experts, k, layer.NormalizeWeights);
        chosen.CopyToCPU(_chosen.AsSpan(0, slots));   // waits for the routing

        // Group the slots by expert, in token order within an expert (as the CPU path does).
        var counts = _counts.AsSpan(0, experts);
        counts.Clear();
        for (int i = 0; i < slots; i++)
        {
            int e = _chosen[i];
            if ((uint)e >= (uint)experts) throw new InvalidOperationException($"the router chose expert {e} of {experts} (NaN activations?)");
            counts[e]++;
        }
        _starts[0] = 0;
        for (int e = 0; e < experts; e++) _starts[e + 1] = _starts[e] + counts[e];
        counts.Clear();
        for (int i = 0; i < slots; i++)
        {
            int e = _chosen[i], row = _starts[e] + counts[e]++;
            _rows[slots + i] = row;
            _rows[row] = i / k;
        }
        ints.SubView(c * _topK, 2L * slots).CopyFromCPU<int, ArrayView<int>>(_rows.AsSpan(0, 2 * slots));

        _kernels.GatherRows(src, rowToken, x, slots, dim);
        for (int e = 0; e < experts; e++)
        {
            int first = _starts[e], count = _starts[e + 1] - first;
            if (count == 0) continue;
            var xe = x.SubView((long)first * dim, (long)count * dim);
            _matrices[layer.Gate[e]]!.MatMul(_kernels, _gemm, xe, gate.SubView((long)first * width, (long)count * width), count);
            _matrices[layer.Up[e]]!.MatMul(_kernels, _gemm, xe, up.SubView((long)first * width, (long)count * width), count);
        }
        _kernels.SwiGlu(gate, up, gate, slots * width);
        for (int e = 0; e < experts; e++)
        {
            int first = _starts[e], count = _starts[e + 1] - first;
            if (count == 0) continue;
            _matrices[layer.Down[e]]!.MatMul(_kernels, _gemm, gate.SubView((long)first * width, (long)count * width), y.SubView((long)first * dim, (long)count * dim), count);
        }
        _kernels.CombineExperts(y, weights, slotRow, dst, n, dim, k);

        if (!layer.HasShared) return;
        int sw = layer.SharedWidth;
        var sGate = gate.SubView(0, (long)n * sw);
        var sUp = up.SubView(0, (long)n * sw);
        _matrices[layer.SharedGate]!.MatMul(_kernels, _gemm, src, sGate, n);
        _matrices[layer.SharedUp]!.MatMul(_kernels, _gemm, src, sUp, n);
        _kernels.SwiGlu(sGate, sUp, sGate, n * sw);
        var s = shared.SubView(0, (long)n * dim);
        _matrices[layer.SharedDown]!.MatMul(_kernels, _gemm, sGate, s, n);
        // σ's input g = gate_inp_shexp · x: the gate vector is a one-row matrix
        var g = sharedGate.SubView(0, n);
        _kernels.MatMul(_vectors[layer.SharedGateInput]!.View, src, g, 1, dim, n);
        _kernels.AddSigmoidGated(dst, s, g, n, dim);
    }

    /// <summary>Grows the device scratch and the host arrays to <paramref name="tokens"/> tokens (doubling).</summary>
    private void Ensure(int tokens)
    {
        if (tokens <= _capacity) return;
        int c = Math.Max(tokens, 2 * _capacity);
        _floats?.Dispose();
        _ints?.Dispose();
        _floats = null;
        _ints = null;
        long k = _topK, floats = (long)c * (_experts + k + 2 * k * _dim + 2L * _width + _dim + 1);
        _floats = _accelerator.Allocate1D<float>(floats);
        _ints = _accelerator.Allocate1D<int>(3L * c * k);
        _capacity = c;
        _chosen = new int[c * k];
        _rows = new int[2 * c * k];
        _counts = new int[_experts];
        _starts = new int[_experts + 1];
    }

    public void Dispose()
    {
        _floats?.Dispose();
        _ints?.Dispose();
    }
}
