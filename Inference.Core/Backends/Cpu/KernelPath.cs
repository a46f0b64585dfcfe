using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>Instruction-set level a CPU kernel runs at; tests force each supported level.</summary>
internal enum KernelPath
{
    /// <summary>Plain scalar loops.</summary>
    Scalar,
    /// <summary>AVX2 + FMA; integer dots through <c>vpmaddubsw</c> + <c>vpmaddwd</c>.</summary>
    Vector256,
    /// <summary>
    /// <see cref="Vector256"/> running the integer kernels of <see cref="Vector256Vnni"/>, each VNNI instruction computed
    /// exactly by AVX2 instructions (<see cref="EmulatedVnni"/>): slower than both and never chosen as <see cref="KernelPaths.Best"/>;
    /// it lets a machine without AVX-VNNI test the loops that machines with it run.
    /// </summary>
    Vector256VnniEmulated,
    /// <summary>AVX2 + FMA with AVX-VNNI integer dots (<c>vpdpbusd</c>).</summary>
    Vector256Vnni,
    /// <summary>AVX-512 float kernels; integer kernels as <see cref="Vector256Vnni"/> (or <see cref="Vector256"/> without VNNI).</summary>
    /// <remarks>
    /// NOTE: .NET 10 exposes 512-bit <c>vpdpbusd</c> only through AVX10 (<c>Avx10v1.V512</c>), which AVX-512 Xeons do not
    /// report; the 512-bit <c>vpmaddubsw</c> + <c>vpmaddwd</c> pair moves as many bytes per µop as 256-bit AVX-VNNI
    /// (512-bit µops occupy two ports), so the integer kernels stay at 256 bits.
    /// </remarks>
    Vector512,
}

/// <summary>Which <see cref="KernelPath"/>s this machine supports.</summary>
internal static class KernelPaths
{
    /// <summary>The fastest supported path.</summary>
    public static readonly KernelPath Best =
        IsSupported(KernelPath.Vector512) ? KernelPath.Vector512
        : IsSupported(KernelPath.Vector256Vnni) ? KernelPath.Vector256Vnni
        : IsSupported(KernelPath.Vector256) ? KernelPath.Vector256
        : KernelPath.Scalar;

    /// <summary>True when <paramref name="path"/> can run here.</summary>
    public static bool IsSupported(KernelPath path) => path switch
    {
        KernelPath.Scalar => true,
        KernelPath.Vector256 or KernelPath.Vector256VnniEmulated => Avx2.IsSupported && Fma.IsSupported,
        KernelPath.Vector256Vnni => Avx2.IsSupported && Fma.IsSupported && AvxVnni.IsSupported,
        KernelPath.Vector512 => Avx2.IsSupported && Fma.IsSupported && Avx512F.IsSupported && Avx512BW.IsSupported
                                && Vector512.IsHardwareAccelerated,
        _ => false,
    };

    /// <summary>True for the paths whose float kernels use 256-bit vectors (AVX2 + FMA, with or without VNNI).</summary>
    public static bool Floats256(KernelPath path) =>
        path is KernelPath.Vector256 or KernelPath.Vector256VnniEmulated or KernelPath.Vector256Vnni;

    /// <summary>The integer dot steps of the quantized kernels on <paramref name="path"/>.</summary>
    public static IntegerSteps Steps(KernelPath path) =>
        path == KernelPath.Vector256VnniEmulated ? IntegerSteps.EmulatedVnni
        : path >= KernelPath.Vector256Vnni && AvxVnni.IsSupported ? IntegerSteps.Vnni
        : IntegerSteps.Madd;
}
