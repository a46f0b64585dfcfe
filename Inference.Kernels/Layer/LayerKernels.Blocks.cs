using ILGPU;
using ILGPU.Runtime;
using Inference.Loading;

namespace Inference.Kernels.Layer;

public sealed partial class LayerKernels
{
    private readonly BlockKernels?[] _blockKernels = new BlockKernels?[KeptBlockTypes.Length];
    private readonly Action<Index2D, ArrayView<ushort>, ArrayView<uint>, int, int>?[] _dequantizers =
        new Action<Index2D, ArrayView<ushort>, ArrayView<uint>, int, int>?[KeptBlockTypes.Length + 1];   // the kept types, then Q8_0

    /// <summary>
    /// The GGUF block types the block row kernels multiply as stored (<see cref="MatMulBlocks"/>): Q4_0, Q4_1, Q5_0, Q5_1,
    /// IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS. Q8_0 has its own kernels (<see cref="MatMulQ8_0"/>).
    /// </summary>
    public static ReadOnlySpan<GgmlType> KeptBlockTypes =>
    [
        GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.IQ4_NL,
        GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_XS,
    ];

    /// <summary>Whether <see cref="MatMulBlocks"/> and <see cref="EmbeddingBlocks"/> take <paramref name="type"/>.</summary>
    /// <param name="type">A GGUF tensor type.</param>
    public static bool KeepsBlocks(GgmlType type) => KeptBlockTypes.IndexOf(type) >= 0;

    /// <summary>
    /// <see cref="MatMulKernels"/>' block row kernel for <paramref name="type"/> (a warp per row, the weights dequantized
    /// in registers, f32 accumulation; any batch, 4 items per weight load).
    /// </summary>
    /// <param name="type">One of <see cref="KeptBlockTypes"/>.</param>
    /// <param name="weights">Raw blocks, <c>rows * cols / blockElements * blockBytes</c> bytes, starting at an even byte.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features (a multiple of the block's elements).</param>
    /// <param name="batch">Input rows.</param>
    /// <exception cref="ArgumentException">The type is not kept as blocks, <paramref name="cols"/> is not a whole number of
    /// blocks, <paramref name="weights"/> is too short or starts at an odd byte.</exception>
    public void MatMulBlocks(GgmlType type, ArrayView<byte> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        var k = CheckBlocks(type, weights, rows, cols);
        k.MatMul(RowConfig(rows, batch), weights.Cast<ushort>(), x, y, rows, cols, batch, _lanesPerRow);
    }

    /// <summary>The embedding gather from a table of <paramref name="type"/> blocks, widened to f32.</summary>
    /// <param name="type">One of <see cref="KeptBlockTypes"/>.</param>
    /// <param name="table">Raw blocks, <c>[vocab, dim / blockElements, blockBytes]</c>, starting at an even byte.</param>
    /// <param name="ids">Token ids, <c>[tokenCount]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="dim">Width (a multiple of the block's elements).</param>
    /// <exception cref="ArgumentException">As <see cref="MatMulBlocks"/>.</exception>
    public void EmbeddingBlocks(GgmlType type, ArrayView<byte> table, ArrayView<int> ids, ArrayView<float> output, int tokenCount, int dim)
    {
        var k = CheckBlocks(type, table, 1, dim);
        k.Gather(new Index2D(dim / MatMulKernels.BlockSlotElements, tokenCount), table.Cast<ushort>(), ids, output, dim);
    }

    /// <summary>Whether <see cref="DequantizeToHalf"/> takes <paramref name="type"/>: Q8_0 and <see cref="KeptBlockTypes"/>.</summary>
    /// <param name="type">A GGUF tensor type.</param>
    public static bool DequantizesToHalf(GgmlType type) => type == GgmlType.Q8_0 || KeepsBlocks(type);

