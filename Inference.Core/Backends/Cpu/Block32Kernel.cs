using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Weights in blocks of 32 with one f16 scale d (and for Q4_1 / Q5_1 an f16 min m) × Q8_0 or Q8_1 activations, as ggml's
/// <c>vec_dot_q5_0_q8_0</c>, <c>vec_dot_iq4_nl_q8_0</c>, <c>vec_dot_q4_1_q8_1</c> and <c>vec_dot_q5_1_q8_1</c>:
/// y = Σ_blocks d·d_x·Σ v·q_x (+ m·s_x), v the block's integer values and s_x the Q8_1 block's f16 d_x·Σq_x.
/// </summary>
/// <remarks>
/// <para>Unsigned codes go into <c>vpmaddubsw</c> / <c>vpdpbusd</c> as they are (≤ 31, so no pair saturates); Q5_0's
/// −16 offset is folded in as −16·Σq_x (twice the Q8_0 activation's −8·Σq_x) seeded into lane 0 of the integer
/// accumulator, as <see cref="Q4_0Kernel"/> does. IQ4_NL's table values are signed: their magnitudes go in unsigned and
/// their signs move onto the activations (|v| ≤ 127, so a pair stays under 2·127·127).</para>
/// <para>Where AVX2 runs, prepared weights of these types are repacked (<see cref="PackedBlock32{TLayout}"/>) and this
/// kernel computes the rows after the last whole group of eight, and every row at the scalar and 128-bit paths.</para>
/// <para>The integer block sums are exact; the f32 order of the per-block scaling (two accumulators, even and odd
/// blocks) is this kernel's own, so it agrees with ggml to f32 roundoff, not to the bit.</para>
/// </remarks>
internal static unsafe class Block32Kernel
{
    public static void Tile<TTile, TDot, TCodes>(in MatMulArgs a, byte* row, int r, int b)
        where TTile : IBatchTile where TDot : IIntegerIsa where TCodes : IBlock32Codes
    {
        int nb = a.Cols / 32, batch = a.Batch;
        // Block i of batch row b + t: quants at q + i·qStep + 32t, scale and sum at [i·batch + t].
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
        int* s = a.Sums + b;
        long qStep = 32L * batch;
        if (a.Path == KernelPath.Scalar)
        {
            QuantKernel.Store<TTile>(a, r, b,
                DotScalar<TCodes>(row, nb, q, qStep, d, s, batch),
                TTile.Count > 1 ? DotScalar<TCodes>(row, nb, q + 32, qStep, d + 1, s + 1, batch) : 0,
                TTile.Count > 2 ? DotScalar<TCodes>(row, nb, q + 64, qStep, d + 2, s + 2, batch) : 0,
                TTile.Count > 3 ? DotScalar<TCodes>(row, nb, q + 96, qStep, d + 3, s + 3, batch) : 0);
            return;
        }

        Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default; // even blocks
        Vector256<float> o0 = default, o1 = default, o2 = default, o3 = default; // odd blocks
        float m0 = 0, m1 = 0, m2 = 0, m3 = 0; // Q4_1 / Q5_1: Σ m·s_x, blocks in order
        int i = 0;
        for (; i + 2 <= nb; i += 2)
        {
            byte* p = row + i * TCodes.BlockBytes, pn = p + TCodes.BlockBytes;
            sbyte* qe = q + i * qStep, qo = qe + qStep;
            long ie = (long)i * batch, io = ie + batch;
            var dwe = Vector256.Create(Fp16.ToFloat(*(ushort*)p));
            var dwo = Vector256.Create(Fp16.ToFloat(*(ushort*)pn));
            var ue = TCodes.Codes(p);
            var uo = TCodes.Codes(pn);
            e0 = Step<TDot, TCodes>(e0, ue, qe, s[ie], dwe, d + ie);
            o0 = Step<TDot, TCodes>(o0, uo, qo, s[io], dwo, d + io);
            if (TTile.Count > 1)
            {
                e1 = Step<TDot, TCodes>(e1, ue, qe + 32, s[ie + 1], dwe, d + ie + 1);
                o1 = Step<TDot, TCodes>(o1, uo, qo + 32, s[io + 1], dwo, d + io + 1);
            }
            if (TTile.Count > 2)
            {
                e2 = Step<TDot, TCodes>(e2, ue, qe + 64, s[ie + 2], dwe, d + ie + 2);
                o2 = Step<TDot, TCodes>(o2, uo, qo + 64, s[io + 2], dwo, d + io + 2);
            }
            if (TTile.Count > 3)
            {
                e3 = Step<TDot, TCodes>(e3, ue, qe + 96, s[ie + 3], dwe, d + ie + 3);
                o3 = Step<TDot, TCodes>(o3, uo, qo + 96, s[io + 3], dwo, d + io + 3);
            }
            if (TCodes.HasMin)
            {
                float me = Fp16.ToFloat(*(ushort*)(p + 2)), mo = Fp16.ToFloat(*(ushort*)(pn + 2));
                m0 = MinStep(MinStep(m0, me, s + ie), mo, s + io);
                if (TTile.Count > 1) m1 = MinStep(MinStep(m1, me, s + ie + 1), mo, s + io + 1);
                if (TTile.Count > 2) m2 = MinStep(MinStep(m2, me, s + ie + 2), mo, s + io + 2);
                if (TTile.Count > 3) m3 = MinStep(MinStep(m3, me, s + ie + 3), mo, s + io + 3);
            }
        }
        if (i < nb)
        {
            byte* p = row + i * TCodes.BlockBytes;
            sbyte* qe = q + i * qStep;
            long ie = (long)i * batch;
            var dw = Vector256.Create(Fp16.ToFloat(*(ushort*)p));
            var u = TCodes.Codes(p);
            e0 = Step<TDot, TCodes>(e0, u, qe, s[ie], dw, d + ie);
            if (TTile.Count > 1) e1 = Step<TDot, TCodes>(e1, u, qe + 32, s[ie + 1], dw, d + ie + 1);
            if (TTile.Count > 2) e2 = Step<TDot, TCodes>(e2, u, qe + 64, s[ie + 2], dw, d + ie + 2);
            if (TTile.Count > 3) e3 = Step<TDot, TCodes>(e3, u, qe + 96, s[ie + 3], dw, d + ie + 3);
            if (TCodes.HasMin)
            {
                float m = Fp16.ToFloat(*(ushort*)(p + 2));
                m0 = MinStep(m0, m, s + ie);
                if (TTile.Count > 1) m1 = MinStep(m1, m, s + ie + 1);
                if (TTile.Count > 2) m2 = MinStep(m2, m, s + ie + 2);
                if (TTile.Count > 3) m3 = MinStep(m3, m, s + ie + 3);
            }
        }
        QuantKernel.Store<TTile>(a, r, b, Vector256.Sum(e0 + o0) + m0, Vector256.Sum(e1 + o1) + m1, Vector256.Sum(e2 + o2) + m2,
            Vector256.Sum(e3 + o3) + m3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float MinStep(float acc, float m, int* sx) => acc + m * BitConverter.Int32BitsToSingle(*sx);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TDot, TCodes>(Vector256<float> acc, Vector256<byte> codes, sbyte* x, int offset, Vector256<float> dw, float* dx)
        where TDot : IIntegerIsa where TCodes : IBlock32Codes
    {
        var xs = Vector256.Load(x);
        Vector256<int> dot;
        if (TCodes.Signed) dot = TDot.Dot(default, Avx2.Abs(codes.AsSByte()), Avx2.Sign(xs, codes.AsSByte()));
        else dot = TDot.Dot(TCodes.OffsetSums == 0 ? default : Vector256.CreateScalar(TCodes.OffsetSums * offset), codes, xs);
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), dw * Vector256.Create(*dx), acc);
    }

