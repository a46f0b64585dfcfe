using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>Matrix products of activations with <see cref="WeightMatrix"/> weights, spread over a <see cref="WorkerPool"/>.</summary>
/// <remarks>
/// <para>What each weight type effectively computes (compare <see cref="MatMulReference"/>):</para>
/// <list type="bullet">
/// <item>F32, F16, BF16: the float dot product with f32 accumulation, F16/BF16 widened exactly in registers.</item>
/// <item>Q8_0, Q4_0: each activation row is first quantized to Q8_0 (per 32 values, scale max|x|/127 rounded to f16,
/// see <see cref="ActivationQuantizer"/>), then block integer dots are scaled by the product of both f16 block scales
/// (exact in f32), as ggml's <c>vec_dot_q8_0_q8_0</c> / <c>vec_dot_q4_0_q8_0</c>. Q8_0 and Q4_0 weights passed through
/// <see cref="Prepare"/> are repacked eight rows at a time (<see cref="PackedQ8_0"/>, <see cref="PackedBlock32{TLayout}"/>): the
/// same exact integer block products, scaled once per block and row.</item>
/// <item>Q5_0, IQ4_NL: Q8_0 activations as for Q4_0; Q4_1, Q5_1: Q8_1 activations (Q8_0's, with the f16 d·Σq per
/// block for the weights' min), as ggml's <c>vec_dot_q4_1_q8_1</c> / <c>vec_dot_q5_1_q8_1</c> (<see cref="Block32Kernel"/>).
/// Weights passed through <see cref="Prepare"/> are repacked eight rows at a time as Q4_0's are
/// (<see cref="PackedBlock32{TLayout}"/>).</item>
/// <item>Q2_K, Q3_K, IQ4_XS: Q8_K activations, as ggml's <c>vec_dot_q2_K_q8_K</c> / <c>vec_dot_q3_K_q8_K</c> /
/// <c>vec_dot_iq4_xs_q8_K</c> (<see cref="SuperBlockKernel"/>). Q2_K, Q3_K and IQ4_XS weights passed through
/// <see cref="Prepare"/> are repacked eight rows at a time (<see cref="PackedQ2_K"/>, <see cref="PackedQ3_K"/>,
/// <see cref="PackedIQ4_XS"/>): the same exact integer super-block sums, scaled once per super-block and row.</item>
/// <item>Q4_K, Q5_K, Q6_K: activations are quantized to Q8_K (per 256 values), as ggml's <c>vec_dot_q4_K_q8_K</c> /
/// <c>vec_dot_q5_K_q8_K</c> / <c>vec_dot_q6_K_q8_K</c>. Weights passed through <see cref="Prepare"/> are repacked eight rows at a time
/// (<see cref="PackedQ4_K"/>, <see cref="PackedQ5_K"/>, <see cref="PackedQ6_K"/>): the same exact integer super-block sums, scaled once per
/// super-block and row.</item>
/// </list>
/// <para>The result therefore differs from the exact product by the activation quantization error (at most half a
/// quantization step per activation, plus for Q8_0 up to 2^-11·max|x| from the f16 scale) plus f32 rounding. Weight rows are split over the pool's threads; each weight
/// row is read from memory once and used for every batch row. A call allocates nothing once its scratch buffers
/// have grown to the largest batch seen on the calling thread.</para>
/// </remarks>
public static class MatMul
{
    [ThreadStatic] private static ActivationScratch? t_scratch;

    /// <summary>
    /// Returns <paramref name="w"/> with a copy of its rows in the layout this machine's fastest kernel reads (with
    /// AVX2: <see cref="PackedQ8_0"/>, <see cref="PackedBlock32{TLayout}"/> (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), <see cref="PackedQ4_K"/>,
    /// <see cref="PackedQ5_K"/>, <see cref="PackedQ6_K"/>, <see cref="PackedQ3_K"/>, <see cref="PackedQ2_K"/>,
    /// <see cref="PackedIQ4_XS"/>), or <paramref name="w"/>
    /// itself when there is none. The copy lives as long as the returned value is reachable; the original memory must
    /// stay valid too.
    /// </summary>
    /// <remarks>F16 rows holding subnormal halves are copied times the power of two that makes them normal (no kernel
    /// then meets a subnormal operand, which costs Intel cores a microcode assist per instruction); the products are
    /// unchanged, but the returned matrix's rows are no longer the stored bytes.</remarks>
    /// <param name="w">The weights.</param>
    /// <returns>The weights to multiply with.</returns>
    public static WeightMatrix Prepare(in WeightMatrix w) => PrepareInto(w, null);

