using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Loading;

namespace Inference.Cuda;

/// <summary>Element type of the tensor-core matrix product's inputs.</summary>
internal enum TensorCoreElement
{
    /// <summary>IEEE half precision.</summary>
    F16,

    /// <summary>bfloat16.</summary>
    BF16,
}

/// <summary>
/// f32 activations <c>[M, K]</c> converted to <see cref="Type"/> in <see cref="PtxTensorCoreGemm"/>'s staging buffer at
/// <see cref="Address"/> (<see cref="PtxTensorCoreGemm.Stage"/>), for products that read one conversion; valid until the
/// launcher's next conversion of activations (the <see cref="Staging"/>-th), which its products check.
/// </summary>
internal readonly record struct StagedActivations(TensorCoreElement Type, IntPtr Address, int M, int K, int Staging);

/// <summary>
/// Launches the tensor-core matrix product of <c>Ptx/gemm_tensor_core.ptx</c> (see <see cref="TensorCoreGemmTile"/>):
/// <c>C[M, N] = A[M, K] · W[N, K]ᵀ</c> with f16 or bf16 inputs and f32 accumulation, and the conversion of f32
/// activations to the input type.
/// </summary>
/// <remarks>Enqueues on the accelerator's default stream. Not thread-safe (one staging buffer for converted activations).</remarks>
internal sealed unsafe class PtxTensorCoreGemm : IDisposable
{
    private readonly CudaAccelerator _accelerator;
    private readonly PtxModule _module;
    private readonly IntPtr _gemmF16, _gemmBf16, _groupedF16, _groupedBf16, _reduce, _convertF16, _convertBf16;
    private readonly IntPtr[] _gemmBlockTypes;   // gemm_q8_0, gemm_q4_0 … per InKernelBlockTypes
    private MemoryBuffer1D<ushort, Stride1D.Dense>? _staging;     // activations converted to f16/bf16, [M, K]
    private MemoryBuffer1D<float, Stride1D.Dense>? _partials;     // split-K partial products, [splits, M, N]
    private MemoryBuffer1D<ushort, Stride1D.Dense>? _workspace;   // weights widened to f16, a slab of rows at a time
    private int _stagings;                                        // conversions into _staging so far: a StagedActivations' number

    public PtxTensorCoreGemm(CudaAccelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _accelerator = accelerator;
        _module = PtxModule.Load(accelerator, TensorCoreGemmPtx.ModuleName);
        _gemmF16 = _module.GetFunction("gemm_f16");
        _gemmBf16 = _module.GetFunction("gemm_bf16");
        _gemmBlockTypes = [.. InKernelBlockTypes.ToArray().Select(t => _module.GetFunction(EntryFor(t)))];
        _groupedF16 = _module.GetFunction("gemm_grouped_f16");
        _groupedBf16 = _module.GetFunction("gemm_grouped_bf16");
        _reduce = _module.GetFunction("gemm_reduce_splits");
        _convertF16 = _module.GetFunction("convert_f32_f16");
        _convertBf16 = _module.GetFunction("convert_f32_bf16");
    }

    /// <summary>Whether F16 weight matrices of many rows run here (<see cref="CudaOptions.TensorCoreMatMul"/>).</summary>
    public bool F16Products { get; init; } = true;

    /// <summary>
    /// Whether Q8_0 and block-type weight matrices of many rows run here (<see cref="CudaOptions.QuantizedTensorCoreMatMul"/>):
    /// <see cref="InKernelBlockTypes"/> on <see cref="RunBlocks"/>, which widens their blocks inside the kernel;
    /// the other block types widened to f16 a slab at a time into <see cref="Workspace"/>.
    /// </summary>
    public bool QuantizedProducts { get; init; }

    /// <summary>The tile the module was generated with.</summary>
    public static TensorCoreGemmTile Tile => TensorCoreGemmTile.Default;