    private static float DotScalar<TCodes>(byte* row, int nb, sbyte* x, long xStep, float* d, int* sums, int dStep) where TCodes : IBlock32Codes
    {
        float sum = 0;
        for (int i = 0; i < nb; i++)
        {
            byte* p = row + i * TCodes.BlockBytes;
            var block = new ReadOnlySpan<byte>(p, TCodes.BlockBytes);
            sbyte* xb = x + i * xStep;
            int dot = 0;
            for (int j = 0; j < 32; j++) dot += TCodes.Value(block, j) * xb[j];
            long k = (long)i * dStep;
            sum += Fp16.ToFloat(*(ushort*)p) * d[k] * dot;
            if (TCodes.HasMin) sum += Fp16.ToFloat(*(ushort*)(p + 2)) * BitConverter.Int32BitsToSingle(sums[k]);
        }
        return sum;
    }

    /// <summary>The 32 nibbles at <paramref name="qs"/> in value order: low nibbles, then high nibbles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> Nibbles(byte* qs)
    {
        var v = Vector128.Load(qs);
        var mask = Vector128.Create((byte)0x0F);
        return Vector256.Create(v & mask, Sse2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask);
    }

    private static readonly Vector256<byte> SpreadBytes = Vector256.Create(
        (byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);

    private static readonly Vector256<byte> BitOfByte = Vector256.Create(
        (byte)1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);

    /// <summary>Byte j = 16 where bit j of the 32-bit <paramref name="qh"/> is set, else 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> FifthBits(uint qh)
    {
        var spread = Avx2.Shuffle(Vector256.Create(qh).AsByte(), SpreadBytes);
        var set = Vector256.Equals(spread & BitOfByte, BitOfByte);
        return set & Vector256.Create((byte)0x10);
    }
}

/// <summary>The layout of a 32-value block for <see cref="Block32Kernel"/>: f16 d at byte 0, the rest per type.</summary>
internal unsafe interface IBlock32Codes
{
    /// <summary>Bytes per block.</summary>
    static abstract int BlockBytes { get; }

