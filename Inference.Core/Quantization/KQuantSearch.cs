using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Inference.Quantization;

/// <summary>
/// The K-quants' scale searches (ggml's <c>make_qkx2_quants</c> and <c>make_qx_quants</c>) for eight sub-blocks at once,
/// one sub-block per <see cref="Vector256{T}"/> lane, giving exactly the bits of the scalar searches in
/// <see cref="BlockQuantizer"/>.
/// </summary>
/// <remarks>
/// NOTE: every sum of the search is order-sensitive in single precision (ggml adds the values of a sub-block one after
/// another), so no sum is split across lanes: lane j runs sub-block j's loop in ggml's order, element by element, with
/// the same operations (no fused multiply-add, <c>(a*b)*c</c> as written, the integer codes rounded by the same
/// <c>1.5·2²³</c> bit trick). The branches become lane masks: a lane whose sub-block is constant (or tiny) computes
/// garbage that the final select discards, and a candidate scale replaces the best one only in lanes where the scalar
/// search would take it.
/// <code>
/// lane:          0        1        …  7
/// element i:  x[i]    x[n+i]    …  x[7n+i]     (n = 32 for Q4_K/Q5_K, 16 for Q6_K)
/// </code>
/// </remarks>
internal static class KQuantSearch
{
    /// <summary>Whether the vector searches run in hardware (else the scalar ones are faster).</summary>
    public static bool IsAccelerated => Vector256.IsHardwareAccelerated;

    /// <summary>ggml's <c>nearest_int</c> per lane: the same bit trick as <see cref="BlockQuantizer.NearestInt"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> NearestInt(Vector256<float> x)
    {
        var v = (x + Vector256.Create(12582912f)).AsInt32();
        return (v & Vector256.Create(0x007fffff)) - Vector256.Create(0x00400000);
    }

