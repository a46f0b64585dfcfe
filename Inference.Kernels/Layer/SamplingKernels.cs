using ILGPU;
using Inference.Sampling;

namespace Inference.Kernels.Layer;

/// <summary>
/// Token choice on the device: the penalties, greedy, top-k, top-p, min-p and the tempered draw of
/// <see cref="Sampler"/>, in <see cref="SamplingMath"/>'s order-independent arithmetic, so the device chooses what the
/// host sampler (the plain reference of these kernels) chooses for the same logits and draw.
/// </summary>
/// <remarks>
/// <code>
///  ApplyPenalties   one thread per penalty entry; phase Repeat, then phase Subtract (two launches: the host rounds
///                   the repetition's product before subtracting)
///  Sample           one group per row, any power of two up to MaxGroupSize threads:
///    best   = min key over the row                                   (greedy: its id, done)
///    bound  = key of the k-th candidate (radix select by count)      candidates: key ≤ bound
///    S      = Σ w(x − max) over candidates                           64-bit integers: order-independent
///    bound  = first key whose cumulative weight ≥ P·S (radix select by weight)
///    bound  = (first key after best whose weight &lt; MinP·w(0)) − 1
///    S′     = Σ w(x/T − max/T) over candidates; pick = first key whose cumulative weight &gt; draw·S′ (else the last)
///  radix select: 8 passes over the row, one per byte of the 64-bit key, each a 256-bin histogram of counts and
///  weights in shared memory; the first thread scans the bins in order
/// </code>
/// </remarks>
public static class SamplingKernels
{
    /// <summary>Largest group of <see cref="Sample"/> (the size of its reduction scratch).</summary>
    public const int MaxGroupSize = 256;

    private const int Bins = 256;
    private const int ModeCount = 0, ModeReach = 1, ModeExceed = 2;
    private const int OpMin = 0, OpMax = 1, OpSum = 2;

    /// <summary>Applies one phase of the penalty entries to the logits. Grid <c>(entries)</c>, implicitly grouped.</summary>
    /// <param name="e">The entry.</param>
    /// <param name="logits">The step's logits, <c>[rows, vocab]</c>, modified in place.</param>
    /// <param name="ints">Per entry: index into <paramref name="logits"/>, flags.</param>
    /// <param name="floats">Per entry: repetition penalty, amount subtracted.</param>
    /// <param name="phase"><see cref="DeviceSamplingRows.Repeat"/> or <see cref="DeviceSamplingRows.Subtract"/>.</param>
    public static void ApplyPenalties(Index1D e, ArrayView<float> logits, ArrayView<int> ints, ArrayView<float> floats, int phase)
    {
        if ((ints[2 * e + 1] & phase) == 0) return;
        long i = ints[2 * e];
        float l = logits[i];
        if (phase == DeviceSamplingRows.Repeat)
        {
            float p = floats[2 * e];
            logits[i] = l > 0 ? l / p : l * p;
        }
        else
        {
            logits[i] = l - floats[2 * e + 1];
        }
    }

    /// <summary>Chooses one token per row. Grid <c>(rows)</c>, group <c>(power of two ≤ MaxGroupSize)</c>.</summary>
    /// <param name="logits">The step's (penalized) logits, <c>[logit rows, vocab]</c>.</param>
    /// <param name="rowInts">Per row: logit row, top-k.</param>
    /// <param name="rowFloats">Per row: temperature, top-p, min-p, draw.</param>
    /// <param name="expTable"><see cref="SamplingMath.ExpTable"/>.</param>
    /// <param name="tokens">Output, <c>[rows]</c>.</param>
    /// <param name="vocab">Row length.</param>
    public static void Sample(ArrayView<float> logits, ArrayView<int> rowInts, ArrayView<float> rowFloats, ArrayView<float> expTable,
        ArrayView<int> tokens, int vocab)
    {
        var counts = SharedMemory.Allocate<int>(Bins);
        var masses = SharedMemory.Allocate<long>(Bins);
        var scratch = SharedMemory.Allocate<ulong>(MaxGroupSize + 1);
        int row = Grid.IdxX;
        var x = logits.SubView((long)rowInts[2 * row] * vocab, vocab);

        ulong best = ulong.MaxValue;
        for (int c = Group.IdxX; c < vocab; c += Group.DimX)
        {
            ulong key = KeyAt(x, c);
            if (key < best) best = key;
        }
        best = Reduce(best, OpMin, scratch);
        float temperature = rowFloats[4 * row];
        if (temperature <= 0)
        {
            if (Group.IsFirstThread) tokens[row] = SamplingMath.IdOf(best);
            return;
        }

        float max = x[SamplingMath.IdOf(best)];
        ulong bound = ulong.MaxValue;
        int topK = rowInts[2 * row + 1];
        if (topK > 0 && topK < vocab)
            bound = Select(x, vocab, bound, ModeCount, topK, 0, false, 1f, max, expTable, counts, masses, scratch);

        long sum = SumWeights(x, vocab, bound, false, 1f, max, expTable, scratch);
        float topP = rowFloats[4 * row + 1];
        if (topP < 1)
        {
            double target = SamplingMath.TopPTarget(topP, sum);
            if (SamplingMath.ReachesTopP(sum, target))
                bound = Select(x, vocab, bound, ModeReach, 0, target, false, 1f, max, expTable, counts, masses, scratch);
        }
        float minP = rowFloats[4 * row + 2];
        if (minP > 0)
        {
            double threshold = SamplingMath.MinPThreshold(minP, Weight(max, false, 1f, max, expTable));
            ulong fail = ulong.MaxValue;
            for (int c = Group.IdxX; c < vocab; c += Group.DimX)
            {
                ulong key = KeyAt(x, c);
                if (key <= bound && key != best && key < fail && Weight(x[c], false, 1f, max, expTable) < threshold) fail = key;
            }
            fail = Reduce(fail, OpMin, scratch);
            if (fail != ulong.MaxValue) bound = fail - 1;
        }

        float top = max / temperature;
        long total = SumWeights(x, vocab, bound, true, temperature, top, expTable, scratch);
        double drawTarget = SamplingMath.DrawTarget(rowFloats[4 * row + 3], total);
        ulong pick;
        if (total > drawTarget)
        {
            pick = Select(x, vocab, bound, ModeExceed, 0, drawTarget, true, temperature, top, expTable, counts, masses, scratch);
        }
        else
        {
            // Nothing exceeds the draw (all weights 0): the last kept candidate, as the host.
            pick = 0;
            for (int c = Group.IdxX; c < vocab; c += Group.DimX)
            {
                ulong key = KeyAt(x, c);
                if (key <= bound && key > pick) pick = key;
            }
            pick = Reduce(pick, OpMax, scratch);
        }
        if (Group.IsFirstThread) tokens[row] = SamplingMath.IdOf(pick);
    }