    /// <summary>
    /// <see cref="MatMulKernels.DequantizeToHalf{TBlock}"/>: <paramref name="rows"/> rows of <paramref name="type"/>
    /// weights widened to f16, bit for bit <see cref="Inference.Backends.Cpu.Dequantize.Row"/> rounded to nearest even.
    /// </summary>
    /// <param name="type">Q8_0 or one of <see cref="KeptBlockTypes"/>.</param>
    /// <param name="weights">Raw blocks of the rows, starting at an even byte.</param>
    /// <param name="output">f16 bits, <c>[rows, cols]</c>, starting at a multiple of 4 bytes.</param>
    /// <param name="rows">Rows.</param>
    /// <param name="cols">Row width (a multiple of the block's elements).</param>
    /// <exception cref="ArgumentException">Another type, <paramref name="cols"/> is not a whole number of blocks, a view is
    /// too short, or a view starts misaligned.</exception>
    public void DequantizeToHalf(GgmlType type, ArrayView<byte> weights, ArrayView<ushort> output, int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        int i = type == GgmlType.Q8_0 ? KeptBlockTypes.Length : KeptBlockTypes.IndexOf(type);
        if (i < 0) throw new ArgumentException($"{type} weights are not dequantized to f16 on the device.", nameof(type));
        var (blockElements, blockBytes) = CheckBlockWeights(type, weights, rows, cols);
        if (output.Length < (long)rows * cols)
            throw new ArgumentException($"{output.Length} halves hold fewer than {rows} rows of {cols}.", nameof(output));
        if (((IContiguousArrayView)output).IndexInBytes % 4 != 0)
            throw new ArgumentException("the f16 output must start at a multiple of 4 bytes (the kernel writes pairs).", nameof(output));
        Action<Index2D, ArrayView<ushort>, ArrayView<uint>, int, int> kernel;
        lock (_dequantizers)
        {
            kernel = _dequantizers[i] ??= ForBlockType<DequantizerLoader, Action<Index2D, ArrayView<ushort>, ArrayView<uint>, int, int>>(type, new(_accelerator));
        }
        long count = (long)rows * cols;
        kernel(new Index2D(cols / MatMulKernels.BlockSlotElements, rows), weights.SubView(0, count / blockElements * blockBytes).Cast<ushort>(),
            output.SubView(0, count).Cast<uint>(), cols, 0);
    }

    /// <summary>Something built per block type: the kernels of <typeparamref name="TResult"/> over one <see cref="MatMulKernels.IWeightBlock"/>.</summary>
    private interface IBlockTypeLoader<out TResult>
    {
        TResult Load<TBlock>() where TBlock : struct, MatMulKernels.IWeightBlock;
    }

    /// <summary>
    /// The one map from a GGUF block type to its kernel struct (<see cref="MatMulKernels.Q4_0Block"/>, …): what
    /// <paramref name="loader"/> builds over the struct of <paramref name="type"/>.
    /// </summary>
    /// <param name="type">Q8_0 or one of <see cref="KeptBlockTypes"/>.</param>
    /// <param name="loader">What to build.</param>
    private static TResult ForBlockType<TLoader, TResult>(GgmlType type, TLoader loader) where TLoader : struct, IBlockTypeLoader<TResult> => type switch
    {
        GgmlType.Q8_0 => loader.Load<MatMulKernels.Q8_0Block>(),
        GgmlType.Q4_0 => loader.Load<MatMulKernels.Q4_0Block>(),
        GgmlType.Q4_1 => loader.Load<MatMulKernels.Q4_1Block>(),
        GgmlType.Q5_0 => loader.Load<MatMulKernels.Q5_0Block>(),
        GgmlType.Q5_1 => loader.Load<MatMulKernels.Q5_1Block>(),
        GgmlType.IQ4_NL => loader.Load<MatMulKernels.IQ4_NLBlock>(),
        GgmlType.Q2_K => loader.Load<MatMulKernels.Q2_KBlock>(),
        GgmlType.Q3_K => loader.Load<MatMulKernels.Q3_KBlock>(),
        GgmlType.Q4_K => loader.Load<MatMulKernels.Q4_KBlock>(),
        GgmlType.Q5_K => loader.Load<MatMulKernels.Q5_KBlock>(),
        GgmlType.Q6_K => loader.Load<MatMulKernels.Q6_KBlock>(),
        GgmlType.IQ4_XS => loader.Load<MatMulKernels.IQ4_XSBlock>(),
        _ => throw new ArgumentException($"{type} has no block kernels.", nameof(type)),
    };

