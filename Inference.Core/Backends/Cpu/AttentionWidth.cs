using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// The vector steps of <see cref="PagedAttention"/>'s vector path at one register width (<see cref="Width512"/>,
/// <see cref="Width256"/>): the pass structure is shared, the lanes per step and the lane sums are the width's.
/// </summary>
internal unsafe interface IAttentionWidth
{
    /// <summary>True when this width runs here for rows of <paramref name="headDim"/> floats.</summary>
    static abstract bool IsSupported(int headDim);

    /// <summary>The row at <paramref name="source"/> as floats: itself for float, widened into <paramref name="buffer"/> for Half.</summary>
    static abstract float* Widen<T>(T* source, int length, float* buffer) where T : unmanaged;

    /// <summary>q · k0 … q · k3, each summed by lane chunks, the four lane sums reduced together.</summary>
    static abstract Vector128<float> Dot4(float* q, float* k0, float* k1, float* k2, float* k3, int length);

    /// <summary>q · k summed by lane chunks.</summary>
    static abstract float Dot(float* q, float* k, int length);

    /// <summary>o += w[0]·v0 + … + w[7]·v7, in that order, one load and store of o per chunk.</summary>
    static abstract void AddWeighted8(float* o, float* w, float* v0, float* v1, float* v2, float* v3,
        float* v4, float* v5, float* v6, float* v7, int length);

    /// <summary>o += w·v.</summary>
    static abstract void AddWeighted(float* o, float w, float* v, int length);
}

