namespace Inference.Backends.Cpu;

/// <summary>Fast scalar conversions between IEEE half bit patterns and float: to float through a lookup table, from float
/// on the float's bits.</summary>
/// <remarks>
/// NOTE: the quantized kernels convert one f16 block scale per 32 or 256 weights; a 256 KB table (L2-resident while a
/// matmul runs) is cheaper than the software conversion behind <see cref="Half"/> on hardware without F16C intrinsics.
/// </remarks>
internal static class Fp16
{
    private static readonly float[] Table = Build();

    /// <summary>The float value of the half whose bits are <paramref name="bits"/>.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(ushort bits) =>
        System.Runtime.CompilerServices.Unsafe.Add(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(Table), bits);

    /// <summary>The bits of the f16 nearest to <paramref name="value"/> (ties to even, beyond the largest finite f16 an
    /// infinity): those of <c>(Half)value</c>, computed on the float's bits where the result is a normal f16 or an overflow.</summary>
    /// <remarks>NOTE: the runtime's <see cref="Half"/> conversion cost 20–170 ns per call on the Xeon (family 6 model 207),
    /// most in vector loops: quantizing Q8_0 took 4.65 ns per value, 149 ns per block of 32 with its one f16 scale.</remarks>
    public static ushort FromFloat(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (!NormalOrOverflow(bits)) return BitConverter.HalfToUInt16Bits((Half)value);
        uint rounded = RoundMagnitude(bits & 0x7FFFFFFFu);
        uint sign = (bits >> 16) & 0x8000u;
        return (ushort)(sign | (rounded < 0x47800000u ? (rounded - 0x38000000u) >> 13 : 0x7C00u));
    }

    /// <summary><paramref name="value"/> rounded to the nearest f16 (ties to even), as a float: <c>(float)(Half)value</c>
    /// (F16C's <c>vcvtps2ph</c> with rounding mode 0), computed on the float's bits where the result is a normal f16 or an
    /// overflow (see <see cref="FromFloat"/>).</summary>
    public static float Round(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (!NormalOrOverflow(bits)) return (float)(Half)value;
        uint rounded = RoundMagnitude(bits & 0x7FFFFFFFu);
        return rounded < 0x47800000u ? BitConverter.UInt32BitsToSingle(rounded | (bits & 0x80000000u)) : float.CopySign(float.PositiveInfinity, value);
    }

    /// <summary>True for 2^-14 ≤ |x| &lt; 2^16: an f16 keeps the float's exponent (or overflows to infinity); zeros, f16
    /// subnormals, infinities and NaN are left to the runtime's conversion.</summary>
    private static bool NormalOrOverflow(uint bits) => ((bits >> 23) & 0xFF) - 113u <= 142u - 113u;

    /// <summary>A float magnitude's top 10 mantissa bits rounded to nearest, ties to even: adding 0xFFF plus the lowest
    /// kept bit carries exactly when the 13 dropped bits are above half or at half with the kept bit odd; a carry out of
    /// the mantissa steps the exponent (to 2^16: an f16 overflow).</summary>
    private static uint RoundMagnitude(uint magnitude) => (magnitude + 0xFFFu + ((magnitude >> 13) & 1u)) & 0xFFFFE000u;

    private static float[] Build()
    {
        var t = new float[65536];
        for (int i = 0; i < t.Length; i++) t[i] = (float)BitConverter.UInt16BitsToHalf((ushort)i);
        return t;
    }
}
