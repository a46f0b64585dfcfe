using System.Numerics.Tensors;
using Inference.Backends.Cpu;
using Inference.Models.Graph;

namespace Inference.Parallelism;

/// <summary>
/// A mixture-of-experts block over expert-parallel ranks with an all-to-all dispatch and combine
/// (<see cref="OpKind.ExpertAllToAll"/>): each rank owns a share of the step's tokens and a share of the experts; the
/// rows of its tokens go to the ranks of the experts they chose, come back as those experts' outputs, and are summed on
/// the token's rank in its top-k order.
/// </summary>
/// <remarks>
/// <code>
///  rank r of T: tokens Part(n, T, r), experts Part(E, T, r)
///  route every token (the router is replicated; every rank holds every token's row)
///  dispatch  AllToAll: for each destination q, the rows of my tokens' slots whose expert is q's (token order, then slot)
///  compute   each of my experts over the rows it received, the outputs in the rows' places
///  return    AllToAll: the outputs back to the ranks that sent the rows, in the same order
///  combine   my tokens: Σⱼ wⱼ · yⱼ in top-k order (+ the shared expert over my tokens)
///  gather    AllGatherInPlace: every rank's tokens' outputs to every rank (the next layer reads every token)
/// </code>
/// Every rank routes every token alike, so each knows how many rows it receives from whom and for which expert: only
/// rows travel. The residual stream is replicated across the tensor ranks, so a rank could read the rows it is sent from
/// its own copy; the dispatch moves them anyway, as a layout whose ranks hold different tokens must (data-parallel
/// attention, a sequence-split residual stream), and the cost model counts it. A token's output is the one-rank
/// computation's bits: the same kernels (batch-invariant) over its rows and the same order of its sum.
/// Not thread-safe: one per rank's model. Scratch grows to the largest step and is then reused.
/// </remarks>
internal sealed class ExpertAllToAll
{
    private float[] _logits = [];
    private int[] _chosen = [];        // [n, k]
    private float[] _weights = [];     // [n, k]
    private int[] _owner = [];         // [experts] → rank
    private int[] _plan = [];          // [T · T] rows rank p sends to rank q
    private int[] _sendCounts = [], _receiveCounts = [];
    private int[] _slotRow = [];       // [my tokens · k] → row of _back
    private int[] _rowExpert = [];     // [received rows] → expert
    private int[] _expertRows = [];    // received rows grouped by expert
    private int[] _expertStart = [];   // [experts + 1]
    private float[] _send = [], _received = [], _outputs = [], _back = [];
    private float[] _gathered = [], _y = [], _gate = [], _up = [], _shared = [];

