using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>Loads float weights of one storage type, converting on the fly (F32, F16, BF16).</summary>
internal unsafe interface IFloatWeights
{
    /// <summary>Weights <paramref name="i"/>..<paramref name="i"/>+31 of <paramref name="row"/>.</summary>
    static abstract void Load32(byte* row, int i, out Vector512<float> lo, out Vector512<float> hi);
    /// <summary>Weights <paramref name="i"/>..<paramref name="i"/>+15 of <paramref name="row"/> in one 512-bit vector.</summary>
    static abstract Vector512<float> Load16x512(byte* row, int i);
    /// <summary>Weights <paramref name="i"/>..<paramref name="i"/>+7 of <paramref name="row"/>.</summary>
    static abstract Vector256<float> Load8(byte* row, int i);
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
    public static float Load1(byte* row, int i) => Fp16.ToFloat(((ushort*)row)[i]);

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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, int i) =>
        (Avx2.ConvertToVector256Int32(Vector128.Load((ushort*)row + i)) << 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, int i) => BitConverter.Int32BitsToSingle(((ushort*)row)[i] << 16);
}
