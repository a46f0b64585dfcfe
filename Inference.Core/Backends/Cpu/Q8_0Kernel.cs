using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Q8_0 weights × Q8_0 activations: y = Σ_blocks d_w·d_x·Σ q_w·q_x (ggml's <c>vec_dot_q8_0_q8_0</c>).
/// </summary>
/// <remarks>
/// The signed × signed byte product goes through the unsigned × signed instructions as |w| · (x·sign(w)). The vector
/// paths give the same bits as llama.cpp's x86 CPU backend (with <see cref="ActivationQuantizer"/>'s quantization):
/// per block the eight int32 lanes are converted to float and fused-multiply-added with d_w·d_x into one 8-lane
/// accumulator, blocks in order, and the lanes are summed as <see cref="QuantKernel.HorizontalSum"/>.
/// </remarks>
internal readonly unsafe struct Q8_0Kernel : IQuantKernel
{
    private const int BlockBytes = 34;

    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa
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

        // NOTE: one accumulator per batch row, blocks in order, then QuantKernel.HorizontalSum: the exact f32 operation
        // order of ggml's AVX2 vec_dot_q8_0_q8_0 and llamafile's tinyBLAS_Q0 tiles, so that the results agree to the bit
        // (see ActivationQuantizer for why bits matter). Independent chains come from the batch tile instead.
        Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default;
        for (int i = 0; i < nb; i++)
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
        QuantKernel.Store<TTile>(a, r, b, QuantKernel.HorizontalSum(e0), QuantKernel.HorizontalSum(e1),
            QuantKernel.HorizontalSum(e2), QuantKernel.HorizontalSum(e3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TDot>(Vector256<float> acc, Vector256<byte> absW, Vector256<sbyte> w, sbyte* x, Vector256<float> dw, float* dx)
        where TDot : IIntegerIsa
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
