namespace Inference.KvCache;

/// <summary>Element type of the keys and values held in <see cref="KvCacheStorage"/>.</summary>
/// <remarks>
/// The two block formats store each head's row (headDim values of one token) as headDim / 32 blocks of 34 bytes: an
/// f16 scale d, then 32 one-byte codes; value i of a block is d · code(i). Head sizes must be multiples of 32.
/// </remarks>
public enum KvCacheDataType
{
    /// <summary>32-bit IEEE floats: exact, twice the memory of <see cref="Float16"/>.</summary>
    Float32,

    /// <summary>16-bit IEEE half floats (<see cref="Half"/>): half the memory, about 3 significant digits.</summary>
    Float16,

    /// <summary>
    /// ggml's Q8_0 blocks (llama.cpp's <c>-ctk q8_0 -ctv q8_0</c>): per 32 values d = max|x| / 127 as f16 and 32 signed
    /// bytes round(x / d); 34 bytes per 32 values, 0.53 of <see cref="Float16"/>.
    /// </summary>
    Q8_0,

    /// <summary>
    /// FP8 E4M3 (OCP "e4m3fn": 4 exponent bits, 3 mantissa bits, largest finite 448) with one f16 scale per 32 values,
    /// d = max|x| / 448, codes e4m3(x / d); the same 34-byte blocks as <see cref="Q8_0"/>.
    /// </summary>
    Fp8E4M3,
}
