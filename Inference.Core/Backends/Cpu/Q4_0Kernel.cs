using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q4_0 weights × Q8_0 activations: y = Σ_blocks d_w·d_x·Σ (n − 8)·q_x for the 4-bit codes n (ggml's
/// <c>vec_dot_q4_0_q8_0</c>).
/// </summary>
/// <remarks>
/// <para>The codes n are used unsigned (0..15) and the offset is folded in as −8·Σq_x, precomputed per activation block
/// (<see cref="MatMulArgs.Sums"/>) and seeded into lane 0 of the integer accumulator.</para>
/// <para>NOTE: the products and the activation quantization are llama.cpp's, the f32 summation order is not.
/// llama.cpp's x86 backend repacks weights with a multiple of 8 rows (q4_0_8x8) and adds each block's exact integer dot,
/// as one float, to a scalar accumulator per output, blocks in order; other weights go through vec_dot_q4_0_q8_0 (eight
/// lanes of signed products per block, one 8-lane accumulator). Both orders matched llama.cpp to the bit but cost
/// 1.2–1.7× this kernel's time in our row-major layout, so this kernel keeps its own order: about 3e-7 relative L2 from
/// llama.cpp in the logits of the differential tests.</para>
/// </remarks>
internal readonly unsafe struct Q4_0Kernel : IQuantKernel
{
    private const int BlockBytes = 18;

    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa
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
                DotScalar(row, nb, q, qStep, d, batch),
                TTile.Count > 1 ? DotScalar(row, nb, q + 32, qStep, d + 1, batch) : 0,
                TTile.Count > 2 ? DotScalar(row, nb, q + 64, qStep, d + 2, batch) : 0,
                TTile.Count > 3 ? DotScalar(row, nb, q + 96, qStep, d + 3, batch) : 0);
            return;
        }

        Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default; // even blocks
        Vector256<float> o0 = default, o1 = default, o2 = default, o3 = default; // odd blocks
        int i = 0;
        for (; i + 2 <= nb; i += 2)
        {
            byte* p = row + i * BlockBytes;
            sbyte* qe = q + i * qStep, qo = qe + qStep;
            long ie = (long)i * batch, io = ie + batch;
            var dwe = Vector256.Create(Fp16.ToFloat(*(ushort*)p));
            var dwo = Vector256.Create(Fp16.ToFloat(*(ushort*)(p + BlockBytes)));
            var ue = Codes(p);
            var uo = Codes(p + BlockBytes);
            e0 = Step<TDot>(e0, ue, qe, s[ie], dwe, d + ie);
            o0 = Step<TDot>(o0, uo, qo, s[io], dwo, d + io);
            if (TTile.Count > 1)
            {
                e1 = Step<TDot>(e1, ue, qe + 32, s[ie + 1], dwe, d + ie + 1);
                o1 = Step<TDot>(o1, uo, qo + 32, s[io + 1], dwo, d + io + 1);
            }
            if (TTile.Count > 2)
            {
                e2 = Step<TDot>(e2, ue, qe + 64, s[ie + 2], dwe, d + ie + 2);
                o2 = Step<TDot>(o2, uo, qo + 64, s[io + 2], dwo, d + io + 2);
            }
            if (TTile.Count > 3)
            {
                e3 = Step<TDot>(e3, ue, qe + 96, s[ie + 3], dwe, d + ie + 3);
                o3 = Step<TDot>(o3, uo, qo + 96, s[io + 3], dwo, d + io + 3);
            }
        }
        if (i < nb)
        {
            byte* p = row + i * BlockBytes;
            sbyte* qe = q + i * qStep;
            long ie = (long)i * batch;
            var dw = Vector256.Create(Fp16.ToFloat(*(ushort*)p));
            var u = Codes(p);
            e0 = Step<TDot>(e0, u, qe, s[ie], dw, d + ie);
            if (TTile.Count > 1) e1 = Step<TDot>(e1, u, qe + 32, s[ie + 1], dw, d + ie + 1);
            if (TTile.Count > 2) e2 = Step<TDot>(e2, u, qe + 64, s[ie + 2], dw, d + ie + 2);
            if (TTile.Count > 3) e3 = Step<TDot>(e3, u, qe + 96, s[ie + 3], dw, d + ie + 3);
        }
        QuantKernel.Store<TTile>(a, r, b, Vector256.Sum(e0 + o0), Vector256.Sum(e1 + o1), Vector256.Sum(e2 + o2), Vector256.Sum(e3 + o3));
    }

    /// <summary>The 32 codes of the block at <paramref name="p"/> in value order: low nibbles, then high nibbles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Codes(byte* p)
    {
        var qs = Vector128.Load(p + 2);
        var mask = Vector128.Create((byte)0x0F);
        return Vector256.Create(qs & mask, Sse2.ShiftRightLogical(qs.AsUInt16(), 4).AsByte() & mask);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TDot>(Vector256<float> acc, Vector256<byte> codes, sbyte* x, int offset, Vector256<float> dw, float* dx)
        where TDot : IIntegerIsa
    {
        var dot = TDot.Dot(Vector256.CreateScalar(offset), codes, Vector256.Load(x));
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), dw * Vector256.Create(*dx), acc);
    }

    private static float DotScalar(byte* row, int nb, sbyte* x, long xStep, float* d, int dStep)
    {
        float sum = 0;
        for (int i = 0; i < nb; i++)
        {
            byte* p = row + i * BlockBytes;
            byte* qs = p + 2;
            sbyte* xb = x + i * xStep;
            int dot = 0;
            for (int j = 0; j < 16; j++) dot += ((qs[j] & 0xF) - 8) * xb[j] + ((qs[j] >> 4) - 8) * xb[j + 16];
            sum += Fp16.ToFloat(*(ushort*)p) * d[(long)i * dStep] * dot;
        }
        return sum;
    }
}