    /// <summary>Throws unless the launcher accepts these dimensions.</summary>
    /// <param name="m">Rows of A and C.</param>
    /// <param name="n">Rows of W, columns of C.</param>
    /// <param name="k">The inner dimension.</param>
    /// <param name="ldc">Floats between rows of C (at least <paramref name="n"/>); 0 means <paramref name="n"/>.</param>
    /// <exception cref="ArgumentException">K is not a positive multiple of 8, <paramref name="ldc"/> is below N, or a
    /// product of dimensions reaches 2^31.</exception>
    public static void CheckShape(int m, int n, int k, int ldc = 0)
    {
        if (m < 1 || n < 1 || k < 1) throw new ArgumentException($"matrix dimensions must be positive (M={m}, N={n}, K={k})");
        if (k % 8 != 0) throw new ArgumentException($"the tensor-core matrix product needs K divisible by 8 (16-byte rows), not {k}");
        if (ldc != 0 && ldc < n) throw new ArgumentException($"rows of C ({ldc} floats apart) are narrower than N={n}");
        if ((long)m * k >= int.MaxValue || (long)n * k >= int.MaxValue || (long)m * Math.Max(n, ldc) >= int.MaxValue)
            throw new ArgumentException($"matrix too large for 32-bit indexing (M={m}, N={n}, K={k}, ldc={ldc})");
    }

    /// <summary>The most CTAs a launch may have along grid y and z.</summary>
    internal const int MaxGridYZ = 65535;

    /// <summary>Throws unless the grouped launcher (<see cref="RunGrouped"/>) accepts these dimensions.</summary>
    /// <param name="groups">Groups (experts), grid z.</param>
    /// <param name="maxRows">The most rows one group can have (grid y covers it).</param>
    /// <param name="rows">Rows of A and C (every group's rows lie below it).</param>
    /// <param name="n">Rows of each group's W, columns of C.</param>
    /// <param name="k">The inner dimension.</param>
    /// <param name="ldc">Floats between rows of C (at least <paramref name="n"/>); 0 means <paramref name="n"/>.</param>
    /// <exception cref="ArgumentException">A shape <see cref="CheckShape"/> refuses for <paramref name="rows"/> × N × K.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="groups"/> or <paramref name="maxRows"/> out of range.</exception>
    public static void CheckGroupedShape(int groups, int maxRows, int rows, int n, int k, int ldc = 0)
    {
        CheckShape(rows, n, k, ldc);
        if (groups < 1 || groups > MaxGridYZ)
            throw new ArgumentOutOfRangeException(nameof(groups), $"the grouped product runs 1 to {MaxGridYZ} groups, not {groups}");
        if (maxRows < 1 || maxRows > rows)
            throw new ArgumentOutOfRangeException(nameof(maxRows), $"a group's most rows must lie in 1 .. {rows} (the rows of A), not {maxRows}");
        if ((maxRows + Tile.BlockM - 1) / Tile.BlockM > MaxGridYZ)
            throw new ArgumentOutOfRangeException(nameof(maxRows), $"a group of {maxRows} rows needs more than {MaxGridYZ} row tiles");
    }

    /// <summary>Most k splits of one product.</summary>
    internal const int MaxSplits = 16;

    /// <summary>Fewest k tiles (of 32) a split runs, so each split's pipeline fills.</summary>
    internal const int MinTilesPerSplit = 4;

