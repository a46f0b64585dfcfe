using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>Loads float weights of one storage type, converting on the fly (F32, F16, BF16).</summary>
internal unsafe interface IFloatWeights
{
    /// <summary>Weights <paramref name="i"/>..<paramref name="i"/>+31 of <paramref name="row"/>.</summary>
    static abstract void Load32(byte* row, int i, out Vector512<float> lo, out Vector512<float> hi);
    /// <summary>Weights <paramref name="i"/>..<paramref name="i"/>+15 of <paramref name="row"/> in one 512-bit vector, short
    /// of <see cref="Load16Scale"/> as <see cref="Load16"/>'s are (its callers multiply by <see cref="MatMulArgs.XScaled"/>).</summary>
    static abstract Vector512<float> Load16x512(byte* row, int i);
    /// <summary>Weights <paramref name="i"/>..<paramref name="i"/>+7 of <paramref name="row"/>.</summary>
    static abstract Vector256<float> Load8(byte* row, int i);
    /// <summary>Weights <paramref name="i"/>..<paramref name="i"/>+15 of <paramref name="row"/> as two 256-bit vectors, the
    /// same values as two <see cref="Load8"/> times <see cref="Load16Scale"/>.</summary>
    static abstract void Load16(byte* row, int i, out Vector256<float> lo, out Vector256<float> hi);
    /// <summary>What <see cref="Load16"/>'s values are short of: 1, or 2^112 for <see cref="F16FiniteWeights"/>, whose
    /// callers multiply the activations by it instead (exact while they are under 2^16 in size).</summary>
    static virtual float Load16Scale => 1f;
    /// <summary>Weight <paramref name="i"/> of <paramref name="row"/>.</summary>
    static abstract float Load1(byte* row, int i);
}

