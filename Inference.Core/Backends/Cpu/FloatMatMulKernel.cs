using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Inference.Backends.Cpu;

/// <summary>
/// Float-weight matmul (F32, F16, BF16): y[b, r] = Σ_c W[r, c]·x[b, c] with float32 accumulation; F16/BF16 weights are
/// widened in registers. Each weight row is streamed once per tile of up to four batch rows (and stays in L1 for the
/// next tile).
/// </summary>
internal static unsafe class FloatMatMulKernel
{
    /// <summary>Computes output rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>) for every batch row.</summary>
    public static void Rows<TW>(in MatMulArgs a, int rowStart, int rowEnd) where TW : IFloatWeights
    {
        for (int r = rowStart; r < rowEnd; r++)
        {
            byte* row = a.W + r * a.RowBytes;
            int b = 0;
            for (; b + 4 <= a.Batch; b += 4) Tile<TW, Tile4>(a, row, r, b);
            switch (a.Batch - b)
            {
                case 3: Tile<TW, Tile3>(a, row, r, b); break;
                case 2: Tile<TW, Tile2>(a, row, r, b); break;
                case 1: Tile<TW, Tile1>(a, row, r, b); break;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile<TW, TTile>(in MatMulArgs a, byte* row, int r, int b)
        where TW : IFloatWeights where TTile : IBatchTile
    {
        int cols = a.Cols;
        float* x0 = a.X + (long)b * cols;
        float s0, s1 = 0, s2 = 0, s3 = 0;
        if (a.Path == KernelPath.Vector512) Dot512<TW, TTile>(row, cols, x0, out s0, out s1, out s2, out s3);
        else if (a.Path != KernelPath.Scalar) Dot256<TW, TTile>(row, cols, x0, out s0, out s1, out s2, out s3);
        else
        {
            s0 = DotScalar<TW>(row, 0, cols, x0);
            if (TTile.Count > 1) s1 = DotScalar<TW>(row, 0, cols, x0 + cols);
            if (TTile.Count > 2) s2 = DotScalar<TW>(row, 0, cols, x0 + 2 * cols);
            if (TTile.Count > 3) s3 = DotScalar<TW>(row, 0, cols, x0 + 3 * cols);
        }
        float* y = a.Y + (long)b * a.Rows + r;
        y[0] = s0;
        if (TTile.Count > 1) y[a.Rows] = s1;
        if (TTile.Count > 2) y[2 * a.Rows] = s2;
        if (TTile.Count > 3) y[3 * a.Rows] = s3;
    }

    private static float DotScalar<TW>(byte* row, int start, int cols, float* x) where TW : IFloatWeights
    {
        float s = 0;
        for (int i = start; i < cols; i++) s += TW.Load1(row, i) * x[i];
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot512<TW, TTile>(byte* row, int cols, float* x0, out float s0, out float s1, out float s2, out float s3)
        where TW : IFloatWeights where TTile : IBatchTile
    {
        float* x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
        Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default;
        Vector512<float> a2 = default, b2 = default, a3 = default, b3 = default;
        int i = 0;
        for (; i + 32 <= cols; i += 32)
        {
            TW.Load32(row, i, out var lo, out var hi);
            a0 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x0 + i), a0);
            b0 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x0 + i + 16), b0);
            if (TTile.Count > 1)
            {
                a1 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x1 + i), a1);
                b1 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x1 + i + 16), b1);
            }
            if (TTile.Count > 2)
            {
                a2 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x2 + i), a2);
                b2 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x2 + i + 16), b2);
            }
            if (TTile.Count > 3)
            {
                a3 = Vector512.FusedMultiplyAdd(lo, Vector512.Load(x3 + i), a3);
                b3 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x3 + i + 16), b3);
            }
        }
        s0 = Vector512.Sum(a0 + b0) + DotScalar<TW>(row, i, cols, x0);
        s1 = TTile.Count > 1 ? Vector512.Sum(a1 + b1) + DotScalar<TW>(row, i, cols, x1) : 0;
        s2 = TTile.Count > 2 ? Vector512.Sum(a2 + b2) + DotScalar<TW>(row, i, cols, x2) : 0;
        s3 = TTile.Count > 3 ? Vector512.Sum(a3 + b3) + DotScalar<TW>(row, i, cols, x3) : 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot256<TW, TTile>(byte* row, int cols, float* x0, out float s0, out float s1, out float s2, out float s3)
        where TW : IFloatWeights where TTile : IBatchTile
    {
        float* x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
        Vector256<float> a0 = default, b0 = default, a1 = default, b1 = default;
        Vector256<float> a2 = default, b2 = default, a3 = default, b3 = default;
        int i = 0;
        for (; i + 16 <= cols; i += 16)
        {
            TW.Load16(row, i, out var lo, out var hi);
            a0 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x0 + i), a0);
            b0 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x0 + i + 8), b0);
            if (TTile.Count > 1)
            {
                a1 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x1 + i), a1);
                b1 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x1 + i + 8), b1);
            }
            if (TTile.Count > 2)
            {
                a2 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x2 + i), a2);
                b2 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x2 + i + 8), b2);
            }
            if (TTile.Count > 3)
            {
                a3 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x3 + i), a3);
                b3 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x3 + i + 8), b3);
            }
        }
        s0 = Vector256.Sum(a0 + b0) + DotScalar<TW>(row, i, cols, x0);
        s1 = TTile.Count > 1 ? Vector256.Sum(a1 + b1) + DotScalar<TW>(row, i, cols, x1) : 0;
        s2 = TTile.Count > 2 ? Vector256.Sum(a2 + b2) + DotScalar<TW>(row, i, cols, x2) : 0;
        s3 = TTile.Count > 3 ? Vector256.Sum(a3 + b3) + DotScalar<TW>(row, i, cols, x3) : 0;
    }
}
