using System.Numerics.Tensors;
using Inference.Models.Graph;

namespace Inference.Backends.Cpu;

/// <summary>
/// The mixture-of-experts feed-forward on the CPU (<see cref="OpKind.MixtureOfExperts"/>): route every token, then run
/// each expert once over the tokens that chose it (their rows gathered together), so a step reads only the selected
/// experts' weights and reads each of them once however many tokens chose it.
/// </summary>
/// <remarks>
/// <code>
/// logits = router · x                         [n, experts]     one matmul for the step
/// p = softmax(logits); top-k; w = p or p / Σp [n, k]           per token, ties to the lower expert index
/// for each expert e chosen by tokens T:       gather x[T] → X; H = silu(gateₑ X) ⊙ upₑ X; Y[T's slots] = downₑ H
/// out[t] = Σⱼ wⱼ · Y[t, j] (j in top-k order) + σ(gₛ · x[t]) · shared(x[t])
/// </code>
/// A row's bits do not depend on the other tokens of the step: its expert's matmul rows are computed alike whatever
/// their count (the kernels are batch-invariant), and its sum runs in its own top-k order.
/// Not thread-safe: one per model, used from the engine thread. Scratch grows to the largest step and is then reused.
/// </remarks>
internal sealed class MixtureOfExperts
{
    private float[] _logits = [];
    private int[] _chosen = [];        // [n, k] expert of each slot
    private float[] _weights = [];     // [n, k]
    private int[] _counts = [];        // [experts]
    private int[] _starts = [];        // [experts + 1]
    private int[] _slotRow = [];       // [n, k] → row of Y
    private int[] _rowToken = [];      // [n·k] → token of the row, grouped by expert
    private float[] _gathered = [];    // [n, dim]
    private float[] _gate = [];        // [n, width]
    private float[] _up = [];          // [n, width]
    private float[] _y = [];           // [n·k, dim]
    private float[] _shared = [];      // [n, dim]

    /// <summary>dst = the mixture-of-experts block <paramref name="layer"/> of src ([n, dim] each).</summary>
    /// <param name="layer">Routing and weight ids.</param>
    /// <param name="matrices">The model's matrices by weight id (prepared for the CPU).</param>
    /// <param name="vectors">The model's vectors by weight id.</param>
    /// <param name="src">Normalised input rows, [n, dim].</param>
    /// <param name="dst">Receives the output rows, [n, dim].</param>
    /// <param name="n">Tokens in the step.</param>
    /// <param name="pool">Threads for the matmuls.</param>
    public void Run(ExpertLayer layer, WeightMatrix[] matrices, float[]?[] vectors, ReadOnlySpan<float> src, Span<float> dst, int n, WorkerPool pool)
    {
        int experts = layer.Count, k = layer.TopK, width = layer.Width;
        int dim = matrices[layer.Router].Cols;
        Grow(n, experts, k, dim, width, layer.SharedWidth);

        var logits = _logits.AsSpan(0, n * experts);
        MatMul.Multiply(matrices[layer.Router], src, logits, n, pool);
        Route(logits, n, experts, k, layer.NormalizeWeights, _chosen, _weights);

        Group(_chosen.AsSpan(0, n * k), k, _counts.AsSpan(0, experts), _starts.AsSpan(0, experts + 1), _slotRow, _rowToken);

        for (int e = 0; e < experts; e++)
        {
            int first = _starts[e], count = _starts[e + 1] - first;
            // NOTE: an expert-parallel rank runs its own experts only (the others' ids are -1).
            if (count == 0 || layer.Gate[e] < 0) continue;
            var x = _gathered.AsSpan(0, count * dim);
            for (int r = 0; r < count; r++) src.Slice(_rowToken[first + r] * dim, dim).CopyTo(x.Slice(r * dim, dim));
            RunExpert(layer, matrices, e, x, count, _gate.AsSpan(0, count * width), _up.AsSpan(0, count * width), _y.AsSpan(first * dim, count * dim), pool);
        }

        for (int t = 0; t < n; t++)
        {
            var o = dst.Slice(t * dim, dim);
            o.Clear();
            for (int j = 0; j < k; j++)
            {
                int slot = t * k + j;
                if (layer.Gate[_chosen[slot]] < 0) continue;
                TensorPrimitives.MultiplyAdd(_y.AsSpan(_slotRow[slot] * dim, dim), _weights[slot], o, o);
            }
        }

        if (!layer.HasShared) return;
        int sw = layer.SharedWidth;
        AddShared(layer, matrices, vectors, src, dst, n, dim, _gate.AsSpan(0, n * sw), _up.AsSpan(0, n * sw), _shared.AsSpan(0, n * dim), pool);
    }