    private static ulong KeyAt(ArrayView<float> x, int c) => SamplingMath.Key(Interop.FloatAsInt(x[c]), c);

    /// <summary>w(v − top), or w(v / t − top) when tempered (the host's expressions).</summary>
    private static long Weight(float v, bool tempered, float t, float top, ArrayView<float> table)
    {
        float d = tempered ? v / t - top : v - top;
        if (!SamplingMath.WeightParts(d, out int i1, out int i2, out int i3, out int shift)) return 0;
        return SamplingMath.WeightOf(table[i1], table[i2], table[i3], shift);
    }

    private static long SumWeights(ArrayView<float> x, int vocab, ulong bound, bool tempered, float t, float top, ArrayView<float> table, ArrayView<ulong> scratch)
    {
        long sum = 0;
        for (int c = Group.IdxX; c < vocab; c += Group.DimX)
            if (KeyAt(x, c) <= bound) sum += Weight(x[c], tempered, t, top, table);
        return (long)Reduce((ulong)sum, OpSum, scratch);
    }

    /// <summary>
    /// The smallest key among the candidates (key ≤ <paramref name="bound"/>) at which the cumulative count reaches
    /// <paramref name="k"/> (<see cref="ModeCount"/>), or the cumulative weight reaches (<see cref="ModeReach"/>) or
    /// exceeds (<see cref="ModeExceed"/>) <paramref name="target"/>; the caller makes sure all candidates together do.
    /// </summary>
    private static ulong Select(ArrayView<float> x, int vocab, ulong bound, int mode, long k, double target, bool tempered, float t, float top,
        ArrayView<float> table, ArrayView<int> counts, ArrayView<long> masses, ArrayView<ulong> scratch)
    {
        ulong prefix = 0;
        long beforeCount = 0, beforeMass = 0;   // the first thread's: candidates in the bins before the chosen ones
        for (int shift = 56; shift >= 0; shift -= 8)
        {
            for (int i = Group.IdxX; i < Bins; i += Group.DimX)
            {
                counts[i] = 0;
                masses[i] = 0;
            }
            Group.Barrier();
            for (int c = Group.IdxX; c < vocab; c += Group.DimX)
            {
                ulong key = KeyAt(x, c);
                if (key > bound || (shift < 56 && ((key ^ prefix) >> (shift + 8)) != 0)) continue;
                int bin = (int)(key >> shift) & (Bins - 1);
                Atomic.Add(ref counts[bin], 1);
                if (mode != ModeCount)
                {
                    long w = Weight(x[c], tempered, t, top, table);
                    if (w != 0) Atomic.Add(ref masses[bin], w);
                }
            }
            Group.Barrier();
            if (Group.IsFirstThread)
            {
                int chosen = Bins - 1;
                for (int bin = 0; bin < Bins; bin++)
                {
                    int n = counts[bin];
                    if (n == 0) continue;
                    long count = beforeCount + n, mass = beforeMass + masses[bin];
                    bool reached = mode == ModeCount ? count >= k : mode == ModeReach ? SamplingMath.ReachesTopP(mass, target) : mass > target;
                    if (reached)
                    {
                        chosen = bin;
                        break;
                    }
                    beforeCount = count;
                    beforeMass = mass;
                }
                scratch[MaxGroupSize] = (ulong)chosen;
            }
            Group.Barrier();
            prefix |= scratch[MaxGroupSize] << shift;
            Group.Barrier();
        }
        return prefix;
    }

    /// <summary>Min, max or (wrapping) sum of <paramref name="value"/> over the group; every thread gets it.</summary>
    private static ulong Reduce(ulong value, int op, ArrayView<ulong> scratch)
    {
        int t = Group.IdxX;
        scratch[t] = value;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (t < stride)
            {
                ulong a = scratch[t], b = scratch[t + stride];
                scratch[t] = op == OpMin ? (b < a ? b : a) : op == OpMax ? (b > a ? b : a) : a + b;
            }
            Group.Barrier();
        }
        ulong result = scratch[0];
        Group.Barrier();
        return result;
    }
}
