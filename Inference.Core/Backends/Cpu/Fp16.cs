namespace Inference.Backends.Cpu;

/// <summary>Fast scalar conversion of IEEE half bit patterns to float through a lookup table.</summary>
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

    private static float[] Build()
    {
        var t = new float[65536];
        for (int i = 0; i < t.Length; i++) t[i] = (float)BitConverter.UInt16BitsToHalf((ushort)i);
        return t;
    }
}