    /// <summary>
    /// Groups the slots by expert (a counting sort, an expert's slots in token order): expert e's rows are
    /// <c>starts[e] … starts[e + 1] − 1</c>, row r holds token <c>rowTokens[r]</c>, slot i's output is row <c>slotRows[i]</c>.
    /// The device's grouping kernel (<c>ExpertKernels.Group</c>) is checked against it.
    /// </summary>
    /// <param name="chosen">Expert of each slot, <c>[n, k]</c>.</param>
    /// <param name="k">Experts per token.</param>
    /// <param name="counts">Scratch, <c>[experts]</c>.</param>
    /// <param name="starts">Output, <c>[experts + 1]</c>.</param>
    /// <param name="slotRows">Output, <c>[n · k]</c>.</param>
    /// <param name="rowTokens">Output, <c>[n · k]</c>.</param>
    internal static void Group(ReadOnlySpan<int> chosen, int k, Span<int> counts, Span<int> starts, Span<int> slotRows, Span<int> rowTokens)
    {
        counts.Clear();
        foreach (int e in chosen) counts[e]++;
        starts[0] = 0;
        for (int e = 0; e < counts.Length; e++) starts[e + 1] = starts[e] + counts[e];
        counts.Clear();
        for (int i = 0; i < chosen.Length; i++)
        {
            int e = chosen[i], row = starts[e] + counts[e]++;
            slotRows[i] = row;
            rowTokens[row] = i / k;
        }
    }

    /// <summary>y = down_e(silu(gate_e · x) ⊙ up_e · x) for <paramref name="count"/> rows of x (gate and up are scratch of [count, width]).</summary>
    internal static void RunExpert(ExpertLayer layer, WeightMatrix[] matrices, int e, ReadOnlySpan<float> x, int count, Span<float> gate, Span<float> up, Span<float> y, WorkerPool pool)
    {
        MatMul.MultiplyShared(x, count, pool, matrices[layer.Gate[e]], gate, matrices[layer.Up[e]], up, default, default);
        Models.LlamaModel.SwiGlu(gate, up, pool);
        MatMul.Multiply(matrices[layer.Down[e]], gate, y, count, pool);
    }

    /// <summary>
    /// dst[t] += σ(g · src[t]) · shared(src[t]) for <paramref name="n"/> rows (gate and up are scratch of [n, shared width],
    /// shared of [n, dim]).
    /// </summary>
    internal static void AddShared(ExpertLayer layer, WeightMatrix[] matrices, float[]?[] vectors, ReadOnlySpan<float> src, Span<float> dst, int n, int dim,
        Span<float> gate, Span<float> up, Span<float> shared, WorkerPool pool)
    {
        MatMul.MultiplyShared(src, n, pool, matrices[layer.SharedGate], gate, matrices[layer.SharedUp], up, default, default);
        Models.LlamaModel.SwiGlu(gate, up, pool);
        MatMul.Multiply(matrices[layer.SharedDown], gate, shared, n, pool);
        var gateInput = vectors[layer.SharedGateInput]!;
        for (int t = 0; t < n; t++)
        {
            float g = TensorPrimitives.Dot(src.Slice(t * dim, dim), gateInput);
            float sigma = 1f / (1f + MathF.Exp(-g));
            var o = dst.Slice(t * dim, dim);
            TensorPrimitives.MultiplyAdd(shared.Slice(t * dim, dim), sigma, o, o);
        }
    }

    /// <summary>
    /// Top-k routing of every token: <paramref name="logits"/> ([n, experts]) become probabilities (softmax, in place);
    /// the k largest per token (ties to the lower index), in descending order, go to <paramref name="chosen"/> with
    /// their probabilities in <paramref name="weights"/>, renormalised to sum to 1 when <paramref name="normalize"/>.
    /// </summary>
    internal static void Route(Span<float> logits, int n, int experts, int k, bool normalize, Span<int> chosen, Span<float> weights)
    {
        for (int t = 0; t < n; t++)
        {
            var p = logits.Slice(t * experts, experts);
            // NOTE: the maximum first, so large logits do not overflow exp.
            float max = TensorPrimitives.Max(p);
            TensorPrimitives.Subtract(p, max, p);
            TensorPrimitives.Exp(p, p);
            TensorPrimitives.Divide(p, TensorPrimitives.Sum(p), p);
            var c = chosen.Slice(t * k, k);
            var w = weights.Slice(t * k, k);
            for (int j = 0; j < k; j++)
            {
                int best = -1;
                for (int e = 0; e < experts; e++)
                {
                    if (c[..j].Contains(e)) continue;
                    if (best < 0 || p[e] > p[best]) best = e;
                }
                c[j] = best;
                w[j] = p[best];
            }
            if (!normalize) continue;
            float sum = 0f;
            for (int j = 0; j < k; j++) sum += w[j];
            for (int j = 0; j < k; j++) w[j] /= sum;
        }
    }

    private int _capacity = -1;

    private void Grow(int n, int experts, int k, int dim, int width, int sharedWidth)
    {
        if (n <= _capacity && _counts.Length >= experts && _chosen.Length >= n * k && _gate.Length >= n * Math.Max(width, sharedWidth)
            && _gathered.Length >= n * dim && _y.Length >= n * k * dim && _logits.Length >= n * experts) return;
        int cap = Math.Max(n, 2 * _capacity);
        _capacity = cap;
        _counts = new int[experts];
        _starts = new int[experts + 1];
        _logits = new float[cap * experts];
        _chosen = new int[cap * k];
        _weights = new float[cap * k];
        _slotRow = new int[cap * k];
        _rowToken = new int[cap * k];
        _gathered = new float[cap * dim];
        _gate = new float[cap * Math.Max(width, sharedWidth)];
        _up = new float[cap * Math.Max(width, sharedWidth)];
        _y = new float[cap * k * dim];
        _shared = sharedWidth > 0 ? new float[cap * dim] : [];
    }
}