    /// <summary>
    /// Split-K: when the output tiles fill less than half of the multiprocessors (a few rows times a small N), the k tiles
    /// are split among up to <see cref="MaxSplits"/> CTAs per output tile, at least <see cref="MinTilesPerSplit"/> each;
    /// returns the split count and the k tiles per split.
    /// </summary>
    /// <remarks>
    /// NOTE: the split count depends on M, so a row's f32 rounding depends on how many rows share its product (so does
    /// the choice between the row kernels and this kernel).
    /// </remarks>
    internal static (int Splits, int TilesPerSplit) ChooseSplits(int m, int n, int k, int multiprocessors)
    {
        var t = Tile;
        long tiles = (long)((m + t.BlockM - 1) / t.BlockM) * ((n + t.BlockN - 1) / t.BlockN);
        int kTiles = (k + t.BlockK - 1) / t.BlockK;
        int splits = 1;
        if (tiles * 2 < multiprocessors)
            splits = (int)Math.Clamp(Math.Min(multiprocessors / tiles, kTiles / MinTilesPerSplit), 1, MaxSplits);
        int perSplit = (kTiles + splits - 1) / splits;
        return ((kTiles + perSplit - 1) / perSplit, perSplit);
    }

    /// <summary>
    /// <c>c[M, N] = a[M, K] · w[N, K]ᵀ</c> with rows of c <paramref name="ldc"/> floats apart (0: N); a and w 16-byte
    /// aligned; on <paramref name="stream"/> or the default stream.
    /// </summary>
    /// <remarks>A split product (<see cref="ChooseSplits"/>) may allocate its partial buffer on first use (not inside a graph capture).</remarks>
    public void Run(TensorCoreElement type, IntPtr a, IntPtr w, IntPtr c, int m, int n, int k, CudaStream? stream = null, int ldc = 0)
    {
        CheckShape(m, n, k, ldc);
        Launch(type == TensorCoreElement.F16 ? _gemmF16 : _gemmBf16, a, w, c, m, n, k, stream, ldc);
    }

    /// <summary>
    /// The block types whose products widen their weights inside the kernel (<see cref="RunBlocks"/>): Q8_0, Q4_0, Q4_K,
    /// Q6_K, Q5_K, Q4_1, Q5_0, Q5_1. The other kept types (IQ4_NL, Q2_K, Q3_K, IQ4_XS) keep the slab path.
    /// </summary>
    public static ReadOnlySpan<GgmlType> InKernelBlockTypes =>
        [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K, GgmlType.Q5_K, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1];

    /// <summary>Whether <see cref="RunBlocks"/> takes <paramref name="type"/>: one of <see cref="InKernelBlockTypes"/>.</summary>
    /// <param name="type">A GGUF tensor type.</param>
    public static bool WidensInKernel(GgmlType type) => InKernelBlockTypes.IndexOf(type) >= 0;

    /// <summary>The module entry of <paramref name="type"/>'s product (gemm_q8_0, gemm_q4_0, gemm_q4_k, …).</summary>
    internal static string EntryFor(GgmlType type) => "gemm_" + type.ToString().ToLowerInvariant();

    /// <summary>
    /// Throws unless <see cref="RunBlocks"/> accepts these dimensions: <see cref="CheckShape"/>'s, a type that
    /// <see cref="WidensInKernel"/>, and K whole blocks of it (32 values; 256 for the K-quants).
    /// </summary>
    /// <exception cref="ArgumentException">As <see cref="CheckShape"/>, another type, or K is not a whole number of blocks.</exception>
    public static void CheckBlockShape(GgmlType type, int m, int n, int k, int ldc = 0)
    {
        if (!WidensInKernel(type)) throw new ArgumentException($"{type} weights are not widened inside the tensor-core kernel", nameof(type));
        CheckShape(m, n, k, ldc);
        int elements = GgmlTypeInfo.BlockElements(type);
        if (k % elements != 0) throw new ArgumentException($"{type} rows hold whole blocks of {elements} weights; K={k} is not a multiple of {elements}");
    }