    /// <summary><see cref="MatMulKernels.DequantizeToHalf{TBlock}"/> of a block type.</summary>
    private readonly struct DequantizerLoader(Accelerator accelerator) : IBlockTypeLoader<Action<Index2D, ArrayView<ushort>, ArrayView<uint>, int, int>>
    {
        public Action<Index2D, ArrayView<ushort>, ArrayView<uint>, int, int> Load<TBlock>() where TBlock : struct, MatMulKernels.IWeightBlock =>
            accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<ushort>, ArrayView<uint>, int, int>(MatMulKernels.DequantizeToHalf<TBlock>);
    }

    /// <summary>The row kernels (<see cref="BlockKernels"/>) of a block type.</summary>
    private readonly struct BlockKernelsLoader(Accelerator accelerator) : IBlockTypeLoader<BlockKernels>
    {
        public BlockKernels Load<TBlock>() where TBlock : struct, MatMulKernels.IWeightBlock => BlockKernels.Load<TBlock>(accelerator);
    }

    /// <summary>Checks that <paramref name="weights"/> hold <paramref name="rows"/> rows of <paramref name="cols"/>
    /// <paramref name="type"/> weights, starting at an even byte; returns the block's elements and bytes.</summary>
    private static (int Elements, int Bytes) CheckBlockWeights(GgmlType type, ArrayView<byte> weights, int rows, int cols)
    {
        if (!GgmlTypeInfo.TryGetBlock(type, out int blockElements, out int blockBytes) || cols <= 0 || cols % blockElements != 0)
            throw new ArgumentException($"cols ({cols}) must be a positive multiple of the {type} block ({blockElements}).", nameof(cols));
        if (weights.Length < (long)rows * (cols / blockElements) * blockBytes)
            throw new ArgumentException($"{weights.Length} bytes hold fewer than {rows} rows of {cols} {type} weights.", nameof(weights));
        if (((IContiguousArrayView)weights).IndexInBytes % 2 != 0)
            throw new ArgumentException($"{type} weights must start at an even byte (the kernels read 16-bit words).", nameof(weights));
        return (blockElements, blockBytes);
    }

    /// <summary>Checks <paramref name="weights"/> as <see cref="CheckBlockWeights"/> for a kept block type; returns the type's
    /// index in <see cref="KeptBlockTypes"/> (no kernel is loaded).</summary>
    private static int CheckBlockIndex(GgmlType type, ArrayView<byte> weights, int rows, int cols)
    {
        int i = KeptBlockTypes.IndexOf(type);
        if (i < 0) throw new ArgumentException($"{type} weights are not multiplied as blocks.", nameof(type));
        CheckBlockWeights(type, weights, rows, cols);
        return i;
    }

    private BlockKernels CheckBlocks(GgmlType type, ArrayView<byte> weights, int rows, int cols)
    {
        int i = CheckBlockIndex(type, weights, rows, cols);
        lock (_blockKernels)
        {
            return _blockKernels[i] ??= ForBlockType<BlockKernelsLoader, BlockKernels>(type, new(_accelerator));
        }
    }

    /// <summary>
    /// The kernels of one block type, compiled on first use (eleven types would slow every start); the per-expert product
    /// (<see cref="MatMulKernels.ExpertsBlocks{TBlock}"/>) only when a mixture-of-experts block first needs it.
    /// </summary>
    private sealed class BlockKernels(
        Action<KernelConfig, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> matMul,
        Action<Index2D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int> gather,
        Func<Action<KernelConfig, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int>> loadExperts)
    {
        private Action<KernelConfig, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int>? _experts;

        public Action<KernelConfig, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> MatMul { get; } = matMul;

        public Action<Index2D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int> Gather { get; } = gather;

        public Action<KernelConfig, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int> Experts
        {
            get
            {
                lock (this) return _experts ??= loadExperts();
            }
        }

        public static BlockKernels Load<TBlock>(Accelerator a) where TBlock : struct, MatMulKernels.IWeightBlock => new(
            a.LoadStreamKernel<ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.MatMulBlocks<TBlock>),
            a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<ushort>, ArrayView<int>, ArrayView<float>, int>(MatMulKernels.GatherBlocks<TBlock>),
            () => a.LoadStreamKernel<ArrayView<ushort>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int>(MatMulKernels.ExpertsBlocks<TBlock>));
    }
}
