namespace Inference.Sampling;

/// <summary>
/// The arithmetic of the sampling chain, defined so that any order of evaluation gives the same bits: the host
/// <see cref="Sampler"/> runs it in a loop and the device sampler (Inference.Kernels' SamplingKernels) in parallel, and
/// both choose the same token for the same logits and the same random draw.
/// </summary>
/// <remarks>
/// <code>
///  rank order:  key(x, id) = (descending-order bits of x) · 2³² + id, ascending; NaN ranks first (as
///               TensorPrimitives.IndexOfMax), +0 before -0, ties by lower id; keys are unique
///  weights:     w(d) = ⌊2^(d·log₂e) · 2⁴⁰⌋ for d = x − max ≤ 0, a 64-bit integer (0 for NaN and d ≤ −100)
///  masses:      sums of weights in 64-bit integers: exact, so independent of the order of the additions
///  2^(−a):      a = ⌊−t · 2²⁴⌋ (t = d·log₂e), 2^(−a/2²⁴) = T₁[a₁₆..₂₃] · T₂[a₈..₁₅] · T₃[a₀..₇] · 2^(−⌊a/2²⁴⌋),
///               three products of a table of 768 floats: no addition follows a multiplication anywhere, so a GPU
///               compiler has nothing to contract into a fused multiply-add
/// </code>
/// The relative error of a weight against the true exponential is about 10⁻⁵ (the rounding of t), far below what the
/// sampled distribution can show.
/// </remarks>
internal static class SamplingMath
{
    /// <summary>Fixed-point scale of the weights: 2^40 (a vocabulary of up to 2^22 tokens sums in 64 bits).</summary>
    public const int WeightBits = 40;

    /// <summary>Largest vocabulary whose weights are summed without overflow.</summary>
    public const int MaxVocabSize = 1 << 22;

    /// <summary>Entries of <see cref="ExpTable"/>: three tables of 256.</summary>
    public const int ExpTableLength = 768;

    private const float Log2E = 1.44269504f;

    /// <summary>2^(−i/256), 2^(−i/65536), 2^(−i/2²⁴) for i in [0, 256), one after another.</summary>
    public static float[] ExpTable { get; } = CreateExpTable();

    private static float[] CreateExpTable()
    {
        var t = new float[ExpTableLength];
        for (int i = 0; i < 256; i++)
        {
            t[i] = (float)Math.Pow(2, -i / 256.0);
            t[256 + i] = (float)Math.Pow(2, -i / 65536.0);
            t[512 + i] = (float)Math.Pow(2, -i / 16777216.0);
        }
        return t;
    }

    /// <summary>The rank key of logit <paramref name="x"/> at <paramref name="id"/>: smaller ranks first.</summary>
    public static ulong Key(float x, int id) => Key(BitConverter.SingleToUInt32Bits(x), id);

    /// <summary>The rank key of the logit whose IEEE bits are <paramref name="bits"/> (integer operations only).</summary>
    public static ulong Key(uint bits, int id)
    {
        // Ascending order of floats as unsigned integers, then inverted for descending; NaN first of all.
        uint ascending = (bits & 0x8000_0000u) != 0 ? ~bits : bits | 0x8000_0000u;
        uint descending = (bits & 0x7FFF_FFFFu) > 0x7F80_0000u ? 0u : ~ascending;
        return ((ulong)descending << 32) | (uint)id;
    }

    /// <summary>The token id of a rank key.</summary>
    public static int IdOf(ulong key) => (int)(uint)key;

    /// <summary>
    /// Splits the exponent of w(<paramref name="d"/>): false when the weight is 0; otherwise the three table indices
    /// and the power of two <paramref name="shift"/> (weight = ⌊T₁·T₂·T₃ · 2^(40 − shift)⌋).
    /// </summary>
    public static bool WeightParts(float d, out int i1, out int i2, out int i3, out int shift)
    {
        i1 = i2 = i3 = shift = 0;
        if (float.IsNaN(d) || d <= -100f) return false;   // NaN, −∞ and the far tail (below 2^-144)
        if (d > 0f) d = 0f;
        float t = d * Log2E;
        long a = (long)(t * -16777216f);   // exact: a power-of-two scaling of a float below 2^8
        shift = (int)(a >> 24);
        if (shift > WeightBits) return false;
        i1 = (int)(a >> 16) & 255;
        i2 = 256 + ((int)(a >> 8) & 255);
        i3 = 512 + ((int)a & 255);
        return true;
    }

    /// <summary>The weight from the table entries and shift of <see cref="WeightParts"/>.</summary>
    public static long WeightOf(float t1, float t2, float t3, int shift)
    {
        float e = t1 * t2 * t3;
        return (long)(e * (float)(1L << (WeightBits - shift)));
    }

    /// <summary>w(<paramref name="d"/>) on the host.</summary>
    public static long Weight(float d)
    {
        if (!WeightParts(d, out int i1, out int i2, out int i3, out int shift)) return 0;
        var t = ExpTable;
        return WeightOf(t[i1], t[i2], t[i3], shift);
    }

    /// <summary>Whether the top-p nucleus is complete once the kept mass reaches <paramref name="cumulative"/>.</summary>
    public static bool ReachesTopP(long cumulative, double target) => cumulative >= target;

    /// <summary>The mass the top-p nucleus must reach: P × the top-k mass.</summary>
    public static double TopPTarget(float topP, long total) => (double)topP * total;

    /// <summary>The weight below which min-p drops a token: MinP × the top token's weight.</summary>
    public static double MinPThreshold(float minP, long topWeight) => (double)minP * topWeight;

    /// <summary>The draw's point in the kept mass: the token chosen is the first whose cumulative mass exceeds it.</summary>
    public static double DrawTarget(float uniform, long total) => (double)uniform * total;
}