    /// <summary>
    /// <see cref="Run"/> of f16 activations <paramref name="a"/> with weights <paramref name="w"/> of a type that
    /// <see cref="WidensInKernel"/>, <c>[N, K / blockElements]</c> blocks as the file stores them (2-byte aligned), widened to
    /// f16 inside the kernel (<c>gemm_q8_0</c>, <c>gemm_q4_0</c>, …): each weight the f16 that
    /// <see cref="Inference.Kernels.Layer.LayerKernels.DequantizeToHalf"/> writes, so the result equals <see cref="Run"/> over
    /// the widened matrix with the same split-K, bit for bit (barring NaN scales), with no workspace.
    /// </summary>
    /// <exception cref="ArgumentException">See <see cref="CheckBlockShape"/>.</exception>
    public void RunBlocks(GgmlType type, IntPtr a, IntPtr w, IntPtr c, int m, int n, int k, CudaStream? stream = null, int ldc = 0)
    {
        CheckBlockShape(type, m, n, k, ldc);
        Launch(_gemmBlockTypes[InKernelBlockTypes.IndexOf(type)], a, w, c, m, n, k, stream, ldc);
    }

    /// <summary>
    /// <c>y[M, N] = x[M, K] · w[N, K]ᵀ</c> with f32 activations <paramref name="x"/> (staged to f16) and block weights
    /// <paramref name="w"/> of <paramref name="type"/> (<see cref="RunBlocks"/>).
    /// </summary>
    /// <exception cref="ArgumentException">See <see cref="CheckBlockShape"/>; or a view is shorter than its matrix.</exception>
    public void MatMulBlocks(GgmlType type, ArrayView<byte> w, ArrayView<float> x, ArrayView<float> y, int m, int n, int k)
    {
        CheckBlockViews(type, w, y, m, n, k);
        MatMulBlocks(Stage(TensorCoreElement.F16, x, m, k), type, w, y, n);
    }

    private static void CheckBlockViews(GgmlType type, ArrayView<byte> w, ArrayView<float> y, int m, int n, int k)
    {
        CheckBlockShape(type, m, n, k);
        if (y.Length < (long)m * n || w.Length < (long)n * GgmlTypeInfo.RowBytes(type, k))
            throw new ArgumentException("a view is shorter than its matrix");
    }

    /// <summary>One plain product entry (gemm_f16, gemm_bf16, gemm_q8_0, gemm_q4_0, …) over the split-K grid, then the reduce where split.</summary>
    private void Launch(IntPtr function, IntPtr a, IntPtr w, IntPtr c, int m, int n, int k, CudaStream? stream, int ldc)
    {
        if (ldc == 0) ldc = n;
        var t = Tile;
        var (splits, perSplit) = ChooseSplits(m, n, k, _accelerator.NumMultiprocessors);
        IntPtr target = c;
        if (splits > 1)
        {
            long needed = (long)splits * m * n;
            if (_partials is null || _partials.Length < needed)
            {
                _partials?.Dispose();
                _partials = _accelerator.Allocate1D<float>(needed);
            }
            target = ((ArrayView<float>)_partials.View).LoadEffectiveAddressAsPtr();
        }
        uint um = (uint)m, un = (uint)n, uk = (uint)k, us = (uint)perSplit, uldc = (uint)(splits > 1 ? n : ldc);
        void** args = stackalloc void*[8];
        args[0] = &a; args[1] = &w; args[2] = &target; args[3] = &um; args[4] = &un; args[5] = &uk; args[6] = &us; args[7] = &uldc;
        _accelerator.Bind();
        var s = (stream ?? (CudaStream)_accelerator.DefaultStream).StreamPtr;
        Check(CudaAPI.CurrentAPI.LaunchKernel(function,
            (n + t.BlockN - 1) / t.BlockN, (m + t.BlockM - 1) / t.BlockM, splits, t.Threads, 1, 1, 0, s, (IntPtr)args, IntPtr.Zero), "gemm");
        if (splits == 1) return;
        uint count = (uint)(m * n), uSplits = (uint)splits, cLdc = (uint)ldc;
        void** reduceArgs = stackalloc void*[6];
        reduceArgs[0] = &target; reduceArgs[1] = &c; reduceArgs[2] = &count; reduceArgs[3] = &uSplits; reduceArgs[4] = &un; reduceArgs[5] = &cLdc;
        Check(CudaAPI.CurrentAPI.LaunchKernel(_reduce, (int)((count + 255) / 256), 1, 1, 256, 1, 1, 0, s, (IntPtr)reduceArgs, IntPtr.Zero), "gemm_reduce_splits");
    }

