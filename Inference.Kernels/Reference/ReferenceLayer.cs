using Inference.Models;
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

    /// <summary>GeGLU: <c>out = gelu(gate) * up</c> with GELU's tanh approximation, in double precision.</summary>
    /// <param name="gate">Gate projection.</param>
    /// <param name="up">Up projection.</param>
    /// <param name="output">Output (may alias either input).</param>
    public static void GeGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            double g = gate[i];
            output[i] = (float)(0.5 * g * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (g + 0.044715 * g * g * g))) * up[i]);
        }
    }

    /// <summary>Logit soft-capping: <c>x = cap · tanh(x / cap)</c>, in double precision.</summary>
    /// <param name="x">Values.</param>
    /// <param name="cap">The cap, positive.</param>
    public static void SoftCap(Span<float> x, float cap)
    {
        for (int i = 0; i < x.Length; i++) x[i] = (float)(cap * Math.Tanh(x[i] / (double)cap));
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

    /// <summary><c>x[i] += y[i]</c>.</summary>
    /// <param name="x">Accumulator.</param>
    /// <param name="y">Addend, same length.</param>
    public static void Add(Span<float> x, ReadOnlySpan<float> y)
    {
        for (int i = 0; i < x.Length; i++) x[i] += y[i];
    }

    /// <summary><c>y[r, i] += bias[i]</c>.</summary>
    /// <param name="y">Rows, <c>[rows, bias.Length]</c>.</param>
    /// <param name="bias">Bias.</param>
    public static void AddBias(Span<float> y, ReadOnlySpan<float> bias)
    {
        for (int i = 0; i < y.Length; i++) y[i] += bias[i % bias.Length];
    }

    /// <summary><c>output[r, :] = x[rows[r], :]</c>.</summary>
    /// <param name="x">Source, <c>[n, width]</c>.</param>
    /// <param name="rows">Source row per output row.</param>
    /// <param name="output">Output, <c>[rows.Length, width]</c>.</param>
    /// <param name="width">Row length.</param>
    public static void GatherRows(ReadOnlySpan<float> x, ReadOnlySpan<int> rows, Span<float> output, int width)
    {
        for (int r = 0; r < rows.Length; r++) x.Slice(rows[r] * width, width).CopyTo(output.Slice(r * width, width));
    }

    /// <summary>Paged K/V store in f32: <c>cache[slots[t], :] = k[t, :]</c> (see <see cref="KvCacheKernels"/>).</summary>
    /// <param name="k">Keys, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="v">Values, same shape.</param>
    /// <param name="slots">Slot per token; a negative slot (a padding row) writes nothing.</param>
    /// <param name="kCache">Key cache, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache, same shape.</param>
    /// <param name="kvDim">Row length.</param>
    public static void WriteKv(ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<int> slots, Span<float> kCache, Span<float> vCache, int kvDim)
    {
        for (int t = 0; t < slots.Length; t++)
        {
            if (slots[t] < 0) continue;
            k.Slice(t * kvDim, kvDim).CopyTo(kCache.Slice(slots[t] * kvDim, kvDim));
            v.Slice(t * kvDim, kvDim).CopyTo(vCache.Slice(slots[t] * kvDim, kvDim));
        }
    }

    /// <summary>RoPE in place from per-token cosines and sines (see <see cref="RopeKernels.RopeTable"/>).</summary>
    /// <param name="x">Queries or keys, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="cos">cos θ, <c>[tokenCount, rotaryDim / 2]</c>.</param>
    /// <param name="sin">sin θ, same shape.</param>
    /// <param name="heads">Heads per token.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="rotaryDim">Rotated elements per head.</param>
    /// <param name="layout">Pairing.</param>
    public static void RopeTable(Span<float> x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, int heads, int headDim, int rotaryDim, RopeLayout layout)
    {
        int half = rotaryDim / 2;
        for (int row = 0; row < x.Length / headDim; row++)
        {
            int t = row / heads;
            for (int i = 0; i < half; i++)
            {
                int a = layout == RopeLayout.Neox ? row * headDim + i : row * headDim + 2 * i;
                int b = layout == RopeLayout.Neox ? a + half : a + 1;
                float c = cos[t * half + i], s = sin[t * half + i], xa = x[a], xb = x[b];
                x[a] = xa * c - xb * s;
                x[b] = xa * s + xb * c;
            }
        }
    }
}
