using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>
/// The gate/up products of a gated feed-forward with the activation in their epilogue: <c>y[b, r] = act(Σ_c G[r, c] ·
/// x[b, c]) · Σ_c U[r, c] · x[b, c]</c> in one launch, instead of two products and an elementwise kernel.
/// </summary>
/// <remarks>
/// The row kernels' structure (<see cref="MatMulF32"/> …): the lanes of a row stream its gate row, then its up row,
/// each with the plain kernel's loads, accumulation order and warp reduction, so <c>g</c> and <c>u</c> carry the
/// unfused products' bits and the activation is <see cref="SwiGluKernels"/>' expression: on one accelerator the output
/// equals the three-kernel path bit for bit, and a row's bits do not depend on its batch.
/// </remarks>
public static partial class MatMulKernels
{
    /// <summary>F32 gate and up weights. Grid and constraints of <see cref="MatMulF32"/>.</summary>
    /// <typeparam name="TAct">The gated activation.</typeparam>
    /// <param name="gate">Gate weights, <c>[rows, cols]</c>, 16-byte aligned.</param>
    /// <param name="up">Up weights, same shape and alignment.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>, 16-byte aligned.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 4.</param>
    /// <param name="batch">Input rows.</param>
    /// <param name="lanesPerRow">Threads per row (as <see cref="MatMulF32"/>).</param>
    public static void GluF32<TAct>(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch, int lanesPerRow)
        where TAct : struct, IGluActivation
    {
        var p = RowPass.Create(rows, cols, batch, lanesPerRow, cols >> 2);
        var g = gate.Cast<Vec4>();
        var u = up.Cast<Vec4>();
        var xv = x.Cast<Vec4>();
        for (int b0 = p.FirstItem; b0 < p.EndItem; b0 += BatchTile)
        {
            switch (p.EndItem - b0)
            {
                case 1: FinishGlu<Tile1, TAct>(p, F32Acc<Tile1>(p, g, xv, b0), F32Acc<Tile1>(p, u, xv, b0), y, b0); break;
                case 2: FinishGlu<Tile2, TAct>(p, F32Acc<Tile2>(p, g, xv, b0), F32Acc<Tile2>(p, u, xv, b0), y, b0); break;
                case 3: FinishGlu<Tile3, TAct>(p, F32Acc<Tile3>(p, g, xv, b0), F32Acc<Tile3>(p, u, xv, b0), y, b0); break;
                default: FinishGlu<Tile4, TAct>(p, F32Acc<Tile4>(p, g, xv, b0), F32Acc<Tile4>(p, u, xv, b0), y, b0); break;
            }
        }
    }

    /// <summary>F16 gate and up weights. Grid and constraints of <see cref="MatMulF16"/>.</summary>
    /// <typeparam name="TAct">The gated activation.</typeparam>
    /// <param name="gate">Gate weights, <c>[rows, cols]</c>, 16-byte aligned.</param>
    /// <param name="up">Up weights, same shape and alignment.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>, 16-byte aligned.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 8.</param>
    /// <param name="batch">Input rows.</param>
    /// <param name="lanesPerRow">Threads per row (as <see cref="MatMulF16"/>).</param>
    public static void GluF16<TAct>(ArrayView<ILGPU.Half> gate, ArrayView<ILGPU.Half> up, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch, int lanesPerRow)
        where TAct : struct, IGluActivation
    {
        var p = RowPass.Create(rows, cols, batch, lanesPerRow, cols >> 3);
        var g = gate.Cast<Bits128>();
        var u = up.Cast<Bits128>();
        var xv = x.Cast<Vec4>();
        for (int b0 = p.FirstItem; b0 < p.EndItem; b0 += BatchTile)
        {
            switch (p.EndItem - b0)
            {
                case 1: FinishGlu<Tile1, TAct>(p, F16Acc<Tile1>(p, g, xv, b0), F16Acc<Tile1>(p, u, xv, b0), y, b0); break;
                case 2: FinishGlu<Tile2, TAct>(p, F16Acc<Tile2>(p, g, xv, b0), F16Acc<Tile2>(p, u, xv, b0), y, b0); break;
                case 3: FinishGlu<Tile3, TAct>(p, F16Acc<Tile3>(p, g, xv, b0), F16Acc<Tile3>(p, u, xv, b0), y, b0); break;
                default: FinishGlu<Tile4, TAct>(p, F16Acc<Tile4>(p, g, xv, b0), F16Acc<Tile4>(p, u, xv, b0), y, b0); break;
            }
        }
    }

