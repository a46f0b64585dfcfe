using Inference.Models;
using ILGPU;
using ILGPU.Algorithms;

namespace Inference.Kernels.Layer;

/// <summary>Rotary position embedding, in place.</summary>
/// <remarks>
/// Pair <c>i</c> (0 ≤ i &lt; rotaryDim / 2) of a head at position <c>p</c> turns by
/// <c>θ = p * freqBase^(-2i / rotaryDim)</c>: <c>(a, b) → (a cos θ - b sin θ, a sin θ + b cos θ)</c>, where (a, b) are
/// elements (2i, 2i + 1) for <see cref="RopeLayout.Normal"/> and (i, i + rotaryDim / 2) for <see cref="RopeLayout.Neox"/>.
/// Elements from <c>rotaryDim</c> on are left alone.
/// </remarks>
public static class RopeKernels
{
    // 2π split for Cody-Waite reduction: TwoPiHi has 8 significant bits, so k * TwoPiHi is exact for |k| < 2^16.
    private const float TwoPiHi = 6.28125f;
    private const float TwoPiLo = 1.9353071795864769e-3f;
    private const float InverseTwoPi = 0.15915494309189535f;

    /// <summary>Implicitly grouped over <c>(rotaryDim / 2, tokenCount * heads)</c>.</summary>
    /// <param name="index">(pair, token * heads + head).</param>
    /// <param name="x">Queries or keys, <c>[tokenCount, heads, headDim]</c>, rotated in place.</param>
    /// <param name="positions">Absolute position per token, <c>[tokenCount]</c>.</param>
    /// <param name="heads">Heads per token.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="rotaryDim">Rotated elements per head (even, ≤ headDim).</param>
    /// <param name="freqBase">The frequency base (10000 for Llama 2).</param>
    /// <param name="neox">1 for <see cref="RopeLayout.Neox"/>, 0 for <see cref="RopeLayout.Normal"/>.</param>
    public static void Rope(Index2D index, ArrayView<float> x, ArrayView<int> positions, int heads, int headDim, int rotaryDim,
        float freqBase, int neox)
    {
        int pair = index.X;
        int row = index.Y;
        int token = row / heads;
        float theta = positions[token] * XMath.Pow(freqBase, -2f * pair / rotaryDim);
        // NOTE: θ reaches the context length in radians; GPU fast sin/cos are accurate only near [-π, π], so reduce first.
        float turns = XMath.Round(theta * InverseTwoPi);
        float reduced = theta - turns * TwoPiHi - turns * TwoPiLo;
        float cos = XMath.Cos(reduced);
        float sin = XMath.Sin(reduced);
        long head = (long)row * headDim;
        long ia = neox != 0 ? head + pair : head + 2 * pair;
        long ib = neox != 0 ? ia + rotaryDim / 2 : ia + 1;
        float a = x[ia];
        float b = x[ib];
        x[ia] = a * cos - b * sin;
        x[ib] = a * sin + b * cos;
    }

    /// <summary>
    /// RoPE with the angles' cosines and sines precomputed per token (so any frequency scaling — linear, Llama 3
    /// factors — is the host's business, computed once per forward pass for all layers).
    /// Implicitly grouped over <c>(rotaryDim / 2, tokenCount * heads)</c>.
    /// </summary>
    /// <param name="index">(pair, token * heads + head).</param>
    /// <param name="x">Queries or keys, <c>[tokenCount, heads, headDim]</c>, rotated in place.</param>
    /// <param name="cos">cos θ per token and pair, <c>[tokenCount, rotaryDim / 2]</c>.</param>
    /// <param name="sin">sin θ per token and pair, same shape.</param>
    /// <param name="heads">Heads per token.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="rotaryDim">Rotated elements per head (even, ≤ headDim).</param>
    /// <param name="neox">1 for <see cref="RopeLayout.Neox"/>, 0 for <see cref="RopeLayout.Normal"/>.</param>
    public static void RopeTable(Index2D index, ArrayView<float> x, ArrayView<float> cos, ArrayView<float> sin, int heads,
        int headDim, int rotaryDim, int neox)
    {
        int pair = index.X;
        int row = index.Y;
        int half = rotaryDim / 2;
        long angle = (long)(row / heads) * half + pair;
        float c = cos[angle];
        float s = sin[angle];
        long head = (long)row * headDim;
        long ia = neox != 0 ? head + pair : head + 2 * pair;
        long ib = neox != 0 ? ia + half : ia + 1;
        float a = x[ia];
        float b = x[ib];
        x[ia] = a * c - b * s;
        x[ib] = a * s + b * c;
    }
}