    /// <summary><see cref="Prepare(in WeightMatrix)"/> with the copy in <paramref name="arena"/>, where a model's matrices
    /// share large buffers (huge pages for small matrices too); null for a buffer of this matrix's own. With an arena,
    /// float matrices (read in place otherwise) are copied into it too.</summary>
    internal static unsafe WeightMatrix PrepareInto(in WeightMatrix w, WeightArena? arena)
    {
        if (arena is not null && w.Owner is null && (w.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16) && w.Rows > 0)
        {
            // NOTE: float weights are read in place by the kernels, but a mapped file's pages are 4 KiB: a copy on huge
            // pages saves a TLB miss per 4 KiB of every decode step (F32 benchmark model, 2 threads: fastest step 33.6-34.8
            // -> 30.4-30.8 ms). The file's pages are clean page cache the system can reclaim.
            long bytes = w.Rows * w.RowBytes;
            byte* copy = arena.Allocate(bytes, out var owner);
            Buffer.MemoryCopy(w.Data, copy, bytes, bytes);
            var copied = new WeightMatrix(w.Type, copy, w.Rows, w.Cols) { Owner = owner };
            return w.Type == GgmlType.F16 ? WithHalfFlags(copied, ownsRows: true) : copied;
        }
        if (w.Type == GgmlType.F16 && !w.FiniteHalves) return WithHalfFlags(w, ownsRows: false);
        if (w.Packed is not null || !PackedWeights.IsSupportedFor(w.Type)) return w;
        var pack = new Pack(w, arena);
        PackedWeights.Visit(w.Type, ref pack);
        var packed = pack.Result;
        return packed is null ? w : w with { Packed = packed };
    }

    /// <summary>
    /// F16 rows checked for infinities and NaNs (<see cref="WeightMatrix.FiniteHalves"/>) and multiplied by the power of
    /// two that leaves no subnormal half (<see cref="HalfRescale"/>): in place when <paramref name="ownsRows"/> (a copy
    /// made for the kernels), otherwise in a copy of the matrix's own, the caller's memory staying as it is.
    /// </summary>
    private static unsafe WeightMatrix WithHalfFlags(in WeightMatrix w, bool ownsRows)
    {
        long bytes = w.Rows * w.RowBytes;
        int shift = HalfRescale.Choose((ushort*)w.Data, bytes / 2, out bool finite);
        if (shift == 0) return w with { FiniteHalves = finite };
        var rows = w;
        if (!ownsRows)
        {
            var owner = new WeightBuffer(bytes);
            Buffer.MemoryCopy(w.Data, owner.Data, bytes, bytes);
            rows = new WeightMatrix(w.Type, owner.Data, w.Rows, w.Cols) { Owner = owner };
        }
        HalfRescale.Apply((ushort*)rows.Data, bytes / 2, shift);
        return rows with { FiniteHalves = finite, HalfShift = shift };
    }

    /// <summary>
    /// y[b, r] = Σ_c W[r, c] · x[b, c] for every batch row b &lt; <paramref name="batch"/>.
    /// x is [batch, Cols] and y is [batch, Rows], both row-major.
    /// </summary>
    /// <param name="w">The weights; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or IQ4_XS.</param>
    /// <param name="x">Activations, [batch, Cols].</param>
    /// <param name="y">Receives the outputs, [batch, Rows].</param>
    /// <param name="batch">Number of activation rows (tokens in the step).</param>
    /// <param name="pool">Threads to split the weight rows over.</param>
    /// <exception cref="ArgumentException">A buffer is too short.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batch"/> is negative.</exception>
    /// <exception cref="NotSupportedException">The weight type has no kernel.</exception>
    public static void Multiply(in WeightMatrix w, ReadOnlySpan<float> x, Span<float> y, int batch, WorkerPool pool) =>
        Multiply(w, x, y, batch, pool, KernelPaths.Best);