    /// <summary>
    /// The grouped product: for each group z, rows <c>starts[z] … starts[z + 1] − 1</c> of c (rows <paramref name="ldc"/>
    /// floats apart, 0: N) = the same rows of a · W_zᵀ with <c>W_z = w + z · n · k</c> elements; other rows of c are not
    /// written. <paramref name="starts"/> is s32 <c>[groups + 1]</c> in device memory, nondecreasing, with
    /// <c>starts[groups] ≤ rows</c> and no group over <paramref name="maxRows"/> rows: the launch depends on
    /// <paramref name="maxRows"/> only, never on the rows of each group. No split-K, so each row equals <see cref="Run"/>
    /// of its group's rows alone when that runs one split. a and w 16-byte aligned; on <paramref name="stream"/> or the default stream.
    /// </summary>
    /// <exception cref="ArgumentException">See <see cref="CheckGroupedShape"/>; or <paramref name="starts"/> is null.</exception>
    public void RunGrouped(TensorCoreElement type, IntPtr a, IntPtr w, IntPtr c, IntPtr starts, int groups, int maxRows, int rows, int n, int k,
        CudaStream? stream = null, int ldc = 0)
    {
        CheckGroupedShape(groups, maxRows, rows, n, k, ldc);
        if (starts == IntPtr.Zero) throw new ArgumentException("the group starts are a null device address", nameof(starts));
        if (ldc == 0) ldc = n;
        var t = Tile;
        uint un = (uint)n, uk = (uint)k, stride = (uint)(n * k), uldc = (uint)ldc;
        void** args = stackalloc void*[8];
        args[0] = &a; args[1] = &w; args[2] = &c; args[3] = &starts; args[4] = &un; args[5] = &uk; args[6] = &stride; args[7] = &uldc;
        _accelerator.Bind();
        var s = (stream ?? (CudaStream)_accelerator.DefaultStream).StreamPtr;
        Check(CudaAPI.CurrentAPI.LaunchKernel(type == TensorCoreElement.F16 ? _groupedF16 : _groupedBf16,
            (n + t.BlockN - 1) / t.BlockN, (maxRows + t.BlockM - 1) / t.BlockM, groups, t.Threads, 1, 1, 0, s, (IntPtr)args, IntPtr.Zero), "gemm_grouped");
    }

    /// <summary>
    /// <see cref="RunGrouped"/> with f32 activations <paramref name="x"/> <c>[rows, k]</c>: converts them to
    /// <paramref name="type"/> in the staging buffer, then runs every group's product, <paramref name="w"/> holding the
    /// groups' <c>[n, k]</c> matrices one after another and <paramref name="y"/> <c>[rows, n]</c>.
    /// </summary>
    /// <exception cref="ArgumentException">See <see cref="CheckGroupedShape"/>; or a view is shorter than its matrix.</exception>
    public void MatMulGrouped(TensorCoreElement type, ArrayView<byte> w, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts,
        int groups, int maxRows, int rows, int n, int k)
    {
        CheckGroupedViews(w, y, starts, groups, maxRows, rows, n, k);
        MatMulGrouped(Stage(type, x, rows, k), w, y, starts, groups, maxRows, n);
    }

