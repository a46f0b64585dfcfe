using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q8_0 weights × Q8_0 activations: y = Σ_blocks d_w·d_x·Σ q_w·q_x (ggml's <c>vec_dot_q8_0_q8_0</c>).
/// </summary>
/// <remarks>
/// The signed × signed byte product goes through the unsigned × signed instructions as |w| · (x·sign(w)).
/// </remarks>
internal readonly unsafe struct Q8_0Kernel : IQuantKernel
{
    private const int BlockBytes = 34;

    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IDotU8S8
    {
        int cols = a.Cols, nb = cols / 32;
        sbyte* q0 = a.Q + (long)b * cols, q1 = q0 + cols, q2 = q1 + cols, q3 = q2 + cols;
        float* d0 = a.D + (long)b * nb, d1 = d0 + nb, d2 = d1 + nb, d3 = d2 + nb;
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
            var we = Vector256.Load((sbyte*)(p + 2));
            var wo = Vector256.Load((sbyte*)(p + BlockBytes + 2));
            var ue = Avx2.Abs(we);
            var uo = Avx2.Abs(wo);
            e0 = Step<TDot>(e0, ue, we, q0 + 32 * i, dwe * d0[i]);
            o0 = Step<TDot>(o0, uo, wo, q0 + 32 * i + 32, dwo * d0[i + 1]);
            if (TTile.Count > 1)
            {
                e1 = Step<TDot>(e1, ue, we, q1 + 32 * i, dwe * d1[i]);
                o1 = Step<TDot>(o1, uo, wo, q1 + 32 * i + 32, dwo * d1[i + 1]);
            }
            if (TTile.Count > 2)
            {
                e2 = Step<TDot>(e2, ue, we, q2 + 32 * i, dwe * d2[i]);
                o2 = Step<TDot>(o2, uo, wo, q2 + 32 * i + 32, dwo * d2[i + 1]);
            }
            if (TTile.Count > 3)
            {
                e3 = Step<TDot>(e3, ue, we, q3 + 32 * i, dwe * d3[i]);
                o3 = Step<TDot>(o3, uo, wo, q3 + 32 * i + 32, dwo * d3[i + 1]);
            }
        }
        if (i < nb)
        {
            byte* p = row + i * BlockBytes;
            float dw = Fp16.ToFloat(*(ushort*)p);
            var w = Vector256.Load((sbyte*)(p + 2));
            var u = Avx2.Abs(w);
            e0 = Step<TDot>(e0, u, w, q0 + 32 * i, dw * d0[i]);
            if (TTile.Count > 1) e1 = Step<TDot>(e1, u, w, q1 + 32 * i, dw * d1[i]);
            if (TTile.Count > 2) e2 = Step<TDot>(e2, u, w, q2 + 32 * i, dw * d2[i]);
            if (TTile.Count > 3) e3 = Step<TDot>(e3, u, w, q3 + 32 * i, dw * d3[i]);
        }
        QuantKernel.Store<TTile>(a, r, b, Vector256.Sum(e0 + o0), Vector256.Sum(e1 + o1), Vector256.Sum(e2 + o2), Vector256.Sum(e3 + o3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TDot>(Vector256<float> acc, Vector256<byte> absW, Vector256<sbyte> w, sbyte* x, float scale)
        where TDot : IDotU8S8
    {
        var signedX = Avx2.Sign(Vector256.Load(x), w);
        var dot = TDot.Dot(Vector256<int>.Zero, absW, signedX);
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), Vector256.Create(scale), acc);
    }

    private static float DotScalar(byte* row, int nb, sbyte* x, float* d)
    {
        float sum = 0;
        for (int i = 0; i < nb; i++)
        {
            byte* p = row + i * BlockBytes;
            sbyte* w = (sbyte*)(p + 2);
            sbyte* xb = x + 32 * i;
            int dot = 0;
            for (int j = 0; j < 32; j++) dot += w[j] * xb[j];
            sum += Fp16.ToFloat(*(ushort*)p) * d[i] * dot;
        }
        return sum;
    }
}