    /// <summary>True when an f16 min m follows d (Q4_1, Q5_1: Q8_1 activations).</summary>
    static abstract bool HasMin { get; }

    /// <summary>The code offset as a multiple of the Q8_0 activation's −8·Σq (Q5_0: 2; 0 for none).</summary>
    static abstract int OffsetSums { get; }

    /// <summary>True when <see cref="Codes"/> returns signed values rather than unsigned codes (IQ4_NL).</summary>
    static abstract bool Signed { get; }

    /// <summary>The 32 codes (or signed values) of the block at <paramref name="p"/>, in value order.</summary>
    static abstract Vector256<byte> Codes(byte* p);

    /// <summary>The integer value j multiplies d by, offset included (min excluded): the scalar path's reference.</summary>
    static abstract int Value(ReadOnlySpan<byte> block, int j);
}

/// <summary>Q4_1: f16 d | f16 m | qs[16].</summary>
internal readonly unsafe struct Q4_1Codes : IBlock32Codes
{
    public static int BlockBytes => 20;
    public static bool HasMin => true;
    public static int OffsetSums => 0;
    public static bool Signed => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* p) => Block32Kernel.Nibbles(p + 4);
    public static int Value(ReadOnlySpan<byte> block, int j) => j < 16 ? block[4 + j] & 0xF : block[4 + j - 16] >> 4;
}

/// <summary>Q5_0: f16 d | qh[4] | qs[16], codes − 16.</summary>
internal readonly unsafe struct Q5_0Codes : IBlock32Codes
{
    public static int BlockBytes => 22;
    public static bool HasMin => false;
    public static int OffsetSums => 2;
    public static bool Signed => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* p) => Block32Kernel.Nibbles(p + 6) | Block32Kernel.FifthBits(*(uint*)(p + 2));
    public static int Value(ReadOnlySpan<byte> block, int j) => Dequantize.Q5Code(block, 2, j) - 16;
}

