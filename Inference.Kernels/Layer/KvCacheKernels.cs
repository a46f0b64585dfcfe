using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>
/// Stores the new tokens' keys and values into the paged cache: token <c>t</c> goes to slot <c>slots[t]</c>
/// (<c>= physical block · blockSize + position % blockSize</c>), narrowed to the cache's element type
/// (reference: <see cref="Reference.ReferenceLayer.WriteKv"/>). A negative slot (a padding row of a decode step padded
/// to a captured batch size, as vLLM's slot −1) writes nothing.
/// </summary>
/// <remarks>
/// <code>
/// k, v        [tokenCount, kvHeads, headDim]   f32
/// kCache      [blockCount, blockSize, kvHeads, headDim] = [slotCount, kvDim]
/// </code>
/// </remarks>
public static class KvCacheKernels
{
    /// <summary>f32 cache. Implicitly grouped over <c>(kvDim, tokenCount)</c>.</summary>
    /// <param name="index">(element, token).</param>
    /// <param name="k">Keys, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="v">Values, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="slots">Cache slot of each token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache of the layer, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache of the layer, same shape.</param>
    /// <param name="kvDim">kvHeads · headDim.</param>
    public static void WriteF32(Index2D index, ArrayView<float> k, ArrayView<float> v, ArrayView<int> slots,
        ArrayView<float> kCache, ArrayView<float> vCache, int kvDim)
    {
        int slot = slots[index.Y];
        if (slot < 0) return;   // a padding row of a graph-safe step
        long src = (long)index.Y * kvDim + index.X;
        long dst = (long)slot * kvDim + index.X;
        kCache[dst] = k[src];
        vCache[dst] = v[src];
    }

    /// <summary>
    /// f16 cache: on CUDA rounded to nearest even (<c>cvt.rn.f16.f32</c>, as <see cref="System.Half"/>); ILGPU's CPU
    /// accelerator converts in software and may land one ulp away. Implicitly grouped over <c>(kvDim, tokenCount)</c>.
    /// </summary>
    /// <param name="index">(element, token).</param>
    /// <param name="k">Keys, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="v">Values, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="slots">Cache slot of each token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache of the layer, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache of the layer, same shape.</param>
    /// <param name="kvDim">kvHeads · headDim.</param>
    public static void WriteF16(Index2D index, ArrayView<float> k, ArrayView<float> v, ArrayView<int> slots,
        ArrayView<ILGPU.Half> kCache, ArrayView<ILGPU.Half> vCache, int kvDim)
    {
        int slot = slots[index.Y];
        if (slot < 0) return;   // a padding row of a graph-safe step
        long src = (long)index.Y * kvDim + index.X;
        long dst = (long)slot * kvDim + index.X;
        kCache[dst] = (ILGPU.Half)k[src];
        vCache[dst] = (ILGPU.Half)v[src];
    }

    /// <summary>
    /// Block-format cache (<see cref="Q8_0Kv"/>, <see cref="Fp8E4M3Kv"/>): each thread quantizes 32 values of a token's K
    /// and V into one 34-byte block, the bytes the CPU's <c>KvBlockFormat.Quantize</c> writes. Implicitly grouped over
    /// <c>(kvDim / 32, tokenCount)</c>.
    /// </summary>
    /// <typeparam name="TQuant">The block format.</typeparam>
    /// <param name="index">(block of the token's row, token).</param>
    /// <param name="k">Keys, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="v">Values, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="slots">Cache slot of each token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache of the layer as bytes, <c>[slotCount, kvDim / 32, 34]</c>.</param>
    /// <param name="vCache">Value cache of the layer, same shape.</param>
    /// <param name="kvDim">kvHeads · headDim (a multiple of 32).</param>
    public static void WriteBlocks<TQuant>(Index2D index, ArrayView<float> k, ArrayView<float> v, ArrayView<int> slots,
        ArrayView<byte> kCache, ArrayView<byte> vCache, int kvDim)
        where TQuant : struct, IKvBlockQuantizer
    {
        int slot = slots[index.Y];
        if (slot < 0) return;   // a padding row of a graph-safe step
        int blocksPerSlot = kvDim / KvRowGroups.GroupValues;
        long src = (long)index.Y * kvDim + (long)index.X * KvRowGroups.GroupValues;
        long dst = ((long)slot * blocksPerSlot + index.X) * KvRowGroups.BlockBytes;
        TQuant quant = default;
        quant.Quantize(k, src, kCache, dst);
        quant.Quantize(v, src, vCache, dst);
    }
}
