using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q6_K weights × Q8_K activations (ggml's <c>vec_dot_q6_K_q8_K</c>): per super-block of 256,
/// y += d·d_x·(Σ_j sc_j·Σ q·q_x − 32·Σ_j sc_j·bsums_j) over the 16 sub-blocks j of 16 values, q the 6-bit codes.
/// </summary>
/// <remarks>
/// Codes are used unsigned (0..63, no pair of <c>vpmaddubsw</c> products saturates) and the −32 offset comes from the
/// Q8_K bsums; the signed 8-bit scales are applied with <c>vpmaddwd</c>.
/// </remarks>
internal readonly unsafe struct Q6_KKernel : IQuantKernel
{
    private const int BlockBytes = 210;

    // Chunk c (32 values = sub-blocks 2c and 2c+1) takes scale bytes [2c ×8, 2c+1 ×8]; chunks 0..7 of a super-block.
    private static readonly Vector128<byte>[] ScaleShuffles = BuildShuffles();

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

        var shuffles = ScaleShuffles;
        Vector128<byte> sh0 = shuffles[0], sh1 = shuffles[1], sh2 = shuffles[2], sh3 = shuffles[3];
        Vector128<byte> sh4 = shuffles[4], sh5 = shuffles[5], sh6 = shuffles[6], sh7 = shuffles[7];
        Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        Vector256<float> off0 = default, off1 = default, off2 = default, off3 = default;
        var low4 = Vector256.Create((byte)0x0F);
        var bits45 = Vector256.Create((byte)0x30);
        for (int s = 0; s < nsb; s++)
        {
            byte* p = row + s * BlockBytes;
            sbyte* qs = q + s * qStep;
            float* ds = dx + (long)s * batch;
            short* bs = bsums + s * bsStep;
            float d = Fp16.ToFloat(*(ushort*)(p + 208));
            var sc = Vector128.Load(p + 192);

            // Σ_j sc_j·bsums_j as 8 int lanes, times 32·d·d_x.
            var sc16 = Avx2.ConvertToVector256Int16(sc.AsSByte());
            off0 = OffsetStep(off0, bs + 0, sc16, 32 * d * ds[0]);
            if (TTile.Count > 1) off1 = OffsetStep(off1, bs + 16, sc16, 32 * d * ds[1]);
            if (TTile.Count > 2) off2 = OffsetStep(off2, bs + 32, sc16, 32 * d * ds[2]);
            if (TTile.Count > 3) off3 = OffsetStep(off3, bs + 48, sc16, 32 * d * ds[3]);

            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int n = 0; n < 2; n++)
            {
                var qlA = Vector256.Load(p + 64 * n);
                var qlB = Vector256.Load(p + 64 * n + 32);
                var qh = Vector256.Load(p + 128 + 32 * n).AsUInt16();
                // Values 0..31, 32..63, 64..95, 96..127 of this half; the 16-bit shifts leak bits across bytes only
                // into positions the masks clear.
                var c0 = (qlA & low4) | (Avx2.ShiftLeftLogical(qh, 4).AsByte() & bits45);
                var c1 = (qlB & low4) | (Avx2.ShiftLeftLogical(qh, 2).AsByte() & bits45);
                var c2 = (Avx2.ShiftRightLogical(qlA.AsUInt16(), 4).AsByte() & low4) | (qh.AsByte() & bits45);
                var c3 = (Avx2.ShiftRightLogical(qlB.AsUInt16(), 4).AsByte() & low4) | (Avx2.ShiftRightLogical(qh, 2).AsByte() & bits45);
                var s0 = Avx2.ConvertToVector256Int16(Ssse3.Shuffle(sc, n == 0 ? sh0 : sh4).AsSByte());
                var s1 = Avx2.ConvertToVector256Int16(Ssse3.Shuffle(sc, n == 0 ? sh1 : sh5).AsSByte());
                var s2 = Avx2.ConvertToVector256Int16(Ssse3.Shuffle(sc, n == 0 ? sh2 : sh6).AsSByte());
                var s3 = Avx2.ConvertToVector256Int16(Ssse3.Shuffle(sc, n == 0 ? sh3 : sh7).AsSByte());
                int off = 128 * n;
                i0 = HalfStep(i0, c0, c1, c2, c3, s0, s1, s2, s3, qs + off);
                if (TTile.Count > 1) i1 = HalfStep(i1, c0, c1, c2, c3, s0, s1, s2, s3, qs + 256 + off);
                if (TTile.Count > 2) i2 = HalfStep(i2, c0, c1, c2, c3, s0, s1, s2, s3, qs + 512 + off);
                if (TTile.Count > 3) i3 = HalfStep(i3, c0, c1, c2, c3, s0, s1, s2, s3, qs + 768 + off);
            }
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), Vector256.Create(d * ds[0]), acc0);
            if (TTile.Count > 1) acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), Vector256.Create(d * ds[1]), acc1);
            if (TTile.Count > 2) acc2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i2), Vector256.Create(d * ds[2]), acc2);
            if (TTile.Count > 3) acc3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i3), Vector256.Create(d * ds[3]), acc3);
        }
        QuantKernel.Store<TTile>(a, r, b, Vector256.Sum(acc0 - off0), Vector256.Sum(acc1 - off1), Vector256.Sum(acc2 - off2), Vector256.Sum(acc3 - off3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> OffsetStep(Vector256<float> acc, short* bsums, Vector256<short> sc16, float scale) =>
        Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Vector256.Load(bsums), sc16)), Vector256.Create(scale), acc);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> HalfStep(Vector256<int> acc,
        Vector256<byte> c0, Vector256<byte> c1, Vector256<byte> c2, Vector256<byte> c3,
        Vector256<short> s0, Vector256<short> s1, Vector256<short> s2, Vector256<short> s3, sbyte* x)
    {
        var p0 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(c0, Vector256.Load(x)), s0);
        var p1 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(c1, Vector256.Load(x + 32)), s1);
        var p2 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(c2, Vector256.Load(x + 64)), s2);
        var p3 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(c3, Vector256.Load(x + 96)), s3);
        return acc + ((p0 + p1) + (p2 + p3));
    }

    private static Vector128<byte>[] BuildShuffles()
    {
        var result = new Vector128<byte>[8];
        var idx = new byte[16];
        for (int c = 0; c < 8; c++)
        {
            for (int i = 0; i < 16; i++) idx[i] = (byte)(2 * c + i / 8);
            result[c] = Vector128.Create(idx);
        }
        return result;
    }

    private static float DotScalar(byte* row, int nsb, sbyte* x, long xStep, float* dx, int dStep, short* bsums, long bsStep)
    {
        float sum = 0;
        for (int s = 0; s < nsb; s++)
        {
            byte* p = row + s * BlockBytes;
            byte* ql = p;
            byte* qh = p + 128;
            sbyte* sc = (sbyte*)(p + 192);
            sbyte* xs = x + s * xStep;
            short* bs = bsums + s * bsStep;
            int sumi = 0, offset = 0;
            for (int n = 0; n < 2; n++)
            {
                for (int l = 0; l < 32; l++)
                {
                    int h = qh[32 * n + l];
                    int c0 = (ql[64 * n + l] & 0xF) | ((h & 3) << 4);
                    int c1 = (ql[64 * n + l + 32] & 0xF) | (((h >> 2) & 3) << 4);
                    int c2 = (ql[64 * n + l] >> 4) | (((h >> 4) & 3) << 4);
                    int c3 = (ql[64 * n + l + 32] >> 4) | (((h >> 6) & 3) << 4);
                    int j = 8 * n + l / 16;
                    sbyte* xh = xs + 128 * n + l;
                    sumi += sc[j] * c0 * xh[0] + sc[j + 2] * c1 * xh[32] + sc[j + 4] * c2 * xh[64] + sc[j + 6] * c3 * xh[96];
                }
            }
            for (int j = 0; j < 16; j++) offset += sc[j] * bs[j];
            sum += Fp16.ToFloat(*(ushort*)(p + 208)) * dx[(long)s * dStep] * (sumi - 32 * offset);
        }
        return sum;
    }
}
