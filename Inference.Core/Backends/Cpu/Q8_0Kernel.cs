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
        int nb = a.Cols / 32, batch = a.Batch;
        // Block i of batch row b + t: quants at q + i·qStep + 32t, scale at d[i·batch + t].
        sbyte* q = a.Q + 32L * b;
        float* d = a.D + b;
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
            float* de = d + (long)i * batch, dO = de + batch;
            var dwe = Vector256.Create(Fp16.ToFloat(*(ushort*)p));
            var dwo = Vector256.Create(Fp16.ToFloat(*(ushort*)(p + BlockBytes)));
            var we = Vector256.Load((sbyte*)(p + 2));
            var wo = Vector256.Load((sbyte*)(p + BlockBytes + 2));
            var ue = Avx2.Abs(we);
            var uo = Avx2.Abs(wo);
            e0 = Step<TDot>(e0, ue, we, qe, dwe, de);
            o0 = Step<TDot>(o0, uo, wo, qo, dwo, dO);
            if (TTile.Count > 1)
            {
                e1 = Step<TDot>(e1, ue, we, qe + 32, dwe, de + 1);
                o1 = Step<TDot>(o1, uo, wo, qo + 32, dwo, dO + 1);
            }
            if (TTile.Count > 2)
            {
                e2 = Step<TDot>(e2, ue, we, qe + 64, dwe, de + 2);
                o2 = Step<TDot>(o2, uo, wo, qo + 64, dwo, dO + 2);
            }
            if (TTile.Count > 3)
            {
                e3 = Step<TDot>(e3, ue, we, qe + 96, dwe, de + 3);
                o3 = Step<TDot>(o3, uo, wo, qo + 96, dwo, dO + 3);
            }
        }
        if (i < nb)
        {
            byte* p = row + i * BlockBytes;
            sbyte* qe = q + i * qStep;
            float* de = d + (long)i * batch;
            var dw = Vector256.Create(Fp16.ToFloat(*(ushort*)p));
            var w = Vector256.Load((sbyte*)(p + 2));
            var u = Avx2.Abs(w);
            e0 = Step<TDot>(e0, u, w, qe, dw, de);
            if (TTile.Count > 1) e1 = Step<TDot>(e1, u, w, qe + 32, dw, de + 1);
            if (TTile.Count > 2) e2 = Step<TDot>(e2, u, w, qe + 64, dw, de + 2);
            if (TTile.Count > 3) e3 = Step<TDot>(e3, u, w, qe + 96, dw, de + 3);
        }
        QuantKernel.Store<TTile>(a, r, b, Vector256.Sum(e0 + o0), Vector256.Sum(e1 + o1), Vector256.Sum(e2 + o2), Vector256.Sum(e3 + o3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TDot>(Vector256<float> acc, Vector256<byte> absW, Vector256<sbyte> w, sbyte* x, Vector256<float> dw, float* dx)
        where TDot : IDotU8S8
    {
        var signedX = Avx2.Sign(Vector256.Load(x), w);
        var dot = TDot.Dot(Vector256<int>.Zero, absW, signedX);
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), dw * Vector256.Create(*dx), acc);
    }

    private static float DotScalar(byte* row, int nb, sbyte* x, long xStep, float* d, int dStep)
    {
        float sum = 0;
        for (int i = 0; i < nb; i++)
        {
            byte* p = row + i * BlockBytes;
            sbyte* w = (sbyte*)(p + 2);
            sbyte* xb = x + i * xStep;
            int dot = 0;
            for (int j = 0; j < 32; j++) dot += w[j] * xb[j];
            sum += Fp16.ToFloat(*(ushort*)p) * d[(long)i * dStep] * dot;
        }
        return sum;
    }
}
