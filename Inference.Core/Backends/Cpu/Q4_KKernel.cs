using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q4_K weights × Q8_K activations (ggml's <c>vec_dot_q4_K_q8_K</c>): per super-block of 256,
/// y += d_x·(d·Σ_j sc_j·Σ q·q_x − dmin·Σ_j m_j·Σ q_x), the activation sums of each 32-value sub-block j coming from
/// the Q8_K bsums. The same sums with five-bit codes are Q5_K's (<see cref="Q5_KKernel"/>, through
/// <see cref="Tile{TTile, TDot, TCodes}"/>).
/// </summary>
/// <remarks>
/// The scale is applied in the integer domain with <c>vpmaddwd</c> on the <c>vpmaddubsw</c> pair sums (codes ≤ 31, so
/// no pair saturates); AVX-VNNI would need a 32-bit multiply per sub-block instead and is no faster here.
/// </remarks>
internal readonly unsafe struct Q4_KKernel : IQuantKernel
{
    // Byte j of the result is min j duplicated into a pair of shorts' worth of bytes: [m0, m0, m1, m1, …, m7, m7].
    private static readonly Vector128<byte> DuplicateBytes = Vector128.Create((byte)0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);

    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        Tile<TTile, TDot, Q4_KCodes>(a, row, r, b);

    /// <summary>Q4_K (<see cref="Q4_KCodes"/>) or Q5_K (<see cref="Q5_KCodes"/>) rows: the same sums, four- or five-bit codes.</summary>
    internal static void Tile<TTile, TDot, TCodes>(in MatMulArgs a, byte* row, int r, int b)
        where TTile : IBatchTile where TDot : IIntegerIsa where TCodes : IK4Codes
    {
        int nsb = a.Cols / 256, batch = a.Batch;
        // Super-block s of batch row b + t: quants at q + s·qStep + 256t, scale at d[s·batch + t],
        // sums at bsums + s·bsStep + 16t.
        sbyte* q = a.Q + 256L * b;
        float* dx = a.D + b;
        short* bsums = a.BSums + 16L * b;
        long qStep = 256L * batch, bsStep = 16L * batch;
        if (a.Path == KernelPath.Scalar)
        {
            QuantKernel.Store<TTile>(a, r, b,
                DotScalar<TCodes>(row, nsb, q, qStep, dx, batch, bsums, bsStep),
                TTile.Count > 1 ? DotScalar<TCodes>(row, nsb, q + 256, qStep, dx + 1, batch, bsums + 16, bsStep) : 0,
                TTile.Count > 2 ? DotScalar<TCodes>(row, nsb, q + 512, qStep, dx + 2, batch, bsums + 32, bsStep) : 0,
                TTile.Count > 3 ? DotScalar<TCodes>(row, nsb, q + 768, qStep, dx + 3, batch, bsums + 48, bsStep) : 0);
            return;
        }

        Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        Vector256<float> min0 = default, min1 = default, min2 = default, min3 = default;
        var nibble = Vector256.Create((byte)0x0F);
        var bit4 = Vector256.Create((byte)0x10);
        for (int s = 0; s < nsb; s++)
        {
            byte* p = row + s * TCodes.BlockBytes;
            sbyte* qs = q + s * qStep;
            float* ds = dx + (long)s * batch;
            short* bs = bsums + s * bsStep;
            float d = Fp16.ToFloat(*(ushort*)p), dmin = Fp16.ToFloat(*(ushort*)(p + 2));
            UnpackScales(p + 4, out ulong scales, out ulong mins);

            // Σ_j m_j·(bsums[2j] + bsums[2j+1]) as 8 int lanes.
            var mins16 = Avx2.ConvertToVector256Int16(Ssse3.Shuffle(Vector128.CreateScalar(mins).AsByte(), DuplicateBytes));
            min0 = MinStep(min0, bs + 0, mins16, dmin * ds[0]);
            if (TTile.Count > 1) min1 = MinStep(min1, bs + 16, mins16, dmin * ds[1]);
            if (TTile.Count > 2) min2 = MinStep(min2, bs + 32, mins16, dmin * ds[2]);
            if (TTile.Count > 3) min3 = MinStep(min3, bs + 48, mins16, dmin * ds[3]);

            // The 8 scales as shorts in both 128-bit lanes; a byte shuffle with pick = [2j, 2j+1, …] broadcasts scale j.
            var sc8 = Sse41.ConvertToVector128Int16(Vector128.CreateScalar(scales).AsByte()).AsByte();
            var scalesBoth = Vector256.Create(sc8, sc8);
            var pick = Vector256.Create((short)0x0100).AsByte();
            var qh = TCodes.HighBits ? Vector256.Load(p + IK4Codes.HighBitsOffset).AsUInt16() : default;
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int k = 0; k < 4; k++)
            {
                // 64 values: low nibbles are sub-block 2k, high nibbles sub-block 2k+1.
                var qv = Vector256.Load(p + TCodes.CodesOffset + 32 * k);
                var lo = qv & nibble;
                var hi = Avx2.ShiftRightLogical(qv.AsUInt16(), 4).AsByte() & nibble;
                if (TCodes.HighBits)
                {
                    // Q5_K: the fifth bits are bits 2k and 2k + 1 of qh, bits 0 and 1 of qh >> 2k, moved to bit 4 (the
                    // 16-bit shifts leak bits across bytes only where the mask clears them, or above bit 1 of a byte).
                    lo |= Avx2.ShiftLeftLogical(qh, 4).AsByte() & bit4;
                    hi |= Avx2.ShiftLeftLogical(qh, 3).AsByte() & bit4;
                    qh = Avx2.ShiftRightLogical(qh, 2);
                }
                var scLo = Avx2.Shuffle(scalesBoth, pick).AsInt16();
                pick += Vector256.Create((byte)2);
                var scHi = Avx2.Shuffle(scalesBoth, pick).AsInt16();
                pick += Vector256.Create((byte)2);
                int off = 64 * k;
                i0 = SubStep(i0, lo, hi, qs + off, scLo, scHi);
                if (TTile.Count > 1) i1 = SubStep(i1, lo, hi, qs + 256 + off, scLo, scHi);
                if (TTile.Count > 2) i2 = SubStep(i2, lo, hi, qs + 512 + off, scLo, scHi);
                if (TTile.Count > 3) i3 = SubStep(i3, lo, hi, qs + 768 + off, scLo, scHi);
            }
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), Vector256.Create(d * ds[0]), acc0);
            if (TTile.Count > 1) acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), Vector256.Create(d * ds[1]), acc1);
            if (TTile.Count > 2) acc2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i2), Vector256.Create(d * ds[2]), acc2);
            if (TTile.Count > 3) acc3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i3), Vector256.Create(d * ds[3]), acc3);
        }
        QuantKernel.Store<TTile>(a, r, b, Vector256.Sum(acc0 - min0), Vector256.Sum(acc1 - min1), Vector256.Sum(acc2 - min2), Vector256.Sum(acc3 - min3));
    }

    /// <summary>
    /// The 8 six-bit scales and 8 six-bit mins packed in 12 bytes (see <see cref="Dequantize.ScaleMinK4"/>), one per
    /// byte, unpacked with 32-bit masks: bytes 0..3 of <paramref name="scales"/> are scales 0..3, and so on.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void UnpackScales(byte* packed, out ulong scales, out ulong mins)
    {
        const uint Low6 = 0x3F3F3F3F, Low4 = 0x0F0F0F0F, Low2 = 0x03030303;
        uint u0 = *(uint*)packed, u1 = *(uint*)(packed + 4), u2 = *(uint*)(packed + 8);
        uint sc03 = u0 & Low6;
        uint sc47 = (u2 & Low4) | (((u0 >> 6) & Low2) << 4);
        uint m03 = u1 & Low6;
        uint m47 = ((u2 >> 4) & Low4) | (((u1 >> 6) & Low2) << 4);
        scales = sc03 | ((ulong)sc47 << 32);
        mins = m03 | ((ulong)m47 << 32);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> MinStep(Vector256<float> acc, short* bsums, Vector256<short> mins16, float scale) =>
        Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Vector256.Load(bsums), mins16)), Vector256.Create(scale), acc);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SubStep(Vector256<int> acc, Vector256<byte> lo, Vector256<byte> hi, sbyte* x, Vector256<short> scLo, Vector256<short> scHi)
    {
        var pl = Avx2.MultiplyAddAdjacent(lo, Vector256.Load(x));
        var ph = Avx2.MultiplyAddAdjacent(hi, Vector256.Load(x + 32));
        return acc + Avx2.MultiplyAddAdjacent(pl, scLo) + Avx2.MultiplyAddAdjacent(ph, scHi);
    }

    private static float DotScalar<TCodes>(byte* row, int nsb, sbyte* x, long xStep, float* dx, int dStep, short* bsums, long bsStep)
        where TCodes : IK4Codes
    {
        float sum = 0;
        for (int s = 0; s < nsb; s++)
        {
            byte* p = row + s * TCodes.BlockBytes;
            var packed = new ReadOnlySpan<byte>(p + 4, 12);
            byte* qs = p + TCodes.CodesOffset;
            byte* qh = p + IK4Codes.HighBitsOffset;
            sbyte* xs = x + s * xStep;
            short* bs = bsums + s * bsStep;
            int sumi = 0, sumMins = 0;
            for (int j = 0; j < 8; j++)
            {
                Dequantize.ScaleMinK4(j, packed, out int sc, out int m);
                byte* q = qs + 32 * (j / 2);
                int shift = 4 * (j % 2);
                int dot = 0;
                for (int l = 0; l < 32; l++)
                {
                    int code = (q[l] >> shift) & 0xF;
                    if (TCodes.HighBits) code |= ((qh[l] >> j) & 1) << 4;
                    dot += code * xs[32 * j + l];
                }
                sumi += sc * dot;
                sumMins += m * (bs[2 * j] + bs[2 * j + 1]);
            }
            sum += dx[(long)s * dStep] * (Fp16.ToFloat(*(ushort*)p) * sumi - Fp16.ToFloat(*(ushort*)(p + 2)) * sumMins);
        }
        return sum;
    }
}

/// <summary>The code layout of a Q4_K-family block: Q4_K (nibbles) or Q5_K (nibbles and a fifth bit from qh).</summary>
internal interface IK4Codes
{
    /// <summary>Where Q5_K keeps qh, its 32 bytes of fifth bits.</summary>
    const int HighBitsOffset = 16;

    /// <summary>Bytes per super-block.</summary>
    static abstract int BlockBytes { get; }
    /// <summary>Where the 128 bytes of nibbles start.</summary>
    static abstract int CodesOffset { get; }
    /// <summary>True for Q5_K.</summary>
    static abstract bool HighBits { get; }
}

/// <summary>Q4_K: f16 d | f16 dmin | scales[12] | qs[128].</summary>
internal readonly struct Q4_KCodes : IK4Codes
{
    public static int BlockBytes => 144;
    public static int CodesOffset => 16;
    public static bool HighBits => false;
}

/// <summary>Q5_K: f16 d | f16 dmin | scales[12] | qh[32] | qs[128].</summary>
internal readonly struct Q5_KCodes : IK4Codes
{
    public static int BlockBytes => 176;
    public static int CodesOffset => 48;
    public static bool HighBits => true;
}
