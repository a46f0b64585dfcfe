using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q5_K weights × Q8_K activations (ggml's <c>vec_dot_q5_K_q8_K</c>): <see cref="Q4_KKernel"/>'s sums with five-bit codes,
/// the fifth bit of sub-blocks 2k and 2k + 1 being bits 2k and 2k + 1 of the block's qh bytes:
/// y += d_x·(d·Σ_j sc_j·Σ q·q_x − dmin·Σ_j m_j·Σ q_x).
/// </summary>
/// <remarks>
/// Codes ≤ 31, so no <c>vpmaddubsw</c> pair saturates (2 · 31 · 127); the scale goes in with <c>vpmaddwd</c> per
/// sub-block as in <see cref="Q4_KKernel"/>. The integer sums are exact, so the AVX2 and scalar paths agree to f32
/// rounding of the per-super-block scaling.
/// </remarks>
internal readonly unsafe struct Q5_KKernel : IQuantKernel
{
    private const int BlockBytes = 176;
    private const int ScalesOffset = 4;
    private const int HighBitsOffset = 16;
    private const int CodesOffset = 48;

    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa
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
                DotScalar(row, nsb, q, qStep, dx, batch, bsums, bsStep),
                TTile.Count > 1 ? DotScalar(row, nsb, q + 256, qStep, dx + 1, batch, bsums + 16, bsStep) : 0,
                TTile.Count > 2 ? DotScalar(row, nsb, q + 512, qStep, dx + 2, batch, bsums + 32, bsStep) : 0,
                TTile.Count > 3 ? DotScalar(row, nsb, q + 768, qStep, dx + 3, batch, bsums + 48, bsStep) : 0);
            return;
        }

        Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        Vector256<float> min0 = default, min1 = default, min2 = default, min3 = default;
        var nibble = Vector256.Create((byte)0x0F);
        var bit4 = Vector256.Create((byte)0x10);
        for (int s = 0; s < nsb; s++)
        {
            byte* p = row + s * BlockBytes;
            sbyte* qs = q + s * qStep;
            float* ds = dx + (long)s * batch;
            short* bs = bsums + s * bsStep;
            float d = Fp16.ToFloat(*(ushort*)p), dmin = Fp16.ToFloat(*(ushort*)(p + 2));
            Q4_KKernel.UnpackScales(p + ScalesOffset, out ulong scales, out ulong mins);

            // Σ_j m_j·(bsums[2j] + bsums[2j+1]) as 8 int lanes.
            var mins16 = Avx2.ConvertToVector256Int16(Ssse3.Shuffle(Vector128.CreateScalar(mins).AsByte(), Q4_KKernel.DuplicateBytes));
            min0 = Q4_KKernel.MinStep(min0, bs + 0, mins16, dmin * ds[0]);
            if (TTile.Count > 1) min1 = Q4_KKernel.MinStep(min1, bs + 16, mins16, dmin * ds[1]);
            if (TTile.Count > 2) min2 = Q4_KKernel.MinStep(min2, bs + 32, mins16, dmin * ds[2]);
            if (TTile.Count > 3) min3 = Q4_KKernel.MinStep(min3, bs + 48, mins16, dmin * ds[3]);

            // The 8 scales as shorts in both 128-bit lanes; a byte shuffle with pick = [2j, 2j+1, …] broadcasts scale j.
            var sc8 = Sse41.ConvertToVector128Int16(Vector128.CreateScalar(scales).AsByte()).AsByte();
            var scalesBoth = Vector256.Create(sc8, sc8);
            var pick = Vector256.Create((short)0x0100).AsByte();
            var qh = Vector256.Load(p + HighBitsOffset).AsUInt16();
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int k = 0; k < 4; k++)
            {
                // 64 values: low nibbles are sub-block 2k, high nibbles sub-block 2k+1; their fifth bits are bits 2k and
                // 2k + 1 of qh, bits 0 and 1 of qh >> 2k, moved to bit 4 (the 16-bit shifts leak bits across bytes only
                // where the mask clears them, or above bit 1 of a byte).
                var qv = Vector256.Load(p + CodesOffset + 32 * k);
                var lo = (qv & nibble) | (Avx2.ShiftLeftLogical(qh, 4).AsByte() & bit4);
                var hi = (Avx2.ShiftRightLogical(qv.AsUInt16(), 4).AsByte() & nibble) | (Avx2.ShiftLeftLogical(qh, 3).AsByte() & bit4);
                qh = Avx2.ShiftRightLogical(qh, 2);
                var scLo = Avx2.Shuffle(scalesBoth, pick).AsInt16();
                pick += Vector256.Create((byte)2);
                var scHi = Avx2.Shuffle(scalesBoth, pick).AsInt16();
                pick += Vector256.Create((byte)2);
                int off = 64 * k;
                i0 = Q4_KKernel.SubStep(i0, lo, hi, qs + off, scLo, scHi);
                if (TTile.Count > 1) i1 = Q4_KKernel.SubStep(i1, lo, hi, qs + 256 + off, scLo, scHi);
                if (TTile.Count > 2) i2 = Q4_KKernel.SubStep(i2, lo, hi, qs + 512 + off, scLo, scHi);
                if (TTile.Count > 3) i3 = Q4_KKernel.SubStep(i3, lo, hi, qs + 768 + off, scLo, scHi);
            }
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), Vector256.Create(d * ds[0]), acc0);
            if (TTile.Count > 1) acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), Vector256.Create(d * ds[1]), acc1);
            if (TTile.Count > 2) acc2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i2), Vector256.Create(d * ds[2]), acc2);
            if (TTile.Count > 3) acc3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i3), Vector256.Create(d * ds[3]), acc3);
        }
        QuantKernel.Store<TTile>(a, r, b, Vector256.Sum(acc0 - min0), Vector256.Sum(acc1 - min1), Vector256.Sum(acc2 - min2), Vector256.Sum(acc3 - min3));
    }

    private static float DotScalar(byte* row, int nsb, sbyte* x, long xStep, float* dx, int dStep, short* bsums, long bsStep)
    {
        float sum = 0;
        for (int s = 0; s < nsb; s++)
        {
            byte* p = row + s * BlockBytes;
            var packed = new ReadOnlySpan<byte>(p + ScalesOffset, 12);
            byte* qh = p + HighBitsOffset;
            byte* qs = p + CodesOffset;
            sbyte* xs = x + s * xStep;
            short* bs = bsums + s * bsStep;
            int sumi = 0, sumMins = 0;
            for (int j = 0; j < 8; j++)
            {
                Dequantize.ScaleMinK4(j, packed, out int sc, out int m);
                byte* q = qs + 32 * (j / 2);
                int shift = 4 * (j % 2);
                int dot = 0;
                for (int l = 0; l < 32; l++) dot += (((q[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4)) * xs[32 * j + l];
                sumi += sc * dot;
                sumMins += m * (bs[2 * j] + bs[2 * j + 1]);
            }
            sum += dx[(long)s * dStep] * (Fp16.ToFloat(*(ushort*)p) * sumi - Fp16.ToFloat(*(ushort*)(p + 2)) * sumMins);
        }
        return sum;
    }
}
