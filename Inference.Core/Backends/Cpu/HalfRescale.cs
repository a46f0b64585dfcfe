using System.Numerics;
using System.Runtime.Intrinsics;

namespace Inference.Backends.Cpu;

/// <summary>
/// F16 weights stored times a power of two, 2^shift, chosen so that every nonzero weight is a normal half
/// (<see cref="WeightMatrix.HalfShift"/>): the kernels then widen them without ever handing a subnormal float to the
/// floating-point unit, and multiply by activations times 2^-shift, so every product, and so every sum, keeps its bits.
/// </summary>
/// <remarks>
/// <para>NOTE: the fast widening (<see cref="F16FiniteWeights"/>) puts a half's bits where a float keeps them and leaves
/// the 2^112 re-bias to the activations. A subnormal half then becomes a subnormal float, and Intel cores take a
/// microcode assist (on the order of a hundred cycles) for every multiply or FMA with a subnormal operand: measured on
/// the Xeon (family 6 model 207), one core, 128 KiB of halves in L2, the widening and FMA stream 25.9 GB/s with normal
/// halves and 1.7 GB/s when one half in 31 is subnormal; Gaussian weights of σ 0.02, where one half in 440 is
/// subnormal, 12.4. The full widening (<see cref="F16Weights"/>: ×2^112 after the bit move) has the same assists.
/// Trained weights hold such values.</para>
/// <para>A subnormal half m·2^-24 (m &lt; 1024) times 2^shift is a normal half once shift ≥ 10 − ⌊log₂ m⌋; the largest
/// half must stay finite, so the shift is the smallest that lifts the smallest subnormal, and none (0) when the
/// matrix has no subnormal half or its range is too wide for one (then it keeps the assists).</para>
/// </remarks>
internal static unsafe class HalfRescale
{
    /// <summary>The exponent field of a half.</summary>
    private const ushort ExponentMask = 0x7C00;

    /// <summary>
    /// The shift that makes every nonzero of the <paramref name="count"/> halves at <paramref name="p"/> a normal half:
    /// 0 when none is subnormal, or when the largest could not take the shift, or when one is an infinity or a NaN
    /// (then <paramref name="finite"/> is false: the one pass over the halves answers both).
    /// </summary>
    public static int Choose(ushort* p, long count, out bool finite)
    {
        // Per lane: the largest exponent field, the smallest nonzero subnormal mantissa (0xFFFF: none), any Inf/NaN.
        var maxExponent = Vector256<ushort>.Zero;
        var minSubnormal = Vector256<ushort>.AllBitsSet;
        var infNan = Vector256<ushort>.Zero;
        var exponentMask = Vector256.Create(ExponentMask);
        var mantissaMask = Vector256.Create((ushort)0x03FF);
        long i = 0;
        for (; i + 16 <= count; i += 16)
        {
            var h = Vector256.Load(p + i);
            var e = h & exponentMask;
            maxExponent = Vector256.Max(maxExponent, e);
            infNan |= Vector256.Equals(e, exponentMask);
            var m = h & mantissaMask;
            var subnormal = Vector256.Equals(e, Vector256<ushort>.Zero) & ~Vector256.Equals(m, Vector256<ushort>.Zero);
            minSubnormal = Vector256.Min(minSubnormal, Vector256.ConditionalSelect(subnormal, m, Vector256<ushort>.AllBitsSet));
        }
        int maxE = 0, minM = 0xFFFF;
        bool special = infNan != Vector256<ushort>.Zero;
        for (int l = 0; l < 16; l++)
        {
            maxE = Math.Max(maxE, maxExponent[l] >> 10);
            minM = Math.Min(minM, minSubnormal[l]);
        }
        for (; i < count; i++)
        {
            int e = (p[i] & ExponentMask) >> 10, m = p[i] & 0x3FF;
            maxE = Math.Max(maxE, e);
            special |= e == 31;
            if (e == 0 && m != 0) minM = Math.Min(minM, m);
        }
        finite = !special;
        if (special || minM == 0xFFFF) return 0;
        int shift = 10 - BitOperations.Log2((uint)minM);
        return maxE + shift <= 30 ? shift : 0;
    }

    /// <summary>
    /// Multiplies the <paramref name="count"/> halves at <paramref name="p"/> by 2^<paramref name="shift"/> in place:
    /// normal halves by adding to the exponent, subnormal ones through their exact float value; zeros stay zeros.
    /// Every result is exact (<see cref="Choose"/>'s shift keeps them normal and finite).
    /// </summary>
    public static void Apply(ushort* p, long count, int shift)
    {
        if (shift is <= 0 or > 24) throw new ArgumentOutOfRangeException(nameof(shift), $"shift {shift} is not in 1..24");
        var exponentMask = Vector256.Create(ExponentMask);
        var add = Vector256.Create((ushort)(shift << 10));
        long i = 0;
        for (; i + 16 <= count; i += 16)
        {
            var h = Vector256.Load(p + i);
            var zeroExponent = Vector256.Equals(h & exponentMask, Vector256<ushort>.Zero);
            (h + (add & ~zeroExponent)).Store(p + i);
            if (zeroExponent != Vector256<ushort>.Zero)
                for (long k = i; k < i + 16; k++) p[k] = ShiftSubnormal(p[k], shift);
        }
        for (; i < count; i++) p[i] = (p[i] & ExponentMask) == 0 ? ShiftSubnormal(p[i], shift) : (ushort)(p[i] + (shift << 10));
    }

    /// <summary><paramref name="h"/> times 2^<paramref name="shift"/> when its exponent field is 0 (zeros stay as they are); any other half unchanged.</summary>
    private static ushort ShiftSubnormal(ushort h, int shift)
    {
        if ((h & ExponentMask) != 0 || (h & 0x3FF) == 0) return h;
        float value = Fp16.ToFloat(h) * MathF.ScaleB(1f, shift);
        return BitConverter.HalfToUInt16Bits((Half)value);
    }
}