    /// <summary><see cref="Multiply(in WeightMatrix, ReadOnlySpan{float}, Span{float}, int, WorkerPool)"/> at a forced
    /// instruction-set level (tests run every supported level).</summary>
    internal static unsafe void Multiply(in WeightMatrix w, ReadOnlySpan<float> x, Span<float> y, int batch, WorkerPool pool, KernelPath path)
    {
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        if (!KernelPaths.IsSupported(path)) throw new PlatformNotSupportedException($"kernel path {path} is not supported here");
        if (x.Length < (long)batch * w.Cols) throw new ArgumentException("x is shorter than batch × cols", nameof(x));
        if (y.Length < (long)batch * w.Rows) throw new ArgumentException("y is shorter than batch × rows", nameof(y));
        if (batch == 0 || w.Rows == 0) return;
        int blockElements = GgmlTypeInfo.BlockElements(w.Type);
        if (w.Cols % blockElements != 0)
            throw new ArgumentException($"{w.Cols} columns are not a whole number of {w.Type} blocks", nameof(w));

        fixed (float* px = x)
        fixed (float* py = y)
        {
            PackedRunner runner = default;
            if (w.Packed is not null && PackedWeights.Runs(path) && PackedWeights.Visit(w.Type, ref runner))
            {
                RunPacked(path, px, batch, pool, w, py, runner);
                return;
            }
            switch (w.Type)
            {
                case GgmlType.F32: pool.Run(w.Rows, new FloatJob<F32Weights>(new MatMulArgs(w, px, py, batch, path)), w.Rows * w.RowBytes); break;
                case GgmlType.F16 when w.FiniteHalves && RunsFiniteHalves(path, batch):
                    RunFiniteHalves(w, px, py, batch, pool, path);
                    break;
                case GgmlType.F16: RunHalves(w, px, py, batch, pool, path); break;
                case GgmlType.BF16: pool.Run(w.Rows, new FloatJob<BF16Weights>(new MatMulArgs(w, px, py, batch, path)), w.Rows * w.RowBytes); break;
                case GgmlType.Q8_0: RunQ8_0<Q8_0Kernel>(w, px, py, batch, pool, path); break;
                case GgmlType.Q4_0: RunQ8_0<Q4_0Kernel>(w, px, py, batch, pool, path); break;
                case GgmlType.Q4_K: RunQ8_K<Q4_KKernel>(w, px, py, batch, pool, path); break;
                case GgmlType.Q5_K: RunQ8_K<Q5_KKernel>(w, px, py, batch, pool, path); break;
                case GgmlType.Q4_1: RunQ8_0<Q4_1Kernel>(w, px, py, batch, pool, path, q8_1: true); break;
                case GgmlType.Q5_0: RunQ8_0<Q5_0Kernel>(w, px, py, batch, pool, path); break;
                case GgmlType.Q5_1: RunQ8_0<Q5_1Kernel>(w, px, py, batch, pool, path, q8_1: true); break;
                case GgmlType.IQ4_NL: RunQ8_0<IQ4_NLKernel>(w, px, py, batch, pool, path); break;
                case GgmlType.Q2_K: RunQ8_K<Q2_KKernel>(w, px, py, batch, pool, path); break;
                case GgmlType.Q3_K: RunQ8_K<Q3_KKernel>(w, px, py, batch, pool, path); break;
                case GgmlType.IQ4_XS: RunQ8_K<IQ4_XSKernel>(w, px, py, batch, pool, path); break;
                case GgmlType.Q6_K: RunQ8_K<Q6_KKernel>(w, px, py, batch, pool, path); break;
                default: throw new NotSupportedException($"matmul with {w.Type} weights is not supported");
            }
        }
    }

    /// <summary>
    /// True where F16 products widen finite halves without the re-bias (<see cref="F16FiniteWeights"/>): every batch with
    /// AVX-512 (its tiles all read <see cref="MatMulArgs.XScaled"/>), batch 1 on the AVX2 path.
    /// </summary>
    private static bool RunsFiniteHalves(KernelPath path, int batch) =>
        path == KernelPath.Vector512 || (batch == 1 && KernelPaths.Floats256(path));

