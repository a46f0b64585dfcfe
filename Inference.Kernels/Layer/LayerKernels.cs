using Inference.KvCache;
using Inference.Models;
using ILGPU;
using ILGPU.Runtime;

namespace Inference.Kernels.Layer;

/// <summary>
/// The non-attention kernels of a transformer layer, loaded once for an accelerator, with typed launch methods that
/// enqueue on the accelerator's default stream.
/// </summary>
/// <remarks>Each method says which kernel it runs; shapes are those of the kernel's documentation.</remarks>
public sealed partial class LayerKernels
{
    private readonly Accelerator _accelerator;
    private readonly int _groupSize;
    private readonly int _rowGroupSize;
    private readonly int _lanesPerRow;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> _rmsNorm;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<int>, int, int, int, float, int> _rope;
    private readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> _swiGlu;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> _matMulF32;
    private readonly Action<KernelConfig, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int, int, int> _matMulF16;
    private readonly Action<KernelConfig, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> _matMulQ8;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> _matMulSimpleF32;
    private readonly Action<KernelConfig, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int> _matMulSimpleF16;
    private readonly Action<KernelConfig, ArrayView<byte>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int> _matMulSimpleQ8;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int> _gatherF32;
    private readonly Action<Index2D, ArrayView<ILGPU.Half>, ArrayView<int>, ArrayView<float>, int> _gatherF16;
    private readonly Action<Index2D, ArrayView<byte>, ArrayView<ILGPU.Half>, ArrayView<int>, ArrayView<float>, int> _gatherQ8;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> _ropeTable;
    private readonly Action<Index1D, ArrayView<float>, ArrayView<float>> _add;
    private readonly Action<Index1D, ArrayView<float>, float> _scale;
    private readonly Action<Index1D, ArrayView<float>, float> _softCap;
    private readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> _geGlu;
    private readonly Action<Index1D, ArrayView<float>, ArrayView<float>, int> _addBias;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int> _gatherRows;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int> _writeKvF32;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, int> _writeKvF16;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<byte>, ArrayView<byte>, int> _writeKvQ8_0;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<byte>, ArrayView<byte>, int> _writeKvFp8;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<int>, int> _argMax;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int> _topK;
    private readonly Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int> _routeExperts;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int> _combineExperts;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> _addSigmoidGated;

    /// <summary>Compiles and loads every kernel for <paramref name="accelerator"/>.</summary>
    /// <param name="accelerator">The accelerator; its context must have ILGPU.Algorithms enabled.</param>
    public LayerKernels(Accelerator accelerator) : this(accelerator, GroupReduce.MaxGroupSize)
    {
    }

