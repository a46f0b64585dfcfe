using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q4_0 weights × Q8_0 activations: y = Σ_blocks d_w·d_x·Σ (n − 8)·q_x for the 4-bit codes n (ggml's
/// <c>vec_dot_q4_0_q8_0</c>).
/// </summary>
/// <remarks>
/// The vector paths give the same bits as llama.cpp's x86 CPU backend, which runs two operation orders: weights with a
/// multiple of 8 rows are repacked and each block's exact integer dot is scaled and accumulated as one float (there the
/// codes n are used unsigned, 0..15, and the offset is folded in as −8·Σq_x from the per-block activation sums); other
/// weights accumulate eight lanes of signed (n − 8)·q_x products per block, as <see cref="Q8_0Kernel"/> does.
/// </remarks>
internal readonly unsafe struct Q4_0Kernel : IQuantKernel
{
    private const int BlockBytes = 18;

    public static void Tile<TTile>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile
    {
        int cols = a.Cols, nb = cols / 32;
        sbyte* q0 = a.Q + (long)b * cols, q1 = q0 + cols, q2 = q1 + cols, q3 = q2 + cols;
        float* d0 = a.D + (long)b * nb, d1 = d0 + nb, d2 = d1 + nb, d3 = d2 + nb;
        int* s0 = a.Sums + (long)b * nb, s1 = s0 + nb, s2 = s1 + nb, s3 = s2 + nb;
        if (a.Path == KernelPath.Scalar)
        {
            QuantKernel.Store<TTile>(a, r, b,
                DotScalar(row, nb, q0, d0),
                TTile.Count > 1 ? DotScalar(row, nb, q1, d1) : 0,
                TTile.Count > 2 ? DotScalar(row, nb, q2, d2) : 0,
                TTile.Count > 3 ? DotScalar(row, nb, q3, d3) : 0);
            return;
        }

        bool vnni = KernelPaths.UsesVnni(a.Path);
        if (a.Rows % 8 == 0)
        {
            // NOTE: llama.cpp repacks Q4_0 weights with a multiple of 8 rows (q4_0_8x8, ggml_gemv/gemm_q4_0_8x8_q8_0):
            // each block's integer dot is summed exactly and then fused-multiply-added, as one float, with d_w·d_x into
            // a scalar accumulator per output, blocks in order. Matching that order keeps the results bit-identical.
            float r0 = 0, r1 = 0, r2 = 0, r3 = 0;
            // The block dots of eight blocks are reduced together (one horizontal-add tree instead of eight), then
            // the eight FMAs run in block order from a small stack buffer.
            byte* codes = stackalloc byte[8 * 32];
            float* tmp = stackalloc float[16];
            int i = 0;
            for (; i + 8 <= nb; i += 8)
            {
                byte* p = row + i * BlockBytes;
                for (int k = 0; k < 8; k++) Codes(p + k * BlockBytes).Store(codes + 32 * k);
                var dw = Vector256.Create(
                    Fp16.ToFloat(*(ushort*)p), Fp16.ToFloat(*(ushort*)(p + BlockBytes)),
                    Fp16.ToFloat(*(ushort*)(p + 2 * BlockBytes)), Fp16.ToFloat(*(ushort*)(p + 3 * BlockBytes)),
                    Fp16.ToFloat(*(ushort*)(p + 4 * BlockBytes)), Fp16.ToFloat(*(ushort*)(p + 5 * BlockBytes)),
                    Fp16.ToFloat(*(ushort*)(p + 6 * BlockBytes)), Fp16.ToFloat(*(ushort*)(p + 7 * BlockBytes)));
                r0 = Group8(r0, codes, q0 + 32 * i, s0 + i, dw, d0 + i, tmp, vnni);
                if (TTile.Count > 1) r1 = Group8(r1, codes, q1 + 32 * i, s1 + i, dw, d1 + i, tmp, vnni);
                if (TTile.Count > 2) r2 = Group8(r2, codes, q2 + 32 * i, s2 + i, dw, d2 + i, tmp, vnni);
                if (TTile.Count > 3) r3 = Group8(r3, codes, q3 + 32 * i, s3 + i, dw, d3 + i, tmp, vnni);
            }
            for (; i < nb; i++)
            {
                byte* p = row + i * BlockBytes;
                float dw = Fp16.ToFloat(*(ushort*)p);
                var u = Codes(p);
                r0 = MathF.FusedMultiplyAdd(BlockDot(u, q0 + 32 * i, s0[i], vnni), dw * d0[i], r0);
                if (TTile.Count > 1) r1 = MathF.FusedMultiplyAdd(BlockDot(u, q1 + 32 * i, s1[i], vnni), dw * d1[i], r1);
                if (TTile.Count > 2) r2 = MathF.FusedMultiplyAdd(BlockDot(u, q2 + 32 * i, s2[i], vnni), dw * d2[i], r2);
                if (TTile.Count > 3) r3 = MathF.FusedMultiplyAdd(BlockDot(u, q3 + 32 * i, s3[i], vnni), dw * d3[i], r3);
            }
            QuantKernel.Store<TTile>(a, r, b, r0, r1, r2, r3);
            return;
        }

        // NOTE: other Q4_0 weights run ggml's vec_dot_q4_0_q8_0 (or llamafile's tinyBLAS_Q0, same order): signed codes
        // n − 8, per block eight int32 lanes of four products each, converted to float and fused-multiply-added with
        // d_w·d_x into one 8-lane accumulator, lanes summed at the end as QuantKernel.HorizontalSum.
        var eight = Vector256.Create((sbyte)8);
        Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default;
        for (int i = 0; i < nb; i++)
        {
            byte* p = row + i * BlockBytes;
            float dw = Fp16.ToFloat(*(ushort*)p);
            var w = Codes(p).AsSByte() - eight;
            var uw = Avx2.Abs(w);
            e0 = SignedStep(e0, uw, w, q0 + 32 * i, dw * d0[i], vnni);
            if (TTile.Count > 1) e1 = SignedStep(e1, uw, w, q1 + 32 * i, dw * d1[i], vnni);
            if (TTile.Count > 2) e2 = SignedStep(e2, uw, w, q2 + 32 * i, dw * d2[i], vnni);
            if (TTile.Count > 3) e3 = SignedStep(e3, uw, w, q3 + 32 * i, dw * d3[i], vnni);
        }
        QuantKernel.Store<TTile>(a, r, b, QuantKernel.HorizontalSum(e0), QuantKernel.HorizontalSum(e1),
            QuantKernel.HorizontalSum(e2), QuantKernel.HorizontalSum(e3));
    }

    /// <summary>The 32 codes of the block at <paramref name="p"/> in value order: low nibbles, then high nibbles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Codes(byte* p)
    {
        var qs = Vector128.Load(p + 2);
        var mask = Vector128.Create((byte)0x0F);
        return Vector256.Create(qs & mask, Sse2.ShiftRightLogical(qs.AsUInt16(), 4).AsByte() & mask);
    }

    /// <summary>
    /// Accumulates eight consecutive blocks into <paramref name="acc"/> in order: acc = fma(dot_k, d_w,k·d_x,k, acc),
    /// each dot_k the exact integer block dot (codes unpacked at <paramref name="codes"/>, 32 bytes per block).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Group8(float acc, byte* codes, sbyte* x, int* xSums, Vector256<float> dw, float* dx, float* tmp, bool vnni)
    {
        var v0 = Lanes(codes, x, xSums[0], vnni);
        var v1 = Lanes(codes + 32, x + 32, xSums[1], vnni);
        var v2 = Lanes(codes + 64, x + 64, xSums[2], vnni);
        var v3 = Lanes(codes + 96, x + 96, xSums[3], vnni);
        var v4 = Lanes(codes + 128, x + 128, xSums[4], vnni);
        var v5 = Lanes(codes + 160, x + 160, xSums[5], vnni);
        var v6 = Lanes(codes + 192, x + 192, xSums[6], vnni);
        var v7 = Lanes(codes + 224, x + 224, xSums[7], vnni);
        // [v0(0..3) v1(0..3) v2(0..3) v3(0..3) | v0(4..7) v1(4..7) v2(4..7) v3(4..7)], each a sum of two lanes
        var h0123 = Avx2.HorizontalAdd(Avx2.HorizontalAdd(v0, v1), Avx2.HorizontalAdd(v2, v3));
        var h4567 = Avx2.HorizontalAdd(Avx2.HorizontalAdd(v4, v5), Avx2.HorizontalAdd(v6, v7));
        var sums = Avx2.Permute2x128(h0123, h4567, 0x20) + Avx2.Permute2x128(h0123, h4567, 0x31); // [dot_0 .. dot_7]
        Avx.ConvertToVector256Single(sums).Store(tmp);
        (dw * Vector256.Load(dx)).Store(tmp + 8); // f16 × f16 products: exact in f32
        for (int k = 0; k < 8; k++) acc = MathF.FusedMultiplyAdd(tmp[k], tmp[8 + k], acc);
        return acc;
    }

    /// <summary>The eight int32 lanes of one block's dot, −8·Σq_x seeded into lane 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Lanes(byte* codes, sbyte* x, int xSum, bool vnni) =>
        QuantKernel.DotU8S8(Vector256.CreateScalar(-8 * xSum), Vector256.Load(codes), Vector256.Load(x), vnni);

    /// <summary>Σ (n − 8)·q_x over one block, exact: the unsigned codes against the quants, −8·Σq_x seeded into lane 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float BlockDot(Vector256<byte> codes, sbyte* x, int xSum, bool vnni) =>
        Vector256.Sum(QuantKernel.DotU8S8(Vector256.CreateScalar(-8 * xSum), codes, Vector256.Load(x), vnni));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> SignedStep(Vector256<float> acc, Vector256<byte> absW, Vector256<sbyte> w, sbyte* x, float scale, bool vnni)
    {
        var signedX = Avx2.Sign(Vector256.Load(x), w);
        var dot = QuantKernel.DotU8S8(Vector256<int>.Zero, absW, signedX, vnni);
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), Vector256.Create(scale), acc);
    }

    private static float DotScalar(byte* row, int nb, sbyte* x, float* d)
    {
        float sum = 0;
        for (int i = 0; i < nb; i++)
        {
            byte* p = row + i * BlockBytes;
            byte* qs = p + 2;
            sbyte* xb = x + 32 * i;
            int dot = 0;
            for (int j = 0; j < 16; j++) dot += ((qs[j] & 0xF) - 8) * xb[j] + ((qs[j] >> 4) - 8) * xb[j + 16];
            sum += Fp16.ToFloat(*(ushort*)p) * d[i] * dot;
        }
        return sum;
    }
}
