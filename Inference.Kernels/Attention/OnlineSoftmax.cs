using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels.Attention;

/// <summary>The online-softmax step shared by the attention kernels.</summary>
internal static class OnlineSoftmax
{
    /// <summary>
    /// Folds one tile of scores of row <paramref name="row"/> into its running max and sum.
    /// </summary>
    /// <remarks>
    /// On return <paramref name="scores"/> holds <c>exp(s - m_new)</c> (0 for masked -∞ scores),
    /// <c>alpha[row] = exp(m_old - m_new)</c> rescales the old accumulator and <c>l = l * alpha + Σ p</c>.
    /// NOTE: a tile in which the whole row is masked keeps <c>m</c> (alpha 1, all p 0) instead of computing
    /// <c>exp(-∞ - -∞)</c> = NaN.
    /// </remarks>
    public static void UpdateRow(ArrayView<float> scores, ArrayView<float> m, ArrayView<float> l, ArrayView<float> alpha, int row)
    {
        float mOld = m[row];
        float mNew = mOld;
        for (int j = 0; j < scores.IntLength; j++) mNew = XMath.Max(mNew, scores[j]);
        if (mNew == float.NegativeInfinity)
        {
            for (int j = 0; j < scores.IntLength; j++) scores[j] = 0f;
            alpha[row] = 1f;
            return;
        }
        float sum = 0f;
        for (int j = 0; j < scores.IntLength; j++)
        {
            float e = XMath.Exp(scores[j] - mNew);
            scores[j] = e;
            sum += e;
        }
        float a = XMath.Exp(mOld - mNew);
        alpha[row] = a;
        l[row] = l[row] * a + sum;
        m[row] = mNew;
    }
}