    /// <summary>Compiles and loads every kernel for <paramref name="accelerator"/> with groups of at most <paramref name="maxGroupSize"/> threads.</summary>
    /// <param name="accelerator">The accelerator; its context must have ILGPU.Algorithms enabled.</param>
    /// <param name="maxGroupSize">Threads per group of the explicitly grouped kernels (a power of two is used, 1 to 64).</param>
    /// <remarks>
    /// NOTE: ILGPU's CPU accelerator pays for every barrier with thread switches; one-thread groups make each row
    /// a plain loop there, tens of times faster for whole-model runs. GPUs want the default 64.
    /// The matrix row kernels use <see cref="MatMulKernels.RowGroupSize"/> threads per group (a warp per row) when
    /// <paramref name="maxGroupSize"/> is 64 or more, else <paramref name="maxGroupSize"/> threads with one thread per
    /// row when that is below the warp size.
    /// </remarks>
    public LayerKernels(Accelerator accelerator, int maxGroupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxGroupSize, 1);
        _accelerator = accelerator;
        _groupSize = KernelGroupSize.For(accelerator, Math.Min(maxGroupSize, GroupReduce.MaxGroupSize));
        _rowGroupSize = KernelGroupSize.For(accelerator, maxGroupSize >= GroupReduce.MaxGroupSize ? MatMulKernels.RowGroupSize : maxGroupSize);
        int warp = accelerator.WarpSize;
        _lanesPerRow = warp > 0 && (warp & (warp - 1)) == 0 && _rowGroupSize % warp == 0 ? warp : 1;
        var a = accelerator;
        _rmsNorm = a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(RmsNormKernels.RmsNorm);
        _rope = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<int>, int, int, int, float, int>(RopeKernels.Rope);
        _swiGlu = a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(SwiGluKernels.SwiGlu);
        _matMulF32 = a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.MatMulF32);
        _matMulF16 = a.LoadStreamKernel<ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.MatMulF16);
        _matMulQ8 = a.LoadStreamKernel<ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.MatMulQ8_0);
        _matMulSimpleF32 = a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(MatMulKernels.MatMul<float, F32Element>);
        _matMulSimpleF16 = a.LoadStreamKernel<ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int>(MatMulKernels.MatMul<ILGPU.Half, F16Element>);
        _matMulSimpleQ8 = a.LoadStreamKernel<ArrayView<byte>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int>(MatMulKernels.MatMulQ8_0Simple);
        _gatherF32 = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int>(EmbeddingKernels.Gather<float, F32Element>);
        _gatherF16 = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<ILGPU.Half>, ArrayView<int>, ArrayView<float>, int>(EmbeddingKernels.Gather<ILGPU.Half, F16Element>);
        _gatherQ8 = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<byte>, ArrayView<ILGPU.Half>, ArrayView<int>, ArrayView<float>, int>(EmbeddingKernels.GatherQ8_0);
        _ropeTable = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(RopeKernels.RopeTable);
        _add = a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(ElementwiseKernels.Add);
        _scale = a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, float>(ElementwiseKernels.Scale);
        _softCap = a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, float>(ElementwiseKernels.SoftCap);
        _geGlu = a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(SwiGluKernels.GeGlu);
        _addBias = a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(ElementwiseKernels.AddBias);
        _gatherRows = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int>(ElementwiseKernels.GatherRows);
        _writeKvF32 = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int>(KvCacheKernels.WriteF32);
        _writeKvF16 = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, int>(KvCacheKernels.WriteF16);
        _writeKvQ8_0 = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<byte>, ArrayView<byte>, int>(KvCacheKernels.WriteBlocks<Q8_0Kv>);
        _writeKvFp8 = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<byte>, ArrayView<byte>, int>(KvCacheKernels.WriteBlocks<Fp8E4M3Kv>);
        _argMax = a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, int>(SelectionKernels.ArgMax);
        _topK = a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int>(SelectionKernels.TopK);
        _routeExperts = a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int>(ExpertKernels.Route);
        _combineExperts = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int>(ExpertKernels.Combine);
        _addSigmoidGated = a.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(ExpertKernels.AddSigmoidGated);
    }

    /// <summary>The accelerator the kernels run on.</summary>
    public Accelerator Accelerator => _accelerator;

    /// <summary>Threads per group of the matrix row kernels.</summary>
    public int RowGroupSize => _rowGroupSize;

    /// <summary>Threads per output row of the matrix row kernels (1 or the warp size).</summary>
    public int LanesPerRow => _lanesPerRow;

    /// <summary><see cref="RmsNormKernels.RmsNorm"/> over <paramref name="rows"/> rows of <paramref name="dim"/>.</summary>
    /// <param name="x">Input, <c>[rows, dim]</c>.</param>
    /// <param name="weight">Scale, <c>[dim]</c>.</param>
    /// <param name="output">Output, <c>[rows, dim]</c>.</param>
    /// <param name="rows">Rows.</param>
    /// <param name="dim">Row length.</param>
    /// <param name="epsilon">Added to the mean square.</param>
    public void RmsNorm(ArrayView<float> x, ArrayView<float> weight, ArrayView<float> output, int rows, int dim, float epsilon)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(dim, 1);
        _rmsNorm(new KernelConfig(rows, _groupSize), x, weight, output, dim, epsilon);
    }

    /// <summary><see cref="RopeKernels.Rope"/> in place.</summary>
    /// <param name="x">Queries or keys, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="positions">Position per token, <c>[tokenCount]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="heads">Heads per token.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="rotaryDim">Rotated elements per head (even, ≤ headDim).</param>
    /// <param name="freqBase">Frequency base.</param>
    /// <param name="layout">Pairing of rotated elements.</param>
    /// <exception cref="ArgumentException"><paramref name="rotaryDim"/> is odd or larger than <paramref name="headDim"/>.</exception>
    public void Rope(ArrayView<float> x, ArrayView<int> positions, int tokenCount, int heads, int headDim, int rotaryDim,
        float freqBase, RopeLayout layout)
    {
        if (rotaryDim <= 0 || rotaryDim % 2 != 0 || rotaryDim > headDim)
            throw new ArgumentException("rotaryDim must be even, positive and at most headDim.", nameof(rotaryDim));
        _rope(new Index2D(rotaryDim / 2, tokenCount * heads), x, positions, heads, headDim, rotaryDim, freqBase,
            layout == RopeLayout.Neox ? 1 : 0);
    }

    /// <summary><see cref="SwiGluKernels.SwiGlu"/> over <paramref name="count"/> elements.</summary>
    /// <param name="gate">Gate, <c>[count]</c>.</param>
    /// <param name="up">Up, <c>[count]</c>.</param>
    /// <param name="output">Output, <c>[count]</c>.</param>
    /// <param name="count">Elements.</param>
    public void SwiGlu(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> output, int count) =>
        _swiGlu(count, gate, up, output);

    /// <summary>
    /// <see cref="MatMulKernels.MatMulF32"/> (16-byte loads, a warp per row) when <paramref name="cols"/> is a multiple
    /// of 4 and both views start 16-byte aligned, else <see cref="MatMulKernels.MatMul{TW, TConv}"/>.
    /// </summary>
    /// <param name="weights">Weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    /// <param name="batch">Input rows.</param>
    public void MatMul(ArrayView<float> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        if (IsWide(cols, 4, weights, 16, x))
            _matMulF32(RowConfig(rows, batch), weights, x, y, rows, cols, batch, _lanesPerRow);
        else
            _matMulSimpleF32(SimpleConfig(rows, batch), weights, x, y, rows, cols);
    }

    /// <summary>
    /// <see cref="MatMulKernels.MatMulF16"/> (16-byte loads, a warp per row) when <paramref name="cols"/> is a multiple
    /// of 8 and both views start 16-byte aligned, else <see cref="MatMulKernels.MatMul{TW, TConv}"/>.
    /// </summary>
    /// <param name="weights">Weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    /// <param name="batch">Input rows.</param>
    public void MatMul(ArrayView<ILGPU.Half> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        if (IsWide(cols, 8, weights, 16, x))
            _matMulF16(RowConfig(rows, batch), weights, x, y, rows, cols, batch, _lanesPerRow);
        else
            _matMulSimpleF16(SimpleConfig(rows, batch), weights, x, y, rows, cols);
    }

    /// <summary>
    /// <see cref="MatMulKernels.MatMulQ8_0"/> (a warp per row, four lanes per block) when the input starts 16-byte
    /// aligned, else <see cref="MatMulKernels.MatMulQ8_0Simple"/>.
    /// </summary>
    /// <param name="q8Weights">Raw Q8_0 bytes, <c>rows * cols / 32 * 34</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features (a multiple of 32).</param>
    /// <param name="batch">Input rows.</param>
    /// <exception cref="ArgumentException">
    /// <paramref name="cols"/> is not a multiple of 32, or <paramref name="q8Weights"/> starts at an odd byte of its
    /// buffer (both kernels read the f16 scales as 2-byte words).
    /// </exception>
    public void MatMulQ8_0(ArrayView<byte> q8Weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        CheckQ8_0(q8Weights, cols);
        if (IsWide(cols, MatMulKernels.Q8BlockElements, q8Weights, 2, x))
            _matMulQ8(RowConfig(rows, batch), q8Weights.Cast<ushort>(), x, y, rows, cols, batch, _lanesPerRow);
        else
            _matMulSimpleQ8(SimpleConfig(rows, batch), q8Weights, q8Weights.Cast<ILGPU.Half>(), x, y, rows, cols);
    }

    /// <summary>
    /// <see cref="MatMulKernels.MatMul{TW, TConv}"/> with F32 weights always (one group per row and item): the fallback
    /// of <see cref="MatMul(ArrayView{float}, ArrayView{float}, ArrayView{float}, int, int, int)"/>, callable for comparisons.
    /// </summary>
    /// <param name="weights">Weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    /// <param name="batch">Input rows.</param>
    public void MatMulSimple(ArrayView<float> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch) =>
        _matMulSimpleF32(SimpleConfig(rows, batch), weights, x, y, rows, cols);

    /// <summary>
    /// <see cref="MatMulKernels.MatMul{TW, TConv}"/> with F16 weights always (one group per row and item): the fallback
    /// of <see cref="MatMul(ArrayView{ILGPU.Half}, ArrayView{float}, ArrayView{float}, int, int, int)"/>, callable for comparisons.
    /// </summary>
    /// <param name="weights">Weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    /// <param name="batch">Input rows.</param>
    public void MatMulSimple(ArrayView<ILGPU.Half> weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch) =>
        _matMulSimpleF16(SimpleConfig(rows, batch), weights, x, y, rows, cols);

    /// <summary>
    /// <see cref="MatMulKernels.MatMulQ8_0Simple"/> always (one group per row and item): the fallback of
    /// <see cref="MatMulQ8_0"/>, callable for comparisons.
    /// </summary>
    /// <param name="q8Weights">Raw Q8_0 bytes, <c>rows * cols / 32 * 34</c>, starting at an even byte.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features (a multiple of 32).</param>
    /// <param name="batch">Input rows.</param>
    /// <exception cref="ArgumentException">As <see cref="MatMulQ8_0"/>.</exception>
    public void MatMulQ8_0Simple(ArrayView<byte> q8Weights, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        CheckQ8_0(q8Weights, cols);
        _matMulSimpleQ8(SimpleConfig(rows, batch), q8Weights, q8Weights.Cast<ILGPU.Half>(), x, y, rows, cols);
    }

    /// <summary><see cref="EmbeddingKernels.Gather{TW, TConv}"/> from an F32 table.</summary>
    /// <param name="table">Table, <c>[vocab, dim]</c>.</param>
    /// <param name="ids">Token ids, <c>[tokenCount]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="dim">Width.</param>
    public void Embedding(ArrayView<float> table, ArrayView<int> ids, ArrayView<float> output, int tokenCount, int dim) =>
        _gatherF32(new Index2D(dim, tokenCount), table, ids, output, dim);

    /// <summary><see cref="EmbeddingKernels.Gather{TW, TConv}"/> from an F16 table.</summary>
    /// <param name="table">Table, <c>[vocab, dim]</c>.</param>
    /// <param name="ids">Token ids, <c>[tokenCount]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="dim">Width.</param>
    public void Embedding(ArrayView<ILGPU.Half> table, ArrayView<int> ids, ArrayView<float> output, int tokenCount, int dim) =>
        _gatherF16(new Index2D(dim, tokenCount), table, ids, output, dim);

    /// <summary><see cref="EmbeddingKernels.GatherQ8_0"/>.</summary>
    /// <param name="q8Table">Raw Q8_0 bytes, <c>vocab * dim / 32 * 34</c>.</param>
    /// <param name="ids">Token ids, <c>[tokenCount]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="dim">Width (a multiple of 32).</param>
    /// <exception cref="ArgumentException"><paramref name="dim"/> is not a multiple of 32.</exception>
    public void EmbeddingQ8_0(ArrayView<byte> q8Table, ArrayView<int> ids, ArrayView<float> output, int tokenCount, int dim)
    {
        if (dim % MatMulKernels.Q8BlockElements != 0) throw new ArgumentException("dim must be a multiple of 32.", nameof(dim));
        _gatherQ8(new Index2D(dim, tokenCount), q8Table, q8Table.Cast<ILGPU.Half>(), ids, output, dim);
    }

    /// <summary><see cref="SelectionKernels.ArgMax"/>.</summary>
    /// <param name="logits">Input, <c>[rows, cols]</c>.</param>
    /// <param name="indices">Output, <c>[rows]</c>.</param>
    /// <param name="rows">Rows.</param>
    /// <param name="cols">Row length.</param>
    public void ArgMax(ArrayView<float> logits, ArrayView<int> indices, int rows, int cols) =>
        _argMax(new KernelConfig(rows, _groupSize), logits, indices, cols);

    /// <summary><see cref="SelectionKernels.TopK"/>.</summary>
    /// <param name="logits">Input, <c>[rows, cols]</c>.</param>
    /// <param name="values">Output, <c>[rows, k]</c>.</param>
    /// <param name="indices">Output, <c>[rows, k]</c>.</param>
    /// <param name="rows">Rows.</param>
    /// <param name="cols">Row length.</param>
    /// <param name="k">Picks per row (1 .. cols).</param>
    public void TopK(ArrayView<float> logits, ArrayView<float> values, ArrayView<int> indices, int rows, int cols, int k)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(k, cols);
        _topK(new KernelConfig(rows, _groupSize), logits, values, indices, cols, k);
    }

    /// <summary><see cref="RopeKernels.RopeTable"/> in place.</summary>
    /// <param name="x">Queries or keys, <c>[tokenCount, heads, headDim]</c>.</param>
    /// <param name="cos">cos θ, <c>[tokenCount, rotaryDim / 2]</c>.</param>
    /// <param name="sin">sin θ, same shape.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="heads">Heads per token.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="rotaryDim">Rotated elements per head (even, ≤ headDim).</param>
    /// <param name="layout">Pairing of rotated elements.</param>
    /// <exception cref="ArgumentException"><paramref name="rotaryDim"/> is odd or larger than <paramref name="headDim"/>.</exception>
    public void RopeTable(ArrayView<float> x, ArrayView<float> cos, ArrayView<float> sin, int tokenCount, int heads, int headDim,
        int rotaryDim, RopeLayout layout)
    {
        if (rotaryDim <= 0 || rotaryDim % 2 != 0 || rotaryDim > headDim)
            throw new ArgumentException("rotaryDim must be even, positive and at most headDim.", nameof(rotaryDim));
        _ropeTable(new Index2D(rotaryDim / 2, tokenCount * heads), x, cos, sin, heads, headDim, rotaryDim,
            layout == RopeLayout.Neox ? 1 : 0);
    }

    /// <summary><see cref="ElementwiseKernels.Add"/>: <c>x += y</c> over <paramref name="count"/> elements.</summary>
    /// <param name="x">Accumulator.</param>
    /// <param name="y">Addend.</param>
    /// <param name="count">Elements.</param>
    public void Add(ArrayView<float> x, ArrayView<float> y, int count) => _add(count, x, y);

    /// <summary><see cref="ElementwiseKernels.Scale"/>: <c>x *= factor</c> over <paramref name="count"/> elements.</summary>
    /// <param name="x">Values.</param>
    /// <param name="factor">Factor.</param>
    /// <param name="count">Elements.</param>
    public void Scale(ArrayView<float> x, float factor, int count) => _scale(count, x, factor);

    /// <summary><see cref="ElementwiseKernels.SoftCap"/>: <c>x = cap · tanh(x / cap)</c> over <paramref name="count"/> elements.</summary>
    /// <param name="x">Values.</param>
    /// <param name="cap">The cap, positive.</param>
    /// <param name="count">Elements.</param>
    public void SoftCap(ArrayView<float> x, float cap, int count) => _softCap(count, x, cap);

    /// <summary><see cref="SwiGluKernels.GeGlu"/> over <paramref name="count"/> elements.</summary>
    /// <param name="gate">Gate, <c>[count]</c>.</param>
    /// <param name="up">Up, <c>[count]</c>.</param>
    /// <param name="output">Output, <c>[count]</c>.</param>
    /// <param name="count">Elements.</param>
    public void GeGlu(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> output, int count) => _geGlu(count, gate, up, output);

    /// <summary><see cref="ElementwiseKernels.AddBias"/> over <paramref name="rows"/> rows of <paramref name="width"/>.</summary>
    /// <param name="y">Rows, <c>[rows, width]</c>.</param>
    /// <param name="bias">Bias, <c>[width]</c>.</param>
    /// <param name="rows">Rows.</param>
    /// <param name="width">Row length.</param>
    public void AddBias(ArrayView<float> y, ArrayView<float> bias, int rows, int width) => _addBias(rows * width, y, bias, width);

    /// <summary><see cref="ElementwiseKernels.GatherRows"/>.</summary>
    /// <param name="x">Source, <c>[n, width]</c>.</param>
    /// <param name="rows">Source row per output row, <c>[rowCount]</c>.</param>
    /// <param name="output">Output, <c>[rowCount, width]</c>.</param>
    /// <param name="rowCount">Output rows.</param>
    /// <param name="width">Row length.</param>
    public void GatherRows(ArrayView<float> x, ArrayView<int> rows, ArrayView<float> output, int rowCount, int width) =>
        _gatherRows(new Index2D(width, rowCount), x, rows, output, width);

    /// <summary><see cref="KvCacheKernels.WriteF32"/>.</summary>
    /// <param name="k">Keys, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="v">Values, same shape.</param>
    /// <param name="slots">Slot per token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache, same shape.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="kvDim">kvHeads · headDim.</param>
    public void WriteKv(ArrayView<float> k, ArrayView<float> v, ArrayView<int> slots, ArrayView<float> kCache, ArrayView<float> vCache,
        int tokenCount, int kvDim) => _writeKvF32(new Index2D(kvDim, tokenCount), k, v, slots, kCache, vCache, kvDim);

    /// <summary><see cref="KvCacheKernels.WriteF16"/>.</summary>
    /// <param name="k">Keys, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="v">Values, same shape.</param>
    /// <param name="slots">Slot per token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache, same shape.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="kvDim">kvHeads · headDim.</param>
    public void WriteKv(ArrayView<float> k, ArrayView<float> v, ArrayView<int> slots, ArrayView<ILGPU.Half> kCache, ArrayView<ILGPU.Half> vCache,
        int tokenCount, int kvDim) => _writeKvF16(new Index2D(kvDim, tokenCount), k, v, slots, kCache, vCache, kvDim);

    /// <summary><see cref="KvCacheKernels.WriteBlocks{TQuant}"/>: quantizes K and V into a block-format cache.</summary>
    /// <param name="k">Keys, <c>[tokenCount, kvDim]</c>.</param>
    /// <param name="v">Values, same shape.</param>
    /// <param name="slots">Slot per token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache as bytes, <c>[slotCount, kvDim / 32, 34]</c>.</param>
    /// <param name="vCache">Value cache, same shape.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="kvDim">kvHeads · headDim, a multiple of 32.</param>
    /// <param name="type"><see cref="KvCacheDataType.Q8_0"/> or <see cref="KvCacheDataType.Fp8E4M3"/>.</param>
    /// <exception cref="ArgumentException"><paramref name="type"/> is not a block format or <paramref name="kvDim"/> is not a multiple of 32.</exception>
    public void WriteKv(ArrayView<float> k, ArrayView<float> v, ArrayView<int> slots, ArrayView<byte> kCache, ArrayView<byte> vCache,
        int tokenCount, int kvDim, KvCacheDataType type)
    {
        if (kvDim % KvRowGroups.GroupValues != 0) throw new ArgumentException("kvDim must be a multiple of 32.", nameof(kvDim));
        var write = type switch
        {
            KvCacheDataType.Q8_0 => _writeKvQ8_0,
            KvCacheDataType.Fp8E4M3 => _writeKvFp8,
            _ => throw new ArgumentException($"{type} is not a block format.", nameof(type)),
        };
        write(new Index2D(kvDim / KvRowGroups.GroupValues, tokenCount), k, v, slots, kCache, vCache, kvDim);
    }

    /// <summary><see cref="ExpertKernels.Route"/>: top-k routing of <paramref name="tokenCount"/> tokens.</summary>
    /// <param name="logits">Router logits, <c>[tokenCount, experts]</c>; left holding the probabilities.</param>
    /// <param name="chosen">Output expert ids, <c>[tokenCount, k]</c>.</param>
    /// <param name="weights">Output weights, <c>[tokenCount, k]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="experts">Experts.</param>
    /// <param name="k">Experts per token (1 … <paramref name="experts"/>).</param>
    /// <param name="normalize">Whether the k weights are renormalised to sum to 1.</param>
    public void RouteExperts(ArrayView<float> logits, ArrayView<int> chosen, ArrayView<float> weights, int tokenCount, int experts, int k, bool normalize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(k, experts);
        _routeExperts(tokenCount, logits, chosen, weights, experts, k, normalize ? 1 : 0);
    }

    /// <summary><see cref="ExpertKernels.Combine"/>: each token's weighted sum of its experts' output rows.</summary>
    /// <param name="y">Expert outputs, <c>[tokenCount · k, dim]</c>.</param>
    /// <param name="weights">Routing weights, <c>[tokenCount, k]</c>.</param>
    /// <param name="slotRows">Row of <paramref name="y"/> per slot, <c>[tokenCount, k]</c>.</param>
    /// <param name="output">Output, <c>[tokenCount, dim]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="dim">Row length.</param>
    /// <param name="k">Experts per token.</param>
    public void CombineExperts(ArrayView<float> y, ArrayView<float> weights, ArrayView<int> slotRows, ArrayView<float> output, int tokenCount, int dim, int k) =>
        _combineExperts(new Index2D(dim, tokenCount), y, weights, slotRows, output, dim, k);

    /// <summary><see cref="ExpertKernels.AddSigmoidGated"/>: <c>output[t] += σ(gate[t]) · shared[t]</c>.</summary>
    /// <param name="output">Accumulator, <c>[tokenCount, dim]</c>.</param>
    /// <param name="shared">Shared expert output, same shape.</param>
    /// <param name="gate">Gate logit per token, <c>[tokenCount]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="dim">Row length.</param>
    public void AddSigmoidGated(ArrayView<float> output, ArrayView<float> shared, ArrayView<float> gate, int tokenCount, int dim) =>
        _addSigmoidGated(new Index2D(dim, tokenCount), output, shared, gate, dim);

    /// <summary>Q8_0 needs whole blocks per row and 2-byte aligned scales.</summary>
    private static void CheckQ8_0(ArrayView<byte> q8Weights, int cols)
    {
        if (cols % MatMulKernels.Q8BlockElements != 0) throw new ArgumentException("cols must be a multiple of 32.", "cols");
        if (((IContiguousArrayView)q8Weights).IndexInBytes % 2 != 0)
            throw new ArgumentException("Q8_0 weights must start at an even byte of their buffer.", "q8Weights");
    }

    /// <summary>
    /// Whether the row kernels apply: <paramref name="cols"/> a multiple of <paramref name="colMultiple"/>, the weights
    /// starting a multiple of <paramref name="weightAlign"/> bytes into their buffer and the input a multiple of 16
    /// (buffers themselves start 256-byte aligned on GPUs, so these are the alignments the loads get).
    /// </summary>
    internal static bool IsWide<TW>(int cols, int colMultiple, ArrayView<TW> weights, int weightAlign, ArrayView<float> x)
        where TW : unmanaged =>
        cols > 0 && cols % colMultiple == 0
        && ((IContiguousArrayView)weights).IndexInBytes % weightAlign == 0
        && ((IContiguousArrayView)x).IndexInBytes % 16 == 0;

    private KernelConfig RowConfig(int rows, int batch)
    {
        int rowsPerGroup = _rowGroupSize / _lanesPerRow;
        return new(new Index2D((rows + rowsPerGroup - 1) / rowsPerGroup, (batch + MatMulKernels.BatchChunk - 1) / MatMulKernels.BatchChunk),
            new Index2D(_rowGroupSize, 1));
    }

    private KernelConfig SimpleConfig(int rows, int batch) =>
        new(new Index2D(rows, batch), new Index2D(_groupSize, 1));
}