/// <summary>Q5_1: f16 d | f16 m | qh[4] | qs[16].</summary>
internal readonly unsafe struct Q5_1Codes : IBlock32Codes
{
    public static int BlockBytes => 24;
    public static bool HasMin => true;
    public static int OffsetSums => 0;
    public static bool Signed => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* p) => Block32Kernel.Nibbles(p + 8) | Block32Kernel.FifthBits(*(uint*)(p + 4));
    public static int Value(ReadOnlySpan<byte> block, int j) => Dequantize.Q5Code(block, 4, j);
}

/// <summary>IQ4_NL: f16 d | qs[16], each nibble an index into <see cref="Dequantize.IQ4Values"/>.</summary>
internal readonly unsafe struct IQ4_NLCodes : IBlock32Codes
{
    public static int BlockBytes => 18;
    public static bool HasMin => false;
    public static int OffsetSums => 0;
    public static bool Signed => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* p) => Avx2.Shuffle(IQ4Table.Both, Block32Kernel.Nibbles(p + 2));
    public static int Value(ReadOnlySpan<byte> block, int j) => Dequantize.IQ4Values[j < 16 ? block[2 + j] & 0xF : block[2 + j - 16] >> 4];
}

/// <summary>The IQ4 table for byte shuffles.</summary>
/// <remarks>Constant vectors rather than static readonly fields: a kernel compiled before a class's static constructor
/// has run tests for it at every use, and keeps its vector registers spilled around that test. The IQ4 table test
/// checks them against <see cref="Dequantize.IQ4Values"/>.</remarks>
internal static class IQ4Table
{
    /// <summary><see cref="Dequantize.IQ4Values"/> as bytes in both 128-bit lanes (a <c>vpshufb</c> lookup).</summary>
    public static Vector256<byte> Both
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector256.Create(
            (sbyte)-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113).AsByte();
    }

    /// <summary>The sizes |T[q]| of <see cref="Dequantize.IQ4Values"/> in both lanes (unsigned <c>vpmaddubsw</c> operands).</summary>
    public static Vector256<byte> Magnitudes
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector256.Create(
            (byte)127, 104, 83, 65, 49, 35, 22, 10, 1, 13, 25, 38, 53, 69, 89, 113,
            127, 104, 83, 65, 49, 35, 22, 10, 1, 13, 25, 38, 53, 69, 89, 113);
    }

    /// <summary>The table's values + 128 (1 … 241) as unsigned bytes in both lanes (<c>vpdpbusd</c> operands).</summary>
    public static Vector256<byte> Offset
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector256.Create(
            (byte)1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241,
            1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241);
    }
}

/// <summary>Q4_1 × Q8_1 (<see cref="Block32Kernel"/>).</summary>
internal readonly unsafe struct Q4_1Kernel : IQuantKernel
{
    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        Block32Kernel.Tile<TTile, TDot, Q4_1Codes>(a, row, r, b);
}

/// <summary>Q5_0 × Q8_0 (<see cref="Block32Kernel"/>).</summary>
internal readonly unsafe struct Q5_0Kernel : IQuantKernel
{
    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        Block32Kernel.Tile<TTile, TDot, Q5_0Codes>(a, row, r, b);
}

/// <summary>Q5_1 × Q8_1 (<see cref="Block32Kernel"/>).</summary>
internal readonly unsafe struct Q5_1Kernel : IQuantKernel
{
    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        Block32Kernel.Tile<TTile, TDot, Q5_1Codes>(a, row, r, b);
}

/// <summary>IQ4_NL × Q8_0 (<see cref="Block32Kernel"/>).</summary>
internal readonly unsafe struct IQ4_NLKernel : IQuantKernel
{
    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        Block32Kernel.Tile<TTile, TDot, IQ4_NLCodes>(a, row, r, b);
}
