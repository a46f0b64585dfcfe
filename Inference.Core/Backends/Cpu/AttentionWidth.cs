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

/// <summary>The few operations of one vector type that <see cref="AttentionSteps{TOps, TV}"/> is written in.</summary>
internal unsafe interface IWidthOps<TV> where TV : struct
{
    /// <summary>Floats per vector.</summary>
    static abstract int Lanes { get; }

    static abstract TV Load(float* p);

    static abstract void Store(TV v, float* p);

    static abstract TV Splat(float x);

    /// <summary>a·b + c, fused.</summary>
    static abstract TV MultiplyAdd(TV a, TV b, TV c);

    static abstract float Sum(TV v);

    /// <summary>The lane sums of four vectors.</summary>
    static abstract Vector128<float> Sum4(TV a, TV b, TV c, TV d);
}

/// <summary>The <see cref="IAttentionWidth"/> steps, written once over a width's vector type.</summary>
internal static unsafe class AttentionSteps<TOps, TV> where TOps : IWidthOps<TV> where TV : struct
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Dot4(float* q, float* k0, float* k1, float* k2, float* k3, int length)
    {
        TV a0 = default, a1 = default, a2 = default, a3 = default;
        for (int c = 0; c < length; c += TOps.Lanes)
        {
            var qc = TOps.Load(q + c);
            a0 = TOps.MultiplyAdd(qc, TOps.Load(k0 + c), a0);
            a1 = TOps.MultiplyAdd(qc, TOps.Load(k1 + c), a1);
            a2 = TOps.MultiplyAdd(qc, TOps.Load(k2 + c), a2);
            a3 = TOps.MultiplyAdd(qc, TOps.Load(k3 + c), a3);
        }
        return TOps.Sum4(a0, a1, a2, a3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* q, float* k, int length)
    {
        TV acc = default;
        for (int c = 0; c < length; c += TOps.Lanes) acc = TOps.MultiplyAdd(TOps.Load(q + c), TOps.Load(k + c), acc);
        return TOps.Sum(acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddWeighted8(float* o, float* w, float* v0, float* v1, float* v2, float* v3,
        float* v4, float* v5, float* v6, float* v7, int length)
    {
        var w0 = TOps.Splat(w[0]);
        var w1 = TOps.Splat(w[1]);
        var w2 = TOps.Splat(w[2]);
        var w3 = TOps.Splat(w[3]);
        var w4 = TOps.Splat(w[4]);
        var w5 = TOps.Splat(w[5]);
        var w6 = TOps.Splat(w[6]);
        var w7 = TOps.Splat(w[7]);
        for (int c = 0; c < length; c += TOps.Lanes)
        {
            var acc = TOps.MultiplyAdd(TOps.Load(v0 + c), w0, TOps.Load(o + c));
            acc = TOps.MultiplyAdd(TOps.Load(v1 + c), w1, acc);
            acc = TOps.MultiplyAdd(TOps.Load(v2 + c), w2, acc);
            acc = TOps.MultiplyAdd(TOps.Load(v3 + c), w3, acc);
            acc = TOps.MultiplyAdd(TOps.Load(v4 + c), w4, acc);
            acc = TOps.MultiplyAdd(TOps.Load(v5 + c), w5, acc);
            acc = TOps.MultiplyAdd(TOps.Load(v6 + c), w6, acc);
            TOps.Store(TOps.MultiplyAdd(TOps.Load(v7 + c), w7, acc), o + c);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddWeighted(float* o, float w, float* v, int length)
    {
        var wv = TOps.Splat(w);
        for (int c = 0; c < length; c += TOps.Lanes) TOps.Store(TOps.MultiplyAdd(TOps.Load(v + c), wv, TOps.Load(o + c)), o + c);
    }
}

/// <summary>512-bit steps (AVX-512), head sizes in sixteens.</summary>
internal readonly unsafe struct Width512 : IAttentionWidth, IWidthOps<Vector512<float>>
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

    public static Vector128<float> Dot4(float* q, float* k0, float* k1, float* k2, float* k3, int length) =>
        AttentionSteps<Width512, Vector512<float>>.Dot4(q, k0, k1, k2, k3, length);

    public static float Dot(float* q, float* k, int length) => AttentionSteps<Width512, Vector512<float>>.Dot(q, k, length);

    public static void AddWeighted8(float* o, float* w, float* v0, float* v1, float* v2, float* v3,
        float* v4, float* v5, float* v6, float* v7, int length) =>
        AttentionSteps<Width512, Vector512<float>>.AddWeighted8(o, w, v0, v1, v2, v3, v4, v5, v6, v7, length);

    public static void AddWeighted(float* o, float w, float* v, int length) => AttentionSteps<Width512, Vector512<float>>.AddWeighted(o, w, v, length);

    public static int Lanes => 16;

    public static Vector512<float> Load(float* p) => Vector512.Load(p);

    public static void Store(Vector512<float> v, float* p) => v.Store(p);

    public static Vector512<float> Splat(float x) => Vector512.Create(x);

    public static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);

    public static float Sum(Vector512<float> v) => Vector512.Sum(v);

    /// <summary>Halves, then quarters, then lanes added pairwise across all four at once (nine shuffles and five adds for
    /// four sums).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Sum4(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d)
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

/// <summary>256-bit steps (AVX2 + FMA, where the 512-bit path does not run), head sizes in eights: the rows widened into a
/// buffer first. Head sizes in sixteens take <see cref="GroupAttention256"/> instead, which widens in registers.</summary>
internal readonly unsafe struct Width256 : IAttentionWidth, IWidthOps<Vector256<float>>
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

    public static Vector128<float> Dot4(float* q, float* k0, float* k1, float* k2, float* k3, int length) =>
        AttentionSteps<Width256, Vector256<float>>.Dot4(q, k0, k1, k2, k3, length);

    public static float Dot(float* q, float* k, int length) => AttentionSteps<Width256, Vector256<float>>.Dot(q, k, length);

    public static void AddWeighted8(float* o, float* w, float* v0, float* v1, float* v2, float* v3,
        float* v4, float* v5, float* v6, float* v7, int length) =>
        AttentionSteps<Width256, Vector256<float>>.AddWeighted8(o, w, v0, v1, v2, v3, v4, v5, v6, v7, length);

    public static void AddWeighted(float* o, float w, float* v, int length) => AttentionSteps<Width256, Vector256<float>>.AddWeighted(o, w, v, length);

    public static int Lanes => 8;

    public static Vector256<float> Load(float* p) => Vector256.Load(p);

    public static void Store(Vector256<float> v, float* p) => v.Store(p);

    public static Vector256<float> Splat(float x) => Vector256.Create(x);

    public static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.FusedMultiplyAdd(a, b, c);

    public static float Sum(Vector256<float> v) => Vector256.Sum(v);

    /// <summary>Three horizontal adds, then the two halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Sum4(Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> d)
    {
        var t = Avx.HorizontalAdd(Avx.HorizontalAdd(a, b), Avx.HorizontalAdd(c, d));
        return t.GetLower() + t.GetUpper();
    }
}
