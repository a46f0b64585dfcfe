using Inference.Kernels.Layer;

namespace Inference.Kernels.Reference;

/// <summary>Plain loops for the element-wise layer operations: RMSNorm, RoPE, SwiGLU and embedding gather.</summary>
/// <remarks>NOTE: grouped in one file because each is a few lines; each kernel file names its reference here.</remarks>
public static class ReferenceLayer
{
    /// <summary><c>y[r, i] = x[r, i] / sqrt(mean(x[r, :]²) + eps) * w[i]</c>.</summary>
    /// <param name="x">Input, <c>[rows, dim]</c>.</param>
    /// <param name="weight">Scale, <c>[dim]</c>.</param>
    /// <param name="output">Output, <c>[rows, dim]</c>.</param>
    /// <param name="epsilon">Added to the mean square.</param>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> output, float epsilon)
    {
        int dim = weight.Length;
        for (int r = 0; r < x.Length / dim; r++)
        {
            double ss = 0;
            for (int i = 0; i < dim; i++) ss += (double)x[r * dim + i] * x[r * dim + i];
            float inverse = (float)(1.0 / Math.Sqrt(ss / dim + epsilon));
            for (int i = 0; i < dim; i++) output[r * dim + i] = x[r * dim + i] * inverse * weight[i];
        }
    }

    /// <summary>RoPE in place (see <see cref="RopeKernels"/>).</summary>
    /// <param name="x">Queries or keys, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="positions">Position per token.</param>
    /// <param name="heads">Heads per token.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="rotaryDim">Rotated elements per head.</param>
    /// <param name="freqBase">Frequency base.</param>
    /// <param name="layout">Pairing.</param>
    public static void Rope(Span<float> x, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float freqBase,
        RopeLayout layout)
    {
        for (int t = 0; t < positions.Length; t++)
            for (int h = 0; h < heads; h++)
            {
                var head = x.Slice((t * heads + h) * headDim, headDim);
                for (int i = 0; i < rotaryDim / 2; i++)
                {
                    double theta = positions[t] * Math.Pow(freqBase, -2.0 * i / rotaryDim);
                    int ia = layout == RopeLayout.Neox ? i : 2 * i;
                    int ib = layout == RopeLayout.Neox ? i + rotaryDim / 2 : 2 * i + 1;
                    double a = head[ia], b = head[ib];
                    head[ia] = (float)(a * Math.Cos(theta) - b * Math.Sin(theta));
                    head[ib] = (float)(a * Math.Sin(theta) + b * Math.Cos(theta));
                }
            }
    }

    /// <summary><c>out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]</c>.</summary>
    /// <param name="gate">Gate.</param>
    /// <param name="up">Up.</param>
    /// <param name="output">Output.</param>
    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        for (int i = 0; i < gate.Length; i++) output[i] = gate[i] / (1f + MathF.Exp(-gate[i])) * up[i];
    }

    /// <summary><c>out[t, :] = table[ids[t], :]</c> for an f32 table (dequantize other tables first).</summary>
    /// <param name="table">Table, <c>[vocab, dim]</c>.</param>
    /// <param name="ids">Token ids.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="dim">Width.</param>
    public static void Embedding(ReadOnlySpan<float> table, ReadOnlySpan<int> ids, Span<float> output, int dim)
    {
        for (int t = 0; t < ids.Length; t++) table.Slice(ids[t] * dim, dim).CopyTo(output.Slice(t * dim, dim));
    }
}