    /// <summary>Lane j holds <c>x[stride·j + i]</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Column(ReadOnlySpan<float> x, int stride, int i) => Vector256.Create(
        x[i], x[stride + i], x[2 * stride + i], x[3 * stride + i], x[4 * stride + i], x[5 * stride + i], x[6 * stride + i], x[7 * stride + i]);

    /// <summary>
    /// Q4_K's and Q5_K's per-sub-block fit for the eight sub-blocks of 32 values of one super-block
    /// <paramref name="x"/>: the weights <c>√(mean x²) + |x|</c>, then <see cref="BlockQuantizer.MakeQkx2Quants"/> on
    /// each, writing the scales, the mins and the codes (<c>l[32·j + i]</c>).
    /// </summary>
    public static void Qkx2x8(ReadOnlySpan<float> x, int nmax, float rmin, float rdelta, int nstep,
        Span<float> scales, Span<float> mins, Span<byte> l)
    {
        const int n = 32;
        Span<Vector256<float>> xs = stackalloc Vector256<float>[n];
        Span<Vector256<float>> ws = stackalloc Vector256<float>[n];
        Span<Vector256<int>> best = stackalloc Vector256<int>[n];
        Span<Vector256<int>> aux = stackalloc Vector256<int>[n];
        var sumX2 = Vector256<float>.Zero;
        for (int i = 0; i < n; i++)
        {
            var xi = Column(x, n, i);
            xs[i] = xi;
            sumX2 += xi * xi;
        }
        var avX = Vector256.Sqrt(sumX2 / Vector256.Create((float)n));
        for (int i = 0; i < n; i++) ws[i] = avX + Vector256.Abs(xs[i]);

        // ---- make_qkx2_quants ----
        var min = xs[0];
        var max = xs[0];
        var sumW = ws[0];
        var sumX = sumW * xs[0];
        for (int i = 1; i < n; i++)
        {
            var xi = xs[i];
            min = Vector256.ConditionalSelect(Vector256.LessThan(xi, min), xi, min);
            max = Vector256.ConditionalSelect(Vector256.GreaterThan(xi, max), xi, max);
            var w = ws[i];
            sumW += w;
            sumX += w * xi;
        }
        var zero = Vector256<float>.Zero;
        min = Vector256.ConditionalSelect(Vector256.GreaterThan(min, zero), zero, min);
        var flat = Vector256.Equals(max, min);
        var flatMin = min;
        var lo = Vector256<int>.Zero;
        var hi = Vector256.Create(nmax);

        var iscale = Vector256.Create((float)nmax) / (max - min);
        var scale = Vector256<float>.One / iscale;
        var bestError = zero;
        for (int i = 0; i < n; i++)
        {
            var q = Vector256.Max(lo, Vector256.Min(hi, NearestInt(iscale * (xs[i] - min))));
            best[i] = q;
            var diff = scale * Vector256.ConvertToSingle(q) + min - xs[i];
            bestError += ws[i] * (diff * diff);
        }
        for (int step = 0; step <= nstep; step++)
        {
            // NOTE: as in ggml, a step starts from the min of the best fit so far, not the data's.
            iscale = Vector256.Create(rmin + rdelta * step + nmax) / (max - min);
            Vector256<float> sumL = zero, sumL2 = zero, sumXl = zero;
            for (int i = 0; i < n; i++)
            {
                var q = Vector256.Max(lo, Vector256.Min(hi, NearestInt(iscale * (xs[i] - min))));
                aux[i] = q;
                var wq = ws[i] * Vector256.ConvertToSingle(q);
                sumL += wq;
                sumL2 += wq * Vector256.ConvertToSingle(q);
                sumXl += wq * xs[i];
            }
            var det = sumW * sumL2 - sumL * sumL;
            var solvable = Vector256.GreaterThan(det, zero);
            if (solvable == Vector256<float>.Zero) continue;
            var thisScale = (sumW * sumXl - sumX * sumL) / det;
            var thisMin = (sumL2 * sumX - sumL * sumXl) / det;
            var positive = Vector256.GreaterThan(thisMin, zero);
            thisMin = Vector256.ConditionalSelect(positive, zero, thisMin);
            thisScale = Vector256.ConditionalSelect(positive, sumXl / sumL2, thisScale);
            var curError = zero;
            for (int i = 0; i < n; i++)
            {
                var diff = thisScale * Vector256.ConvertToSingle(aux[i]) + thisMin - xs[i];
                curError += ws[i] * (diff * diff);
            }
            var better = solvable & Vector256.LessThan(curError, bestError);
            if (better == Vector256<float>.Zero) continue;
            var betterInt = better.AsInt32();
            for (int i = 0; i < n; i++) best[i] = Vector256.ConditionalSelect(betterInt, aux[i], best[i]);
            bestError = Vector256.ConditionalSelect(better, curError, bestError);
            scale = Vector256.ConditionalSelect(better, thisScale, scale);
            min = Vector256.ConditionalSelect(better, thisMin, min);
        }
        // A constant sub-block: codes 0, scale 0 and min −min (computed before the search).
        scale = Vector256.ConditionalSelect(flat, zero, scale);
        (-Vector256.ConditionalSelect(flat, flatMin, min)).CopyTo(mins);
        scale.CopyTo(scales);
        var flatInt = flat.AsInt32();
        Span<int> lanes = stackalloc int[8];
        for (int i = 0; i < n; i++)
        {
            Vector256.ConditionalSelect(flatInt, lo, best[i]).CopyTo(lanes);
            for (int j = 0; j < 8; j++) l[n * j + i] = (byte)lanes[j];
        }
    }

    /// <summary>
    /// Q6_K's fit (<see cref="BlockQuantizer.MakeQxQuants"/> with <c>nmax</c> 32) for the eight sub-blocks of 16 values
    /// <paramref name="x"/> (128 values): the scales and the codes, offset by 32 (<c>l[16·j + i]</c>).
    /// </summary>
    public static void Qx8(ReadOnlySpan<float> x, Span<float> scales, Span<sbyte> l)
    {
        const int n = 16, nmax = 32;
        Span<Vector256<float>> xs = stackalloc Vector256<float>[n];
        Span<Vector256<float>> ws = stackalloc Vector256<float>[n];
        Span<Vector256<float>> wxs = stackalloc Vector256<float>[n];
        Span<Vector256<int>> best = stackalloc Vector256<int>[n];
        Span<Vector256<int>> aux = stackalloc Vector256<int>[n];
        var zero = Vector256<float>.Zero;
        Vector256<float> max = zero, amax = zero;
        for (int i = 0; i < n; i++)
        {
            var xi = Column(x, n, i);
            xs[i] = xi;
            var w = xi * xi;
            ws[i] = w;
            wxs[i] = w * xi; // NOTE: ggml's w*x[i]*l is (w*x[i])*l, the same product every step
            var ax = Vector256.Abs(xi);
            var larger = Vector256.GreaterThan(ax, amax);
            amax = Vector256.ConditionalSelect(larger, ax, amax);
            max = Vector256.ConditionalSelect(larger, xi, max);
        }
        var tiny = Vector256.LessThan(amax, Vector256.Create(1e-15f));
        var lo = Vector256.Create(-nmax);
        var hi = Vector256.Create(nmax - 1);

        var iscale = Vector256.Create((float)-nmax) / max;
        Vector256<float> sumlx = zero, suml2 = zero;
        for (int i = 0; i < n; i++)
        {
            var q = Vector256.Max(lo, Vector256.Min(hi, NearestInt(iscale * xs[i])));
            best[i] = q;
            var qf = Vector256.ConvertToSingle(q);
            sumlx += wxs[i] * qf;
            suml2 += ws[i] * qf * qf;
        }
        var scale = Vector256.ConditionalSelect(Vector256.Equals(suml2, zero), zero, sumlx / suml2);
        var bestValue = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = Vector256.Create(-(nmax + 0.1f * step)) / max;
            sumlx = suml2 = zero;
            for (int i = 0; i < n; i++)
            {
                var q = Vector256.Max(lo, Vector256.Min(hi, NearestInt(iscale * xs[i])));
                aux[i] = q;
                var qf = Vector256.ConvertToSingle(q);
                sumlx += wxs[i] * qf;
                suml2 += ws[i] * qf * qf;
            }
            var better = Vector256.GreaterThan(suml2, zero) & Vector256.GreaterThan(sumlx * sumlx, bestValue * suml2);
            if (better == Vector256<float>.Zero) continue;
            var betterInt = better.AsInt32();
            for (int i = 0; i < n; i++) best[i] = Vector256.ConditionalSelect(betterInt, aux[i], best[i]);
            var thisScale = sumlx / suml2;
            scale = Vector256.ConditionalSelect(better, thisScale, scale);
            bestValue = Vector256.ConditionalSelect(better, thisScale * sumlx, bestValue);
        }
        // A sub-block of (near) zeros: codes at the offset, scale 0.
        Vector256.ConditionalSelect(tiny, zero, scale).CopyTo(scales);
        var tinyInt = tiny.AsInt32();
        Span<int> lanes = stackalloc int[8];
        for (int i = 0; i < n; i++)
        {
            (Vector256.ConditionalSelect(tinyInt, lo, best[i]) + Vector256.Create(nmax)).CopyTo(lanes);
            for (int j = 0; j < 8; j++) l[n * j + i] = (sbyte)lanes[j];
        }
    }
}
