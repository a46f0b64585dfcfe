using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>An integer-dot matmul kernel for one weight type: computes one weight row against a tile of batch rows.</summary>
internal unsafe interface IQuantKernel
{
    /// <summary>Writes y[b + t, r] for t &lt; TTile.Count from weight row <paramref name="row"/>.</summary>
    static abstract void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa;
}

/// <summary>Drives an <see cref="IQuantKernel"/> over a slice of weight rows, tiling the batch by four.</summary>
internal static unsafe class QuantKernel
{
    /// <summary>Computes output rows [<paramref name="rowStart"/>, <paramref name="rowEnd"/>) for every batch row.</summary>
    public static void Rows<TKernel>(in MatMulArgs a, int rowStart, int rowEnd) where TKernel : IQuantKernel
    {
        switch (KernelPaths.Steps(a.Path))
        {
            case IntegerSteps.Vnni: Rows<TKernel, WithVnni>(a, rowStart, rowEnd); break;
            case IntegerSteps.EmulatedVnni: Rows<TKernel, EmulatedVnni>(a, rowStart, rowEnd); break;
            default: Rows<TKernel, WithoutVnni>(a, rowStart, rowEnd); break;
        }
    }

    private static void Rows<TKernel, TDot>(in MatMulArgs a, int rowStart, int rowEnd) where TKernel : IQuantKernel where TDot : IIntegerIsa
    {
        for (int r = rowStart; r < rowEnd; r++)
        {
            byte* row = a.W + r * a.RowBytes;
            int b = 0;
            for (; b + 4 <= a.Batch; b += 4) TKernel.Tile<Tile4, TDot>(a, row, r, b);
            switch (a.Batch - b)
            {
                case 3: TKernel.Tile<Tile3, TDot>(a, row, r, b); break;
                case 2: TKernel.Tile<Tile2, TDot>(a, row, r, b); break;
                case 1: TKernel.Tile<Tile1, TDot>(a, row, r, b); break;
            }
        }
    }

    /// <summary>Stores the tile's results into y[b + t, r].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store<TTile>(in MatMulArgs a, int r, int b, float s0, float s1, float s2, float s3) where TTile : IBatchTile
    {
        float* y = a.Y + (long)b * a.Rows + r;
        y[0] = s0;
        if (TTile.Count > 1) y[a.Rows] = s1;
        if (TTile.Count > 2) y[2 * a.Rows] = s2;
        if (TTile.Count > 3) y[3 * a.Rows] = s3;
    }

    /// <summary>
    /// The sum of the eight lanes as ggml's <c>hsum_float_8</c> adds them: upper half + lower half, then the two
    /// 64-bit halves, then the two remaining lanes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float HorizontalSum(Vector256<float> v)
    {
        var s = Sse.Add(v.GetUpper(), v.GetLower());
        s = Sse.Add(s, Sse.MoveHighToLow(s, s));
        s = Sse.AddScalar(s, Sse3.MoveHighAndDuplicate(s));
        return s.ToScalar();
    }
}
