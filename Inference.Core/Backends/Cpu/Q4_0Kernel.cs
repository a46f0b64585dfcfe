using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q4_0 weights × Q8_0 activations: y = Σ_blocks d_w·d_x·Σ (n − 8)·q_x for the 4-bit codes n (ggml's
/// <c>vec_dot_q4_0_q8_0</c>).
/// </summary>
/// <remarks>
/// The codes n are used unsigned (0..15) and the offset is folded in as −8·Σq_x, taken from the per-block activation
/// sums and seeded into lane 0 of the integer accumulator.
/// </remarks>
internal readonly unsafe struct Q4_0Kernel : IQuantKernel
{
    private const int BlockBytes = 18;

    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IDotU8S8
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

        Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default; // even blocks
        Vector256<float> o0 = default, o1 = default, o2 = default, o3 = default; // odd blocks
        int i = 0;
        for (; i + 2 <= nb; i += 2)
        {
            byte* p = row + i * BlockBytes;
            float dwe = Fp16.ToFloat(*(ushort*)p), dwo = Fp16.ToFloat(*(ushort*)(p + BlockBytes));
            var ue = Codes(p);
            var uo = Codes(p + BlockBytes);
            e0 = Step<TDot>(e0, ue, q0 + 32 * i, s0[i], dwe * d0[i]);
            o0 = Step<TDot>(o0, uo, q0 + 32 * i + 32, s0[i + 1], dwo * d0[i + 1]);
            if (TTile.Count > 1)
            {
                e1 = Step<TDot>(e1, ue, q1 + 32 * i, s1[i], dwe * d1[i]);
                o1 = Step<TDot>(o1, uo, q1 + 32 * i + 32, s1[i + 1], dwo * d1[i + 1]);
            }
            if (TTile.Count > 2)
            {
                e2 = Step<TDot>(e2, ue, q2 + 32 * i, s2[i], dwe * d2[i]);
                o2 = Step<TDot>(o2, uo, q2 + 32 * i + 32, s2[i + 1], dwo * d2[i + 1]);
            }
            if (TTile.Count > 3)
            {
                e3 = Step<TDot>(e3, ue, q3 + 32 * i, s3[i], dwe * d3[i]);
                o3 = Step<TDot>(o3, uo, q3 + 32 * i + 32, s3[i + 1], dwo * d3[i + 1]);
            }
        }
        if (i < nb)
        {
            byte* p = row + i * BlockBytes;
            float dw = Fp16.ToFloat(*(ushort*)p);
            var u = Codes(p);
            e0 = Step<TDot>(e0, u, q0 + 32 * i, s0[i], dw * d0[i]);
            if (TTile.Count > 1) e1 = Step<TDot>(e1, u, q1 + 32 * i, s1[i], dw * d1[i]);
            if (TTile.Count > 2) e2 = Step<TDot>(e2, u, q2 + 32 * i, s2[i], dw * d2[i]);
            if (TTile.Count > 3) e3 = Step<TDot>(e3, u, q3 + 32 * i, s3[i], dw * d3[i]);
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
    private static Vector256<float> Step<TDot>(Vector256<float> acc, Vector256<byte> codes, sbyte* x, int xSum, float scale)
        where TDot : IDotU8S8
    {
        var dot = TDot.Dot(Vector256.CreateScalar(-8 * xSum), codes, Vector256.Load(x));
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