    /// <summary>
    /// <see cref="MatMulGrouped(TensorCoreElement, ArrayView{byte}, ArrayView{float}, ArrayView{float}, ArrayView{int}, int, int, int, int, int)"/>
    /// over activations converted before (<see cref="Stage"/>, <c>[rows, k]</c> = <c>[a.M, a.K]</c>): products of several
    /// stacks over the same rows (a block's gate and up) read one conversion, each output bit for bit as with its own.
    /// </summary>
    /// <exception cref="ArgumentException">See <see cref="CheckGroupedShape"/>; or a view is shorter than its matrix.</exception>
    /// <exception cref="InvalidOperationException"><paramref name="a"/> was overwritten by a later conversion.</exception>
    public void MatMulGrouped(in StagedActivations a, ArrayView<byte> w, ArrayView<float> y, ArrayView<int> starts, int groups, int maxRows, int n)
    {
        CheckCurrent(a);
        CheckGroupedViews(w, y, starts, groups, maxRows, a.M, n, a.K);
        RunGrouped(a.Type, a.Address, w.LoadEffectiveAddressAsPtr(), y.LoadEffectiveAddressAsPtr(), starts.LoadEffectiveAddressAsPtr(),
            groups, maxRows, a.M, n, a.K);
    }

    private static void CheckGroupedViews(ArrayView<byte> w, ArrayView<float> y, ArrayView<int> starts, int groups, int maxRows, int rows, int n, int k)
    {
        CheckGroupedShape(groups, maxRows, rows, n, k);
        if (y.Length < (long)rows * n || w.Length < (long)groups * n * k * 2 || starts.Length < groups + 1)
            throw new ArgumentException("a view is shorter than its matrix");
    }

    /// <summary>Test hook: conversions launched (<see cref="Convert"/>, each staging of activations included).</summary>
    internal int ConversionCount { get; private set; }

    /// <summary>Converts <paramref name="count"/> f32 values to 2-byte <paramref name="type"/> values (round to nearest even).</summary>
    public void Convert(TensorCoreElement type, IntPtr src, IntPtr dst, int count, CudaStream? stream = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        uint uc = (uint)count;
        void** args = stackalloc void*[3];
        args[0] = &src; args[1] = &dst; args[2] = &uc;
        _accelerator.Bind();
        var s = (stream ?? (CudaStream)_accelerator.DefaultStream).StreamPtr;
        Check(CudaAPI.CurrentAPI.LaunchKernel(type == TensorCoreElement.F16 ? _convertF16 : _convertBf16,
            (count + 255) / 256, 1, 1, 256, 1, 1, 0, s, (IntPtr)args, IntPtr.Zero), "convert");
        ConversionCount++;
    }

    /// <summary>
    /// <c>y[M, N] = x[M, K] · w[N, K]ᵀ</c> with f32 activations <paramref name="x"/>: converts them to
    /// <paramref name="type"/> in a staging buffer, then runs the product.
    /// </summary>
    public void MatMul(TensorCoreElement type, ArrayView<byte> w, ArrayView<float> x, ArrayView<float> y, int m, int n, int k)
    {
        CheckViews(w, y, m, n, k);
        MatMul(Stage(type, x, m, k), w, y, n);
    }

    /// <summary>
    /// <c>y[M, N] = a · w[N, K]ᵀ</c> over activations converted before (<see cref="Stage"/>, <c>[M, K]</c> =
    /// <c>[a.M, a.K]</c>): products of several matrices over the same input (q, k and v) read one conversion, each output
    /// bit for bit as with its own (the conversion is deterministic).
    /// </summary>
    /// <exception cref="ArgumentException">See <see cref="CheckShape"/>; or a view is shorter than its matrix.</exception>
    /// <exception cref="InvalidOperationException"><paramref name="a"/> was overwritten by a later conversion.</exception>
    public void MatMul(in StagedActivations a, ArrayView<byte> w, ArrayView<float> y, int n)
    {
        CheckCurrent(a);
        CheckViews(w, y, a.M, n, a.K);
        Run(a.Type, a.Address, w.LoadEffectiveAddressAsPtr(), y.LoadEffectiveAddressAsPtr(), a.M, n, a.K);
    }