    /// <summary>
    /// F16 weights widened in full (<see cref="F16Weights"/>); rows stored times 2^<see cref="WeightMatrix.HalfShift"/>
    /// meet activations times 2^-HalfShift (a scratch copy), the same products.
    /// </summary>
    private static unsafe void RunHalves(in WeightMatrix w, float* x, float* y, int batch, WorkerPool pool, KernelPath path)
    {
        int n = checked(batch * w.Cols);
        x = Unshifted(x, n, w.HalfShift, w.HalfShift == 0 ? null : (t_scratch ??= new ActivationScratch()).EnsureScaled(n));
        pool.Run(w.Rows, new FloatJob<F16Weights>(new MatMulArgs(w, x, y, batch, path)), w.Rows * w.RowBytes);
    }

    /// <summary>The <paramref name="n"/> activations at <paramref name="x"/> as rows stored times 2^<paramref name="shift"/>
    /// (<see cref="WeightMatrix.HalfShift"/>) multiply with: x itself for no shift, else x·2^-shift written to <paramref name="into"/>.</summary>
    private static unsafe float* Unshifted(float* x, int n, int shift, float* into)
    {
        if (shift == 0) return x;
        System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(x, n), MathF.ScaleB(1f, -shift), new Span<float>(into, n));
        return into;
    }

    /// <summary>
    /// Activations against F16 weights without infinities or NaNs (<see cref="F16FiniteWeights"/>): the activations take
    /// the weights' 2^112 re-bias (less their <see cref="WeightMatrix.HalfShift"/>), exact while they are all under
    /// 2^(16 + HalfShift) in size (otherwise, or for NaN activations, the weights are widened in full).
    /// </summary>
    private static unsafe void RunFiniteHalves(in WeightMatrix w, float* x, float* y, int batch, WorkerPool pool, KernelPath path)
    {
        if (!ScaleForFiniteHalves(x, checked(batch * w.Cols), w.HalfShift, out float* xs, out float* scaled))
        {
            RunHalves(w, x, y, batch, pool, path);
            return;
        }
        pool.Run(w.Rows, new FloatJob<F16FiniteWeights>(new MatMulArgs(w, xs, scaled, y, batch, path)), w.Rows * w.RowBytes);
    }

    /// <summary>
    /// The activations <see cref="F16FiniteWeights"/> rows stored times 2^<paramref name="shift"/> multiply with, in this
    /// thread's scratch: <paramref name="scaled"/> = x·2^(112 − shift) for the widened loads and <paramref name="xs"/> =
    /// x·2^-shift for the others (<see cref="Unshifted"/>). False, with nothing written, when some |x| is 2^(16 + shift)
    /// or more or NaN (the scaled copy could overflow).
    /// </summary>
    private static unsafe bool ScaleForFiniteHalves(float* x, int n, int shift, out float* xs, out float* scaled)
    {
        xs = scaled = null;
        var input = new ReadOnlySpan<float>(x, n);
        if (!(MathF.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(input)) < MathF.ScaleB(1f, 16 + shift))) return false;
        scaled = (t_scratch ??= new ActivationScratch()).EnsureScaled(2 * n);
        System.Numerics.Tensors.TensorPrimitives.Multiply(input, MathF.ScaleB(F16FiniteWeights.Load16Scale, -shift), new Span<float>(scaled, n));
        xs = Unshifted(x, n, shift, scaled + n);
        return true;
    }

    private static unsafe void RunQ8_0<TKernel>(in WeightMatrix w, float* x, float* y, int batch, WorkerPool pool, KernelPath path, bool q8_1 = false)
        where TKernel : IQuantKernel
    {
        var s = t_scratch ??= new ActivationScratch();
        s.Ensure(batch, w.Cols);
        var a = new MatMulArgs(w, x, y, batch, path, s.Q, s.D, s.Sums, s.BSums);
        if (q8_1) pool.Run(batch, new QuantizeQ8_1Job(a), 4L * batch * w.Cols);
        else pool.Run(batch, new QuantizeQ8_0Job(a), 4L * batch * w.Cols);
        pool.Run(w.Rows, new QuantJob<TKernel>(a), w.Rows * w.RowBytes);
    }

    /// <summary>
    /// Products of the same activations with two or three matrices (q/k/v, gate/up): y_i = W_i · x. When every matrix is
    /// packed for a kernel that reads the same activation format (Q8_0, Q8_1 or Q8_K: a Q4_K_M layer's Q4_K q and k with
    /// its Q6_K v, say), x is quantized once and all their row groups go to the pool as one job (one hand-off instead of
    /// one per matrix); otherwise it is <see cref="Multiply(in WeightMatrix, ReadOnlySpan{float}, Span{float}, int, WorkerPool)"/>
    /// per matrix. The results are the same bits either way.
    /// </summary>
    /// <remarks>Pass a default <see cref="WeightMatrix"/> (no rows) as <paramref name="w2"/> for two matrices.</remarks>
    internal static unsafe void MultiplyShared(ReadOnlySpan<float> x, int batch, WorkerPool pool,
        in WeightMatrix w0, Span<float> y0, in WeightMatrix w1, Span<float> y1, in WeightMatrix w2, Span<float> y2)
    {
        bool three = w2.Rows > 0;
        bool fused = SharedRunners(w0, w1, w2, out var r0, out var r1, out var r2) && batch > 0 && x.Length >= (long)batch * w0.Cols
                     && y0.Length >= (long)batch * w0.Rows && y1.Length >= (long)batch * w1.Rows && (!three || y2.Length >= (long)batch * w2.Rows);
        if (!fused && TryMultiplySharedFloats(x, batch, pool, w0, y0, w1, y1, w2, y2)) return;
        if (!fused)
        {
            Multiply(w0, x, y0, batch, pool);
            Multiply(w1, x, y1, batch, pool);
            if (three) Multiply(w2, x, y2, batch, pool);
            return;
        }
        fixed (float* px = x)
        fixed (float* p0 = y0)
        fixed (float* p1 = y1)
        fixed (float* p2 = y2)
        {
            RunPacked(KernelPaths.Best, px, batch, pool, w0, p0, r0, w1, p1, r1, w2, p2, r2);
        }
    }

    /// <summary>True when <see cref="MultiplyShared"/> runs these matrices (<paramref name="w2"/> without rows for two) as
    /// one packed job: every one packed, of one width, for kernels that read the same activation format.</summary>
    internal static bool SharesOnePackedJob(in WeightMatrix w0, in WeightMatrix w1, in WeightMatrix w2) => SharedRunners(w0, w1, w2, out _, out _, out _);

    private static bool SharedRunners(in WeightMatrix w0, in WeightMatrix w1, in WeightMatrix w2, out PackedRunner r0, out PackedRunner r1, out PackedRunner r2)
    {
        bool three = w2.Rows > 0;
        r0 = r1 = r2 = default;
        return w0.Packed is not null && w1.Packed is not null && (!three || w2.Packed is not null)
               && w1.Cols == w0.Cols && (!three || w2.Cols == w0.Cols) && PackedWeights.Runs(KernelPaths.Best)
               && PackedWeights.Visit(w0.Type, ref r0) && PackedWeights.Visit(w1.Type, ref r1) && (!three || PackedWeights.Visit(w2.Type, ref r2))
               && r1.Format == r0.Format && (!three || r2.Format == r0.Format);
    }

    /// <summary>
    /// <see cref="MultiplyShared"/> for two or three unpacked float matrices (F32, F16 or BF16) of one type: their rows go
    /// to the pool as one job (one hand-off instead of one per matrix, the small k/v matrices streamed in the same pass as
    /// q), and for finite F16 weights (batch 1, or any batch with AVX-512) the activations take the 2^112 re-bias once. Each row runs the kernel
    /// <see cref="Multiply(in WeightMatrix, ReadOnlySpan{float}, Span{float}, int, WorkerPool)"/> would pick for it, so
    /// the bits are the same; false (nothing done) where the matrices would take different kernels.
    /// </summary>
    internal static unsafe bool TryMultiplySharedFloats(ReadOnlySpan<float> x, int batch, WorkerPool pool,
        in WeightMatrix w0, Span<float> y0, in WeightMatrix w1, Span<float> y1, in WeightMatrix w2, Span<float> y2)
    {
        bool three = w2.Rows > 0;
        var path = KernelPaths.Best;
        if (batch <= 0 || w0.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16) || w0.Packed is not null || w1.Packed is not null
            || w1.Type != w0.Type || w1.Cols != w0.Cols || (three && (w2.Type != w0.Type || w2.Cols != w0.Cols || w2.Packed is not null))
            || x.Length < (long)batch * w0.Cols || y0.Length < (long)batch * w0.Rows || y1.Length < (long)batch * w1.Rows
            || (three && y2.Length < (long)batch * w2.Rows) || w0.Rows == 0 || w1.Rows == 0)
            return false;
        int shift = w0.HalfShift;
        if (w1.HalfShift != shift || (three && w2.HalfShift != shift)) return false;   // the activations would differ
        bool finite = w0.Type == GgmlType.F16 && RunsFiniteHalves(path, batch);
        if (finite && !(w0.FiniteHalves && w1.FiniteHalves && (!three || w2.FiniteHalves)))
        {
            if (w0.FiniteHalves || w1.FiniteHalves || (three && w2.FiniteHalves)) return false;   // the matrices would take different kernels
            finite = false;
        }
        long bytes = w0.Rows * w0.RowBytes + w1.Rows * w1.RowBytes + (three ? w2.Rows * w2.RowBytes : 0);
        int n0 = w0.Rows, n1 = w1.Rows, n2 = three ? w2.Rows : 0;
        fixed (float* px = x)
        fixed (float* p0 = y0)
        fixed (float* p1 = y1)
        fixed (float* p2 = y2)
        {
            int n = checked(batch * w0.Cols);
            if (finite && ScaleForFiniteHalves(px, n, shift, out float* xs, out float* scaled))
            {
                pool.Run(n0 + n1 + n2, new SharedFloatJob<F16FiniteWeights>(new MatMulArgs(w0, xs, scaled, p0, batch, path), n0,
                    new MatMulArgs(w1, xs, scaled, p1, batch, path), n1, new MatMulArgs(w2, xs, scaled, p2, batch, path), n2), bytes);
                return true;
            }
            float* xin = Unshifted(px, n, shift, shift == 0 ? null : (t_scratch ??= new ActivationScratch()).EnsureScaled(n));
            var a0 = new MatMulArgs(w0, xin, p0, batch, path);
            var a1 = new MatMulArgs(w1, xin, p1, batch, path);
            var a2 = new MatMulArgs(w2, xin, p2, batch, path);
            switch (w0.Type)
            {
                case GgmlType.F32: pool.Run(n0 + n1 + n2, new SharedFloatJob<F32Weights>(a0, n0, a1, n1, a2, n2), bytes); break;
                case GgmlType.F16: pool.Run(n0 + n1 + n2, new SharedFloatJob<F16Weights>(a0, n0, a1, n1, a2, n2), bytes); break;
                default: pool.Run(n0 + n1 + n2, new SharedFloatJob<BF16Weights>(a0, n0, a1, n1, a2, n2), bytes); break;
            }
        }
        return true;
    }

    /// <summary>The rows of one to three float matrices as one item range, in order (n2 = 0 when absent).</summary>
    private readonly struct SharedFloatJob<TW>(MatMulArgs a0, int n0, MatMulArgs a1, int n1, MatMulArgs a2, int n2) : IRangeJob
        where TW : IFloatWeights
    {
        public void Execute(int start, int end)
        {
            if (start < n0) FloatMatMulKernel.Rows<TW>(a0, start, Math.Min(end, n0));
            if (end > n0 && start < n0 + n1) FloatMatMulKernel.Rows<TW>(a1, Math.Max(start, n0) - n0, Math.Min(end, n0 + n1) - n0);
            if (n2 > 0 && end > n0 + n1) FloatMatMulKernel.Rows<TW>(a2, Math.Max(start, n0 + n1) - n0 - n1, Math.Min(end, n0 + n1 + n2) - n0 - n1);
        }
    }

    private struct Pack(WeightMatrix w, WeightArena? arena) : IPackedKernelVisitor
    {
        public PackedWeights? Result;

        public void Visit<TKernel>() where TKernel : IPackedKernel => Result = PackedWeights.Pack<TKernel>(w, arena);
    }

    /// <summary>The activations a packed kernel multiplies: Q8_0, Q8_1 (Q8_0 with the scaled sums) or Q8_K.</summary>
    private enum ActivationFormat
    {
        Q8_0,
        Q8_1,
        Q8_K,
    }

    /// <summary>A packed weight type's activation format and its row-group runner (<see cref="PackedWeights.Run{TKernel}"/>
    /// for that kernel), so that one job can run matrices of different packed types.</summary>
    private unsafe struct PackedRunner : IPackedKernelVisitor
    {
        public delegate*<PackedWeights, in MatMulArgs, int, int, void> Run;
        public ActivationFormat Format;

        public void Visit<TKernel>() where TKernel : IPackedKernel
        {
            Run = &RunGroups<TKernel>;
            Format = TKernel.ActivationBlock != 32 ? ActivationFormat.Q8_K : TKernel.MinActivations ? ActivationFormat.Q8_1 : ActivationFormat.Q8_0;
        }

        private static void RunGroups<TKernel>(PackedWeights packed, in MatMulArgs a, int start, int end) where TKernel : IPackedKernel =>
            packed.Run<TKernel>(a, start, end);
    }

    /// <summary>Quantizes x once in the format of <paramref name="r0"/> (which <paramref name="r1"/> and <paramref name="r2"/>
    /// share) and runs the row groups of one to three packed matrices (w1, w2 default when absent) as one pool job.</summary>
    private static unsafe void RunPacked(KernelPath path, float* x, int batch, WorkerPool pool, in WeightMatrix w0, float* y0, in PackedRunner r0,
        in WeightMatrix w1 = default, float* y1 = null, in PackedRunner r1 = default, in WeightMatrix w2 = default, float* y2 = null,
        in PackedRunner r2 = default)
    {
        var s = t_scratch ??= new ActivationScratch();
        s.Ensure(batch, w0.Cols);
        var a0 = new MatMulArgs(w0, x, y0, batch, path, s.Q, s.D, s.Sums, s.BSums);
        switch (r0.Format)
        {
            case ActivationFormat.Q8_K: pool.Run(batch, new QuantizeQ8_KJob(a0), 4L * batch * w0.Cols); break;
            case ActivationFormat.Q8_1: pool.Run(batch, new QuantizeQ8_1Job(a0), 4L * batch * w0.Cols); break;
            default: pool.Run(batch, new QuantizeQ8_0Job(a0), 4L * batch * w0.Cols); break;
        }
        var a1 = new MatMulArgs(w1, x, y1, batch, path, s.Q, s.D, s.Sums, s.BSums);
        var a2 = new MatMulArgs(w2, x, y2, batch, path, s.Q, s.D, s.Sums, s.BSums);
        int n0 = w0.Packed!.ItemCount(w0.Rows), n1 = w1.Packed?.ItemCount(w1.Rows) ?? 0, n2 = w2.Packed?.ItemCount(w2.Rows) ?? 0;
        pool.Run(n0 + n1 + n2, new PackedJob(new PackedPart(a0, w0.Packed, n0, r0.Run), new PackedPart(a1, w1.Packed, n1, r1.Run),
            new PackedPart(a2, w2.Packed, n2, r2.Run)), w0.Rows * w0.RowBytes + w1.Rows * w1.RowBytes + w2.Rows * w2.RowBytes);
    }

    private static unsafe void RunQ8_K<TKernel>(in WeightMatrix w, float* x, float* y, int batch, WorkerPool pool, KernelPath path)
        where TKernel : IQuantKernel
    {
        var s = t_scratch ??= new ActivationScratch();
        s.Ensure(batch, w.Cols);
        var a = new MatMulArgs(w, x, y, batch, path, s.Q, s.D, s.Sums, s.BSums);
        pool.Run(batch, new QuantizeQ8_KJob(a), 4L * batch * w.Cols);
        pool.Run(w.Rows, new QuantJob<TKernel>(a), w.Rows * w.RowBytes);
    }

    private readonly struct FloatJob<TW>(MatMulArgs a) : IRangeJob where TW : IFloatWeights
    {
        public void Execute(int start, int end) => FloatMatMulKernel.Rows<TW>(a, start, end);
    }

    private readonly struct QuantJob<TKernel>(MatMulArgs a) : IRangeJob where TKernel : IQuantKernel
    {
        public void Execute(int start, int end) => QuantKernel.Rows<TKernel>(a, start, end);
    }

    /// <summary>One packed matrix of a <see cref="PackedJob"/>: its arguments, groups, item count and runner (no items when absent).</summary>
    private readonly unsafe struct PackedPart(MatMulArgs a, PackedWeights? packed, int items, delegate*<PackedWeights, in MatMulArgs, int, int, void> run)
    {
        public readonly MatMulArgs A = a;
        public readonly PackedWeights? Packed = packed;
        public readonly int Items = items;
        public readonly delegate*<PackedWeights, in MatMulArgs, int, int, void> Run = run;
    }

    /// <summary>The row groups of one to three packed matrices as one item range, in order (p1, p2 without items when absent).</summary>
    private readonly unsafe struct PackedJob(PackedPart p0, PackedPart p1, PackedPart p2) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int n0 = p0.Items, n1 = p1.Items, n2 = p2.Items;
            if (start < n0) p0.Run(p0.Packed!, p0.A, start, Math.Min(end, n0));
            if (n1 > 0 && end > n0 && start < n0 + n1) p1.Run(p1.Packed!, p1.A, Math.Max(start, n0) - n0, Math.Min(end, n0 + n1) - n0);
            if (n2 > 0 && end > n0 + n1) p2.Run(p2.Packed!, p2.A, Math.Max(start, n0 + n1) - n0 - n1, Math.Min(end, n0 + n1 + n2) - n0 - n1);
        }
    }

    private readonly unsafe struct QuantizeQ8_0Job(MatMulArgs a) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int cols = a.Cols;
            for (long b = start; b < end; b++)
                ActivationQuantizer.RowQ8_0(a.X + b * cols, cols, a.Batch, a.Q + 32 * b, a.D + b, a.Sums + b, a.Path);
        }
    }

    private readonly unsafe struct QuantizeQ8_1Job(MatMulArgs a) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int cols = a.Cols;
            for (long b = start; b < end; b++)
                ActivationQuantizer.RowQ8_1(a.X + b * cols, cols, a.Batch, a.Q + 32 * b, a.D + b, a.Sums + b, a.Path);
        }
    }

    private readonly unsafe struct QuantizeQ8_KJob(MatMulArgs a) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int cols = a.Cols;
            for (long b = start; b < end; b++)
                ActivationQuantizer.RowQ8_K(a.X + b * cols, cols, a.Batch, a.Q + 256 * b, a.D + b, a.BSums + 16 * b, a.Path);
        }
    }

    /// <summary>Quantized activations of one call, block-interleaved (<c>[block, batch, values]</c>), grown to the largest batch × cols seen and pinned for life.</summary>
    private sealed unsafe class ActivationScratch
    {
        private sbyte[] _q = [];
        private float[] _d = [];
        private int[] _sums = [];
        private short[] _bsums = [];
        private float[] _scaled = [];

        public sbyte* Q { get; private set; }
        public float* D { get; private set; }
        public int* Sums { get; private set; }
        public short* BSums { get; private set; }

        /// <summary>Room for <paramref name="floats"/> scaled activations.</summary>
        public float* EnsureScaled(int floats)
        {
            if (_scaled.Length < floats) _scaled = GC.AllocateUninitializedArray<float>((floats + 255) & ~255, pinned: true);
            return (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_scaled));
        }

        public void Ensure(int batch, int cols)
        {
            long values = (long)batch * cols;
            if (values <= _q.Length) return;
            // NOTE: grow with headroom so a prefill of slowly increasing size does not reallocate every step.
            int n = checked((int)Math.Max(values, (long)_q.Length * 3 / 2));
            n = (n + 255) & ~255;
            _q = GC.AllocateUninitializedArray<sbyte>(n, pinned: true);
            _d = GC.AllocateUninitializedArray<float>(n / 32, pinned: true);
            _sums = GC.AllocateUninitializedArray<int>(n / 32, pinned: true);
            _bsums = GC.AllocateUninitializedArray<short>(n / 16, pinned: true);
            Q = (sbyte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_q));
            D = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_d));
            Sums = (int*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_sums));
            BSums = (short*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_bsums));
        }
    }
}
