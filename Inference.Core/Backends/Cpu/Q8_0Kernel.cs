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

    public static void Tile<TTile>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile
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

        bool vnni = KernelPaths.UsesVnni(a.Path);
        // NOTE: one accumulator per batch row, blocks in order, then QuantKernel.HorizontalSum: the exact f32 operation
        // order of ggml's AVX2 vec_dot_q8_0_q8_0 and llamafile's tinyBLAS_Q0 tiles, so that the results agree to the bit
        // (see ActivationQuantizer for why bits matter). Independent chains come from the batch tile instead.
        Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default;
        for (int i = 0; i < nb; i++)
        {
            byte* p = row + i * BlockBytes;
            float dw = Fp16.ToFloat(*(ushort*)p);
            var w = Vector256.Load((sbyte*)(p + 2));
            var u = Avx2.Abs(w);
            e0 = Step(e0, u, w, q0 + 32 * i, dw * d0[i], vnni);
            if (TTile.Count > 1) e1 = Step(e1, u, w, q1 + 32 * i, dw * d1[i], vnni);
            if (TTile.Count > 2) e2 = Step(e2, u, w, q2 + 32 * i, dw * d2[i], vnni);
            if (TTile.Count > 3) e3 = Step(e3, u, w, q3 + 32 * i, dw * d3[i], vnni);
        }
        QuantKernel.Store<TTile>(a, r, b, QuantKernel.HorizontalSum(e0), QuantKernel.HorizontalSum(e1),
            QuantKernel.HorizontalSum(e2), QuantKernel.HorizontalSum(e3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step(Vector256<float> acc, Vector256<byte> absW, Vector256<sbyte> w, sbyte* x, float scale, bool vnni)
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
            sbyte* w = (sbyte*)(p + 2);
            sbyte* xb = x + 32 * i;
            int dot = 0;
            for (int j = 0; j < 32; j++) dot += w[j] * xb[j];
            sum += Fp16.ToFloat(*(ushort*)p) * d[i] * dot;
        }
        return sum;
    }
}
