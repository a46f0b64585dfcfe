namespace Inference.Kernels.Reference;

/// <summary>How far a result is from a reference, the measure the differential checks quote.</summary>
public static class ReferenceCompare
{
    /// <summary>‖actual − expected‖₂ / ‖expected‖₂, accumulated in float64.</summary>
    /// <param name="actual">The result checked.</param>
    /// <param name="expected">The reference.</param>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public static double RelativeL2(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        if (actual.Length != expected.Length)
            throw new ArgumentException($"lengths differ: {actual.Length} against {expected.Length}", nameof(actual));
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = actual[i] - expected[i];
            num += d * d;
            den += (double)expected[i] * expected[i];
        }
        return Math.Sqrt(num / den);
    }
}