    /// <summary>dst = the block <paramref name="layer"/> (this rank's experts set, the others -1) of src ([n, dim] each, every token on every rank).</summary>
    public void Run(ExpertLayer layer, WeightMatrix[] matrices, float[]?[] vectors, ReadOnlySpan<float> src, Span<float> dst, int n, WorkerPool pool, RankGroup group, int rank)
    {
        int experts = layer.Count, k = layer.TopK, size = group.Size;
        int dim = matrices[layer.Router].Cols;
        var (first, mine) = RankGroup.Part(n, size, rank);
        Grow(n, experts, k, dim, Math.Max(layer.Width, layer.SharedWidth), size);

        var logits = _logits.AsSpan(0, n * experts);
        MatMul.Multiply(matrices[layer.Router], src, logits, n, pool);
        MixtureOfExperts.Route(logits, n, experts, k, layer.NormalizeWeights, _chosen, _weights);
        for (int q = 0; q < size; q++)
        {
            var (start, count) = RankGroup.Part(experts, size, q);
            for (int e = start; e < start + count; e++) _owner[e] = q;
        }

        // The plan: rows rank p sends to rank q (its tokens' slots whose expert is q's), known to every rank.
        var plan = _plan.AsSpan(0, size * size);
        plan.Clear();
        for (int p = 0; p < size; p++)
        {
            var (start, count) = RankGroup.Part(n, size, p);
            for (int i = start * k; i < (start + count) * k; i++) plan[p * size + _owner[_chosen[i]]]++;
        }

        // Dispatch: my tokens' rows, grouped by destination; each slot remembers where its output will come back.
        var sendCounts = _sendCounts.AsSpan(0, size);
        var receiveCounts = _receiveCounts.AsSpan(0, size);
        int sent = 0, received = 0;
        for (int q = 0; q < size; q++)
        {
            sendCounts[q] = plan[rank * size + q] * dim;
            receiveCounts[q] = plan[q * size + rank] * dim;
            sent += plan[rank * size + q];
            received += plan[q * size + rank];
        }
        int row = 0;
        for (int q = 0; q < size; q++)
        {
            for (int i = first * k; i < (first + mine) * k; i++)
            {
                if (_owner[_chosen[i]] != q) continue;
                src.Slice(i / k * dim, dim).CopyTo(_send.AsSpan(row * dim, dim));
                _slotRow[i - first * k] = row++;
            }
        }
        group.AllToAll(rank, _send.AsSpan(0, sent * dim), sendCounts, _received.AsSpan(0, received * dim), receiveCounts);

        // The experts of each received row, in the order the senders wrote them; the rows grouped by expert.
        row = 0;
        for (int p = 0; p < size; p++)
        {
            var (start, count) = RankGroup.Part(n, size, p);
            for (int i = start * k; i < (start + count) * k; i++)
                if (_owner[_chosen[i]] == rank) _rowExpert[row++] = _chosen[i];
        }
        var expertStart = _expertStart.AsSpan(0, experts + 1);
        expertStart.Clear();
        for (int r = 0; r < received; r++) expertStart[_rowExpert[r] + 1]++;
        for (int e = 0; e < experts; e++) expertStart[e + 1] += expertStart[e];
        var fill = _plan.AsSpan(size * size, experts);
        expertStart[..experts].CopyTo(fill);
        for (int r = 0; r < received; r++) _expertRows[fill[_rowExpert[r]]++] = r;
        for (int e = 0; e < experts; e++)
        {
            int at = expertStart[e], count = expertStart[e + 1] - at;
            if (count == 0) continue;
            if (layer.Gate[e] < 0) throw new InvalidOperationException($"rank {rank} was sent rows for expert {e}, which it does not hold");
            var x = _gathered.AsSpan(0, count * dim);
            for (int r = 0; r < count; r++) _received.AsSpan(_expertRows[at + r] * dim, dim).CopyTo(x.Slice(r * dim, dim));
            var y = _y.AsSpan(0, count * dim);
            MixtureOfExperts.RunExpert(layer, matrices, e, x, count, _gate.AsSpan(0, count * layer.Width), _up.AsSpan(0, count * layer.Width), y, pool);
            for (int r = 0; r < count; r++) y.Slice(r * dim, dim).CopyTo(_outputs.AsSpan(_expertRows[at + r] * dim, dim));
        }

        // Return: each sender gets its rows' outputs back in its order.
        group.AllToAll(rank, _outputs.AsSpan(0, received * dim), receiveCounts, _back.AsSpan(0, sent * dim), sendCounts);

        var own = dst.Slice(first * dim, mine * dim);
        for (int t = 0; t < mine; t++)
        {
            var o = own.Slice(t * dim, dim);
            o.Clear();
            for (int j = 0; j < k; j++)
            {
                int slot = (first + t) * k + j;
                TensorPrimitives.MultiplyAdd(_back.AsSpan(_slotRow[t * k + j] * dim, dim), _weights[slot], o, o);
            }
        }
        if (layer.HasShared && mine > 0)
        {
            int sw = layer.SharedWidth;
            MixtureOfExperts.AddShared(layer, matrices, vectors, src.Slice(first * dim, mine * dim), own, mine, dim,
                _gate.AsSpan(0, mine * sw), _up.AsSpan(0, mine * sw), _shared.AsSpan(0, mine * dim), pool);
        }
        group.AllGatherInPlace(rank, dst[..(n * dim)], first * dim, mine * dim);
    }

    private int _capacity = -1;
    private (int Experts, int K, int Dim, int Width, int Size) _shape;

    private void Grow(int n, int experts, int k, int dim, int width, int size)
    {
        if (n <= _capacity && _shape == (experts, k, dim, width, size)) return;
        int cap = Math.Max(n, 2 * _capacity);
        _shape = (experts, k, dim, width, size);
        _capacity = cap;
        _logits = new float[cap * experts];
        _chosen = new int[cap * k];
        _weights = new float[cap * k];
        _owner = new int[experts];
        _plan = new int[size * size + experts];
        _sendCounts = new int[size];
        _receiveCounts = new int[size];
        _slotRow = new int[cap * k];
        _rowExpert = new int[cap * k];
        _expertRows = new int[cap * k];
        _expertStart = new int[experts + 1];
        _send = new float[cap * k * dim];
        _received = new float[cap * k * dim];
        _outputs = new float[cap * k * dim];
        _back = new float[cap * k * dim];
        _gathered = new float[cap * k * dim];
        _y = new float[cap * k * dim];
        _gate = new float[cap * k * width];
        _up = new float[cap * k * width];
        _shared = new float[cap * dim];
    }
}