    /// <summary>
    /// <see cref="RunBlocks"/> over staged f16 activations <paramref name="a"/> (<see cref="Stage"/>): <c>y[M, N] = a · wᵀ</c>
    /// with block weights <paramref name="w"/> of <paramref name="type"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">A later conversion overwrote <paramref name="a"/>.</exception>
    /// <exception cref="ArgumentException">The activations are not f16; see <see cref="CheckBlockShape"/>; or a view is shorter than its matrix.</exception>
    public void MatMulBlocks(in StagedActivations a, GgmlType type, ArrayView<byte> w, ArrayView<float> y, int n)
    {
        CheckCurrent(a);
        if (a.Type != TensorCoreElement.F16) throw new ArgumentException($"block weights multiply f16 activations, not {a.Type}", nameof(a));
        CheckBlockViews(type, w, y, a.M, n, a.K);
        RunBlocks(type, a.Address, w.LoadEffectiveAddressAsPtr(), y.LoadEffectiveAddressAsPtr(), a.M, n, a.K);
    }

    private static void CheckViews(ArrayView<byte> w, ArrayView<float> y, int m, int n, int k)
    {
        CheckShape(m, n, k);
        if (y.Length < (long)m * n || w.Length < (long)n * k * 2)
            throw new ArgumentException("a view is shorter than its matrix");
    }

    /// <summary>
    /// <see cref="StageActivations"/> as a handle the products over it check: valid until the next conversion of
    /// activations (any <see cref="StageActivations"/>, the slab path's included).
    /// </summary>
    public StagedActivations Stage(TensorCoreElement type, ArrayView<float> x, int m, int k)
    {
        IntPtr address = StageActivations(type, x, m, k);
        return new StagedActivations(type, address, m, k, _stagings);
    }

    private void CheckCurrent(in StagedActivations a)
    {
        if (a.Address == IntPtr.Zero || a.Staging != _stagings)
            throw new InvalidOperationException("the staged activations were overwritten by a later conversion (or never staged): stage them again");
    }

    /// <summary>
    /// Converts f32 activations <paramref name="x"/> <c>[m, k]</c> to <paramref name="type"/> in the staging buffer
    /// (grown on first use of a larger product) and returns its address, valid until the next call.
    /// </summary>
    public IntPtr StageActivations(TensorCoreElement type, ArrayView<float> x, int m, int k)
    {
        CheckShape(m, 8, k);
        long count = (long)m * k;
        if (x.Length < count) throw new ArgumentException("the activations are shorter than their matrix");
        if (_staging is null || _staging.Length < count)
        {
            _staging?.Dispose();
            _staging = _accelerator.Allocate1D<ushort>(count);
        }
        IntPtr staging = ((ArrayView<ushort>)_staging.View).LoadEffectiveAddressAsPtr();
        Convert(type, x.LoadEffectiveAddressAsPtr(), staging, (int)count);
        _stagings++;
        return staging;
    }

    /// <summary>
    /// The f16 weight workspace of at least <paramref name="elements"/> halves (the widened slab of a quantized matrix;
    /// see <see cref="Runner.DequantizedSlabs"/>), shared by every matrix of the executor and grown on first use of a
    /// larger slab.
    /// </summary>
    public ArrayView<ushort> Workspace(long elements)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(elements, 1);
        if (_workspace is null || _workspace.Length < elements)
        {
            _workspace?.Dispose();
            _workspace = null;
            _workspace = _accelerator.Allocate1D<ushort>(elements);
        }
        return _workspace.View;
    }

    private static void Check(CudaError error, string what)
    {
        if (error != CudaError.CUDA_SUCCESS)
            throw new InvalidOperationException($"launching {what} failed: {error} ({CudaAPI.CurrentAPI.GetErrorString(error)})");
    }

    public void Dispose()
    {
        _staging?.Dispose();
        _partials?.Dispose();
        _workspace?.Dispose();
        _module.Dispose();
    }
}