/// <summary>512-bit steps (AVX-512), head sizes in sixteens.</summary>
internal readonly unsafe struct Width512 : IAttentionWidth
{
    public static bool IsSupported(int headDim) => Vector512.IsHardwareAccelerated && Avx512F.IsSupported && headDim % 16 == 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float* Widen<T>(T* source, int length, float* buffer) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return (float*)source;
        for (int c = 0; c < length; c += 16)
            F16Weights.ToSingle(Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)source + c))).Store(buffer + c);
        return buffer;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Dot4(float* q, float* k0, float* k1, float* k2, float* k3, int length)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int c = 0; c < length; c += 16)
        {
            var qc = Vector512.Load(q + c);
            a0 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(k0 + c), a0);
            a1 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(k1 + c), a1);
            a2 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(k2 + c), a2);
            a3 = Vector512.FusedMultiplyAdd(qc, Vector512.Load(k3 + c), a3);
        }
        return Sum4(a0, a1, a2, a3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* q, float* k, int length)
    {
        var acc = Vector512<float>.Zero;
        for (int c = 0; c < length; c += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(q + c), Vector512.Load(k + c), acc);
        return Vector512.Sum(acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddWeighted8(float* o, float* w, float* v0, float* v1, float* v2, float* v3,
        float* v4, float* v5, float* v6, float* v7, int length)
    {
        var w0 = Vector512.Create(w[0]);
        var w1 = Vector512.Create(w[1]);
        var w2 = Vector512.Create(w[2]);
        var w3 = Vector512.Create(w[3]);
        var w4 = Vector512.Create(w[4]);
        var w5 = Vector512.Create(w[5]);
        var w6 = Vector512.Create(w[6]);
        var w7 = Vector512.Create(w[7]);
        for (int c = 0; c < length; c += 16)
        {
            var acc = Vector512.FusedMultiplyAdd(Vector512.Load(v0 + c), w0, Vector512.Load(o + c));
            acc = Vector512.FusedMultiplyAdd(Vector512.Load(v1 + c), w1, acc);
            acc = Vector512.FusedMultiplyAdd(Vector512.Load(v2 + c), w2, acc);
            acc = Vector512.FusedMultiplyAdd(Vector512.Load(v3 + c), w3, acc);
            acc = Vector512.FusedMultiplyAdd(Vector512.Load(v4 + c), w4, acc);
            acc = Vector512.FusedMultiplyAdd(Vector512.Load(v5 + c), w5, acc);
            acc = Vector512.FusedMultiplyAdd(Vector512.Load(v6 + c), w6, acc);
            Vector512.FusedMultiplyAdd(Vector512.Load(v7 + c), w7, acc).Store(o + c);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddWeighted(float* o, float w, float* v, int length)
    {
        var wv = Vector512.Create(w);
        for (int c = 0; c < length; c += 16) Vector512.FusedMultiplyAdd(Vector512.Load(v + c), wv, Vector512.Load(o + c)).Store(o + c);
    }

    /// <summary>The lane sums of four vectors: halves, then quarters, then lanes added pairwise across all four at once
    /// (nine shuffles and five adds for four sums).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Sum4(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d)
    {
        // [a0+a2, a1+a3, b0+b2, b1+b3] in 128-bit quarters, likewise c and d
        var ab = Avx512F.Shuffle4x128(a, b, 0x44) + Avx512F.Shuffle4x128(a, b, 0xEE);
        var cd = Avx512F.Shuffle4x128(c, d, 0x44) + Avx512F.Shuffle4x128(c, d, 0xEE);
        // quarter i: four partial sums of vector i (a, b, c, d)
        var abcd = Avx512F.Shuffle4x128(ab, cd, 0x88) + Avx512F.Shuffle4x128(ab, cd, 0xDD);
        // within each quarter: lanes (2, 3, 0, 1), then (1, 0, 3, 2) added, so every lane holds its quarter's sum
        var t = abcd + Avx512F.Shuffle(abcd, abcd, 0x4E);
        t += Avx512F.Shuffle(t, t, 0xB1);
        return Avx512F.PermuteVar16x32(t, Vector512.Create(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12)).GetLower().GetLower();
    }
}

/// <summary>256-bit steps (AVX2 + FMA, where the 512-bit path does not run), head sizes in eights.</summary>
internal readonly unsafe struct Width256 : IAttentionWidth
{
    public static bool IsSupported(int headDim) => !Width512.IsSupported(headDim) && Avx2.IsSupported && Fma.IsSupported && headDim % 8 == 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float* Widen<T>(T* source, int length, float* buffer) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return (float*)source;
        for (int c = 0; c < length; c += 8)
            F16Weights.ToSingle(Avx2.ConvertToVector256Int32((ushort*)source + c).AsUInt32()).Store(buffer + c);
        return buffer;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Dot4(float* q, float* k0, float* k1, float* k2, float* k3, int length)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int c = 0; c < length; c += 8)
        {
            var qc = Vector256.Load(q + c);
            a0 = Vector256.FusedMultiplyAdd(qc, Vector256.Load(k0 + c), a0);
            a1 = Vector256.FusedMultiplyAdd(qc, Vector256.Load(k1 + c), a1);
            a2 = Vector256.FusedMultiplyAdd(qc, Vector256.Load(k2 + c), a2);
            a3 = Vector256.FusedMultiplyAdd(qc, Vector256.Load(k3 + c), a3);
        }
        // Three horizontal adds, then the two halves.
        var t = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
        return t.GetLower() + t.GetUpper();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* q, float* k, int length)
    {
        var acc = Vector256<float>.Zero;
        for (int c = 0; c < length; c += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(q + c), Vector256.Load(k + c), acc);
        return Vector256.Sum(acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddWeighted8(float* o, float* w, float* v0, float* v1, float* v2, float* v3,
        float* v4, float* v5, float* v6, float* v7, int length)
    {
        var w0 = Vector256.Create(w[0]);
        var w1 = Vector256.Create(w[1]);
        var w2 = Vector256.Create(w[2]);
        var w3 = Vector256.Create(w[3]);
        var w4 = Vector256.Create(w[4]);
        var w5 = Vector256.Create(w[5]);
        var w6 = Vector256.Create(w[6]);
        var w7 = Vector256.Create(w[7]);
        for (int c = 0; c < length; c += 8)
        {
            var acc = Vector256.FusedMultiplyAdd(Vector256.Load(v0 + c), w0, Vector256.Load(o + c));
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(v1 + c), w1, acc);
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(v2 + c), w2, acc);
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(v3 + c), w3, acc);
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(v4 + c), w4, acc);
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(v5 + c), w5, acc);
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(v6 + c), w6, acc);
            Vector256.FusedMultiplyAdd(Vector256.Load(v7 + c), w7, acc).Store(o + c);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddWeighted(float* o, float w, float* v, int length)
    {
        var wv = Vector256.Create(w);
        for (int c = 0; c < length; c += 8) Vector256.FusedMultiplyAdd(Vector256.Load(v + c), wv, Vector256.Load(o + c)).Store(o + c);
    }
}