/// <summary>32-bit float weights.</summary>
internal readonly unsafe struct F32Weights : IFloatWeights
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(byte* row, int i, out Vector512<float> lo, out Vector512<float> hi)
    {
        lo = Vector512.Load((float*)row + i);
        hi = Vector512.Load((float*)row + i + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16x512(byte* row, int i) => Vector512.Load((float*)row + i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, int i) => Vector256.Load((float*)row + i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(byte* row, int i, out Vector256<float> lo, out Vector256<float> hi)
    {
        lo = Vector256.Load((float*)row + i);
        hi = Vector256.Load((float*)row + i + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, int i) => ((float*)row)[i];
}

/// <summary>IEEE half weights, widened with integer arithmetic (no F16C intrinsics are exposed to .NET).</summary>
internal readonly unsafe struct F16Weights : IFloatWeights
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(byte* row, int i, out Vector512<float> lo, out Vector512<float> hi)
    {
        var (l, h) = Vector512.Widen(Vector512.Load((ushort*)row + i));
        lo = ToSingle(l);
        hi = ToSingle(h);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16x512(byte* row, int i) =>
        ToSingle(Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)row + i)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, int i) =>
        ToSingle(Avx2.ConvertToVector256Int32(Vector128.Load((ushort*)row + i)).AsUInt32());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(byte* row, int i, out Vector256<float> lo, out Vector256<float> hi)
    {
        WidenUnscaled16((ushort*)row + i, out lo, out hi);
        var scale = Vector256.Create(Scale).AsSingle();
        lo *= scale;
        hi *= scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, int i) => Fp16.ToFloat(((ushort*)row)[i]);

    /// <summary>
    /// Sixteen halves at <paramref name="p"/> as floats still to be multiplied by 2^112 (the re-bias of
    /// <see cref="ToSingle(Vector256{uint})"/>), in order: the arithmetic on 16-bit lanes, half the shifts of widening
    /// first (this core's one vector shift pipe is what <see cref="Load8"/> waits on).
    /// </summary>
    /// <remarks>
    /// The float's top half is the half shifted right by 3 (sign copies masked off), its bottom half the three mantissa
    /// bits shifted out, so interleaving the two gives (h &lt;&lt; 16) >> 3. An all-ones half exponent becomes an all-ones
    /// float exponent, which the 2^112 keeps: infinities and NaNs come out as such. The qword permute first makes the
    /// interleave come out in order.
    /// </remarks>
    /// <param name="p">The halves.</param>
    /// <param name="lo">Values 0..7.</param>
    /// <param name="hi">Values 8..15.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void WidenUnscaled16(ushort* p, out Vector256<float> lo, out Vector256<float> hi)
    {
        var h = Avx2.Permute4x64(Vector256.Load((ulong*)p), 0b11_01_10_00).AsInt16();
        var top = Avx2.ShiftRightArithmetic(h, 3) & Vector256.Create(unchecked((short)0x8FFF));
        top |= Vector256.Equals(h & Vector256.Create((short)0x7C00), Vector256.Create((short)0x7C00)) & Vector256.Create((short)0x7F80);
        var bottom = Avx2.ShiftLeftLogical(h, 13);
        lo = Avx2.UnpackLow(bottom, top).AsSingle();
        hi = Avx2.UnpackHigh(bottom, top).AsSingle();
    }

    /// <summary>The factor (2^112) that <see cref="WidenUnscaled16"/>'s values still need.</summary>
    internal static float Rebias => BitConverter.UInt32BitsToSingle(Scale);

    // NOTE: with the half in the top 16 bits of an int, an arithmetic shift by 3 puts exponent and mantissa where a
    // float keeps them (the sign stays on top; the mask clears its copies); scaling by 2^112 then re-biases normals and
    // turns half subnormals (which land on float subnormals) into the right normal floats. Only Inf/NaN need a fix-up.
    private const uint Scale = (127 + 112) << 23;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> ToSingle(Vector512<uint> h)
    {
        var top = (h << 16).AsInt32();
        var f = ((top >> 3) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector512.Create(Scale).AsSingle();
        var exponent = top & Vector512.Create(0x7C000000);
        var infNan = Vector512.Equals(exponent, Vector512.Create(0x7C000000));
        return (f.AsInt32() | (infNan & Vector512.Create(0x7F800000))).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> ToSingle(Vector256<uint> h)
    {
        var top = (h << 16).AsInt32();
        var f = ((top >> 3) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(Scale).AsSingle();
        var exponent = top & Vector256.Create(0x7C000000);
        var infNan = Vector256.Equals(exponent, Vector256.Create(0x7C000000));
        return (f.AsInt32() | (infNan & Vector256.Create(0x7F800000))).AsSingle();
    }
}

/// <summary>
/// F16 weights known to hold no infinity or NaN (<see cref="WeightMatrix.FiniteHalves"/>): <see cref="Load16"/> and
/// <see cref="Load16x512"/> widen them without the fix-up those need and without the 2^112 re-bias, which the activations
/// carry instead (<see cref="Load16Scale"/>); w·2^-112 times x·2^112 is w·x exactly, so every sum keeps its bits. The
/// other loads are <see cref="F16Weights"/>'.
/// </summary>
internal readonly unsafe struct F16FiniteWeights : IFloatWeights
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(byte* row, int i, out Vector512<float> lo, out Vector512<float> hi) => F16Weights.Load32(row, i, out lo, out hi);

    /// <summary>
    /// Each half sign-extended to 32 bits (<c>vpmovsxwd</c> from memory), shifted left by 13 and the three copies of the
    /// sign above the exponent masked off, as <see cref="Widen8"/>: short of 2^112, and never a subnormal float for
    /// weights rescaled by <see cref="HalfRescale"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16x512(byte* row, int i) =>
        ((Avx512F.ConvertToVector512Int32(Vector256.Load((short*)row + i)) << 13) & Vector512.Create(unchecked((int)0x8FFFFFFF))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, int i) => F16Weights.Load8(row, i);

    /// <summary>
    /// Each half sign-extended to 32 bits (<c>vpmovsxwd</c> from memory, in order), times 2^13 (<c>vpmaddwd</c> against
    /// (8192, 0) word pairs: the sign extension times 0), and the three copies of the sign above the exponent masked off:
    /// sign, five exponent bits and ten mantissa bits where a float keeps them, short of 2^112.
    /// </summary>
    /// <remarks>
    /// NOTE: measured on the Zen 3 EPYC, one core, a 128 KiB matrix in L2, batch 1 (eight rows per tile): 37 GB/s of
    /// weights against 25 for <see cref="F16Weights.WidenUnscaled16"/> (qword permute, two 16-bit shifts, two unpacks) and
    /// 34 with <c>vpslld</c> in place of <c>vpmaddwd</c>. The permute and the shifts share the core's two shuffle/shift
    /// pipes with each other; the multiply runs on another pipe, and the sign extension from memory reads the halves in
    /// column order, so no permute is needed to keep the summation order.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(byte* row, int i, out Vector256<float> lo, out Vector256<float> hi)
    {
        lo = Widen8((short*)row + i);
        hi = Widen8((short*)row + i + 8);
    }

    /// <summary>Eight finite halves at <paramref name="p"/> as floats still to be multiplied by 2^112.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Widen8(short* p)
    {
        var shift13 = Vector256.Create(8192).AsInt16();
        return (Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int32(p).AsInt16(), shift13) & Vector256.Create(unchecked((int)0x8FFFFFFF))).AsSingle();
    }

    public static float Load16Scale => F16Weights.Rebias;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, int i) => F16Weights.Load1(row, i);
}

/// <summary>bfloat16 weights: the upper half of a float.</summary>
internal readonly unsafe struct BF16Weights : IFloatWeights
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(byte* row, int i, out Vector512<float> lo, out Vector512<float> hi)
    {
        var (l, h) = Vector512.Widen(Vector512.Load((ushort*)row + i));
        lo = (l << 16).AsSingle();
        hi = (h << 16).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16x512(byte* row, int i) =>
        (Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)row + i)) << 16).AsSingle();

    /// <summary>
    /// The eight values loaded into both 128-bit lanes (<c>vbroadcasti128</c>, which runs in the load unit) and one
    /// in-lane byte shuffle that puts values 0..3 (low lane) and 4..7 (high lane) in the top halves of the dwords, zeros
    /// below: one shuffle per eight values.
    /// </summary>
    /// <remarks>
    /// NOTE: measured on the Zen 3 EPYC, one core, a 128 KiB matrix in L2, batch 1 (eight rows per tile): 47 GB/s of
    /// weights against 34 for a qword permute and two unpacks with zero per sixteen values and 40 for
    /// <c>vpmovzxwd</c> and <c>vpslld</c>: the permute crosses lanes, and permutes, unpacks, sign extensions and shifts all
    /// queue on the same two pipes.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, int i)
    {
        // NOTE: the shuffle control as a local constant (a static property returning it was not folded: the JIT built
        // the vector on the stack at every load). Bytes 2k, 2k+1 of a lane go to the top of its dword k (the lanes hold
        // the same eight values: k picks 0..3 in the low lane, 4..7 in the high one); 0x80 zeroes the bottom halves.
        var toTopHalves = Vector256.Create(
            (byte)0x80, 0x80, 0, 1, 0x80, 0x80, 2, 3, 0x80, 0x80, 4, 5, 0x80, 0x80, 6, 7,
            0x80, 0x80, 8, 9, 0x80, 0x80, 10, 11, 0x80, 0x80, 12, 13, 0x80, 0x80, 14, 15);
        return Avx2.Shuffle(Avx2.BroadcastVector128ToVector256((byte*)((ushort*)row + i)), toTopHalves).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load16(byte* row, int i, out Vector256<float> lo, out Vector256<float> hi)
    {
        lo = Load8(row, i);
        hi = Load8(row, i + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, int i) => BitConverter.Int32BitsToSingle(((ushort*)row)[i] << 16);
}
