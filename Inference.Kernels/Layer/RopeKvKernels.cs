using ILGPU;
using Inference.Models;

namespace Inference.Kernels.Layer;

/// <summary>Heads, dimensions and pairing of <see cref="RopeKvKernels"/>.</summary>
/// <param name="QueryHeads">Query heads per token.</param>
/// <param name="KvHeads">Key/value heads per token.</param>
/// <param name="HeadDim">Elements per head.</param>
/// <param name="RotaryDim">Rotated elements per head (even, ≤ <paramref name="HeadDim"/>).</param>
/// <param name="Neox">1 for <see cref="RopeLayout.Neox"/>, 0 for <see cref="RopeLayout.Normal"/>.</param>
/// <param name="QueryScale">Factor on the rotated queries (1: none).</param>
public readonly record struct RopeKvShape(int QueryHeads, int KvHeads, int HeadDim, int RotaryDim, int Neox, float QueryScale)
{
    /// <summary>Threads per query head: one per rotated pair, and one per unrotated element when the queries are scaled.</summary>
    public int ItemsPerQueryHead => RotaryDim / 2 + (QueryScale != 1f ? HeadDim - RotaryDim : 0);

    /// <summary>Threads per token: <see cref="ItemsPerQueryHead"/> per query head, one per K/V element.</summary>
    public int ItemsPerToken => QueryHeads * ItemsPerQueryHead + KvHeads * HeadDim;
}

/// <summary>
/// RoPE of a step's queries and keys from the per-token cos/sin tables and the write of the rotated keys and the values
/// into the paged cache, in one launch (references: <see cref="RopeKernels.RopeTable"/> on Q and K,
/// <see cref="ElementwiseKernels.Scale"/> on Q, then <see cref="KvCacheKernels"/>' writes).
/// </summary>
/// <remarks>
/// <code>
/// q            [tokenCount, queryHeads, headDim]  rotated (and scaled) in place
/// k, v         [tokenCount, kvHeads, headDim]     read only: the rotated K goes to the cache, k is left as it was
/// kCache       [slotCount, kvHeads · headDim]     slot of token t = slots[t]
/// </code>
/// Implicitly grouped over <c>(ItemsPerToken, tokenCount)</c>: the first <c>queryHeads · ItemsPerQueryHead</c> threads of
/// a token turn one query pair each (both elements, in place; with a query factor, the unrotated elements are scaled by
/// threads of their own); the others each write one K element (its rotated value,
/// computed from the pair's two inputs with <see cref="RopeKernels.RopeTable"/>'s expression) and one V element, so the
/// cache receives the bits of the unfused kernels. A negative slot (a padding row of a decode step padded to a captured
/// batch size) writes nothing to the cache; its query is still turned.
/// </remarks>
public static class RopeKvKernels
{
    /// <summary>f32 cache.</summary>
    /// <param name="index">(item, token).</param>
    /// <param name="q">Queries, rotated in place.</param>
    /// <param name="k">Keys (not modified).</param>
    /// <param name="v">Values.</param>
    /// <param name="cos">cos θ, <c>[tokenCount, rotaryDim / 2]</c>.</param>
    /// <param name="sin">sin θ, same shape.</param>
    /// <param name="slots">Cache slot of each token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache of the layer, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache of the layer, same shape.</param>
    /// <param name="shape">Heads and layout.</param>
    public static void WriteF32(Index2D index, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> cos, ArrayView<float> sin,
        ArrayView<int> slots, ArrayView<float> kCache, ArrayView<float> vCache, RopeKvShape shape)
    {
        if (!Rotate(index, q, k, v, cos, sin, slots, shape, out long dst, out float key, out float value)) return;
        kCache[dst] = key;
        vCache[dst] = value;
    }

    /// <summary>f16 cache, narrowed as <see cref="KvCacheKernels.WriteF16"/> narrows.</summary>
    /// <param name="index">(item, token).</param>
    /// <param name="q">Queries, rotated in place.</param>
    /// <param name="k">Keys (not modified).</param>
    /// <param name="v">Values.</param>
    /// <param name="cos">cos θ, <c>[tokenCount, rotaryDim / 2]</c>.</param>
    /// <param name="sin">sin θ, same shape.</param>
    /// <param name="slots">Cache slot of each token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache of the layer, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache of the layer, same shape.</param>
    /// <param name="shape">Heads and layout.</param>
    public static void WriteF16(Index2D index, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> cos, ArrayView<float> sin,
        ArrayView<int> slots, ArrayView<ILGPU.Half> kCache, ArrayView<ILGPU.Half> vCache, RopeKvShape shape)
    {
        if (!Rotate(index, q, k, v, cos, sin, slots, shape, out long dst, out float key, out float value)) return;
        kCache[dst] = (ILGPU.Half)key;
        vCache[dst] = (ILGPU.Half)value;
    }

    /// <summary>
    /// Turns a query pair in place (returns false), or computes a K element's rotated value and its V element and
    /// their cache index (returns true).
    /// </summary>
    private static bool Rotate(Index2D index, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> cos, ArrayView<float> sin,
        ArrayView<int> slots, RopeKvShape shape, out long dst, out float key, out float value)
    {
        int token = index.Y;
        int half = shape.RotaryDim / 2;
        int perHead = shape.ItemsPerQueryHead;
        int queryItems = shape.QueryHeads * perHead;
        long angles = (long)token * half;
        if (index.X < queryItems)
        {
            int pair = index.X % perHead;
            long head = ((long)token * shape.QueryHeads + index.X / perHead) * shape.HeadDim;
            dst = 0;
            key = value = 0f;
            if (pair >= half)
            {
                // an unrotated element of a scaled query
                long e = head + shape.RotaryDim + (pair - half);
                q[e] = q[e] * shape.QueryScale;
                return false;
            }
            long ia = shape.Neox != 0 ? head + pair : head + 2 * pair;
            long ib = shape.Neox != 0 ? ia + half : ia + 1;
            float c = cos[angles + pair];
            float s = sin[angles + pair];
            float a = q[ia];
            float b = q[ib];
            q[ia] = (a * c - b * s) * shape.QueryScale;
            q[ib] = (a * s + b * c) * shape.QueryScale;
            return false;
        }
        int kvDim = shape.KvHeads * shape.HeadDim;
        int j = index.X - queryItems;
        int d = j % shape.HeadDim;
        long src = (long)token * kvDim + j;
        float x = k[src];
        if (d < shape.RotaryDim)
        {
            // the element's pair (i) and whether it is the pair's first (a) or second (b) element
            bool first = shape.Neox != 0 ? d < half : (d & 1) == 0;
            int i = shape.Neox != 0 ? (first ? d : d - half) : d >> 1;
            int partner = shape.Neox != 0 ? half : 1;
            float c = cos[angles + i];
            float s = sin[angles + i];
            x = first ? x * c - k[src + partner] * s : k[src - partner] * s + x * c;
        }
        int slot = slots[token];
        dst = (long)slot * kvDim + j;
        key = x;
        value = v[src];
        return slot >= 0;   // a negative slot (a padding row of a graph-safe step) writes nothing
    }
}
