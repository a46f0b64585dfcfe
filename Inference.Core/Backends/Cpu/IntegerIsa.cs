using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// The integer dot steps a quantized kernel runs with, chosen once per call from its <see cref="KernelPath"/>
/// (<see cref="KernelPaths.Steps"/>): AVX-VNNI, plain AVX2, or the AVX-VNNI loops with each VNNI instruction computed
/// exactly by AVX2 instructions, so that a machine without AVX-VNNI can test those loops.
/// </summary>
/// <remarks>
/// Without VNNI, the packed kernels sum <c>vpmaddubsw</c> products of small codes as shorts over several steps and widen
/// them once by <c>vpmaddwd</c> against the scales: the same exact integer sums as the VNNI loops, so every choice gives
/// the same bits.
/// </remarks>
internal interface IIntegerIsa
{
    /// <summary>True when the kernel runs its VNNI loops (<see cref="WithVnni"/> or <see cref="EmulatedVnni"/>).</summary>
    static abstract bool Vnni { get; }

    /// <summary>
    /// <paramref name="acc"/> + the sums of each lane's four u·s byte products (u unsigned, s signed): <c>vpdpbusd</c>.
    /// <see cref="WithoutVnni"/> goes through <c>vpmaddubsw</c>, exact only while each adjacent pair of products fits a
    /// short (its callers keep |u·s| ≤ 128·127).
    /// </summary>
    static abstract Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s);

    /// <summary><paramref name="acc"/> + the sums of adjacent short products: <c>vpdpwssd</c>, or <c>vpmaddwd</c> + add.</summary>
    static abstract Vector256<int> DotWords(Vector256<int> acc, Vector256<short> a, Vector256<short> b);
}

/// <summary>AVX-VNNI: <c>vpdpbusd</c>, <c>vpdpwssd</c>.</summary>
internal readonly struct WithVnni : IIntegerIsa
{
    public static bool Vnni => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) => AvxVnni.MultiplyWideningAndAdd(acc, u, s);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> DotWords(Vector256<int> acc, Vector256<short> a, Vector256<short> b) => AvxVnni.MultiplyWideningAndAdd(acc, a, b);
}

/// <summary>AVX2 alone: <c>vpmaddubsw</c> + <c>vpmaddwd</c>.</summary>
internal readonly struct WithoutVnni : IIntegerIsa
{
    public static bool Vnni => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) =>
        acc + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> DotWords(Vector256<int> acc, Vector256<short> a, Vector256<short> b) => acc + Avx2.MultiplyAddAdjacent(a, b);
}

/// <summary>
/// The VNNI loops on AVX2 (<see cref="KernelPath.Vector256VnniEmulated"/>): <c>vpdpbusd</c> as two <c>vpmaddwd</c> of the
/// even and the odd bytes widened to shorts, exact for every input as the instruction is; <c>vpdpwssd</c> as
/// <c>vpmaddwd</c> + add, which wraps where it wraps.
/// </summary>
internal readonly struct EmulatedVnni : IIntegerIsa
{
    public static bool Vnni => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s)
    {
        var uw = u.AsInt16();
        var sw = s.AsInt16();
        var even = Avx2.MultiplyAddAdjacent(uw & Vector256.Create((short)0xFF), Avx2.ShiftRightArithmetic(Avx2.ShiftLeftLogical(sw, 8), 8));
        var odd = Avx2.MultiplyAddAdjacent(Avx2.ShiftRightLogical(uw, 8), Avx2.ShiftRightArithmetic(sw, 8));
        return acc + even + odd;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> DotWords(Vector256<int> acc, Vector256<short> a, Vector256<short> b) => acc + Avx2.MultiplyAddAdjacent(a, b);
}

/// <summary>Which <see cref="IIntegerIsa"/> a <see cref="KernelPath"/> runs with (<see cref="KernelPaths.Steps"/>).</summary>
internal enum IntegerSteps
{
    /// <summary><see cref="WithoutVnni"/>.</summary>
    Madd,
    /// <summary><see cref="WithVnni"/>.</summary>
    Vnni,
    /// <summary><see cref="EmulatedVnni"/>.</summary>
    EmulatedVnni,
}