    /// <summary>Q8_0 gate and up weights. Grid and constraints of <see cref="MatMulQ8_0"/>.</summary>
    /// <typeparam name="TAct">The gated activation.</typeparam>
    /// <param name="gate">Gate weights' raw bytes as 16-bit words, <c>[rows, cols / 32, 17]</c>.</param>
    /// <param name="up">Up weights, same shape.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>, 16-byte aligned.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of 32.</param>
    /// <param name="batch">Input rows.</param>
    /// <param name="lanesPerRow">Threads per row (as <see cref="MatMulQ8_0"/>).</param>
    public static void GluQ8_0<TAct>(ArrayView<ushort> gate, ArrayView<ushort> up, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch, int lanesPerRow)
        where TAct : struct, IGluActivation
    {
        var p = RowPass.Create(rows, cols, batch, lanesPerRow, cols >> 3);
        var xv = x.Cast<Vec4>();
        for (int b0 = p.FirstItem; b0 < p.EndItem; b0 += BatchTile)
        {
            switch (p.EndItem - b0)
            {
                case 1: FinishGlu<Tile1, TAct>(p, Q8Acc<Tile1>(p, gate, xv, b0), Q8Acc<Tile1>(p, up, xv, b0), y, b0); break;
                case 2: FinishGlu<Tile2, TAct>(p, Q8Acc<Tile2>(p, gate, xv, b0), Q8Acc<Tile2>(p, up, xv, b0), y, b0); break;
                case 3: FinishGlu<Tile3, TAct>(p, Q8Acc<Tile3>(p, gate, xv, b0), Q8Acc<Tile3>(p, up, xv, b0), y, b0); break;
                default: FinishGlu<Tile4, TAct>(p, Q8Acc<Tile4>(p, gate, xv, b0), Q8Acc<Tile4>(p, up, xv, b0), y, b0); break;
            }
        }
    }

    /// <summary>Gate and up weights in a GGUF block type. Grid and constraints of <see cref="MatMulBlocks{TBlock}"/>.</summary>
    /// <typeparam name="TBlock">The block type.</typeparam>
    /// <typeparam name="TAct">The gated activation.</typeparam>
    /// <param name="gate">Gate weights' raw blocks as 16-bit words.</param>
    /// <param name="up">Up weights, same shape.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features, a multiple of the block's elements.</param>
    /// <param name="batch">Input rows.</param>
    /// <param name="lanesPerRow">Threads per row (as <see cref="MatMulBlocks{TBlock}"/>).</param>
    internal static void GluBlocks<TBlock, TAct>(ArrayView<ushort> gate, ArrayView<ushort> up, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch, int lanesPerRow)
        where TBlock : struct, IWeightBlock
        where TAct : struct, IGluActivation
    {
        var p = RowPass.Create(rows, cols, batch, lanesPerRow, cols / BlockSlotElements);
        for (int b0 = p.FirstItem; b0 < p.EndItem; b0 += BatchTile)
        {
            switch (p.EndItem - b0)
            {
                case 1: FinishGlu<Tile1, TAct>(p, BlockAcc<TBlock, Tile1>(p, gate, x, b0, cols), BlockAcc<TBlock, Tile1>(p, up, x, b0, cols), y, b0); break;
                case 2: FinishGlu<Tile2, TAct>(p, BlockAcc<TBlock, Tile2>(p, gate, x, b0, cols), BlockAcc<TBlock, Tile2>(p, up, x, b0, cols), y, b0); break;
                case 3: FinishGlu<Tile3, TAct>(p, BlockAcc<TBlock, Tile3>(p, gate, x, b0, cols), BlockAcc<TBlock, Tile3>(p, up, x, b0, cols), y, b0); break;
                default: FinishGlu<Tile4, TAct>(p, BlockAcc<TBlock, Tile4>(p, gate, x, b0, cols), BlockAcc<TBlock, Tile4>(p, up, x, b0, cols), y, b0); break;
            }
        }
    }

    /// <summary>Reduces both rows' accumulators over the lanes and stores <c>act(gate) · up</c> (lane 0).</summary>
    private static void FinishGlu<TTile, TAct>(RowPass p, Acc4 gate, Acc4 up, ArrayView<float> y, int b0)
        where TTile : struct, ITile
        where TAct : struct, IGluActivation
    {
        var g = RowSums<TTile>(p, gate);
        var u = RowSums<TTile>(p, up);
        TAct act = default;
        var values = default(Acc4);
        values.S0 = act.Apply(g.S0, u.S0);
        values.S1 = act.Apply(g.S1, u.S1);
        values.S2 = act.Apply(g.S2, u.S2);
        values.S3 = act.Apply(g.S3, u.S3);
        Store<TTile>(p, values, y, b0);
    }
}
