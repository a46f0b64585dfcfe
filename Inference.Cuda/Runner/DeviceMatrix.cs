using ILGPU;
using ILGPU.Runtime;
using Inference.Backends.Cpu;
using Inference.Kernels.Layer;
using Inference.Loading;

namespace Inference.Cuda.Runner;

/// <summary>
/// A weight matrix in device memory in GGML row layout (one row per output feature): F32, F16, Q8_0 and the block
/// types of <see cref="LayerKernels.KeptBlockTypes"/> (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K … Q6_K, IQ4_XS) are uploaded
/// as they are, so the device holds the file's tensor bytes, and multiplied by row kernels that dequantize in registers;
/// BF16 is widened to F32 on the host at load time (exact; <see cref="Dequantize.Row"/>), any other type to F16.
/// </summary>
/// <remarks>
/// Products of many rows: F16 runs on the tensor-core kernel from <see cref="TensorCoreMinRows"/> rows (an expert stack's
/// from that many tokens, on its grouped form); with
/// <see cref="PtxTensorCoreGemm.QuantizedProducts"/>, Q8_0 and the block types from <see cref="QuantizedTensorCoreMinRows"/>
/// rows run there too: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K on <see cref="PtxTensorCoreGemm.RunBlocks"/>, which reads the blocks
/// as uploaded and widens them to f16 inside the kernel (no workspace); the other block types widened to f16 a slab of rows at a time
/// (<see cref="DequantizedSlabs"/>, <see cref="LayerKernels.DequantizeToHalf"/>) and multiplied slab by slab into their
/// output columns (as llama.cpp's CUDA backend does for large batches). Otherwise they stay on their row kernels for every batch (a group walks <see cref="MatMulKernels.BatchChunk"/>
/// items over the same rows, 4 per weight load, re-reading the row from cache).
/// </remarks>
internal sealed unsafe class DeviceMatrix : IDisposable
{
    private const long StagingBytes = 8 << 20;   // host rows converted per upload
    private readonly MemoryBuffer1D<byte, Stride1D.Dense> _buffer;

    private DeviceMatrix(MemoryBuffer1D<byte, Stride1D.Dense> buffer, GgmlType type, int rows, int cols, int experts)
    {
        _buffer = buffer;
        Type = type;
        Rows = rows;
        Cols = cols;
        Experts = experts;
    }

    /// <summary>The type on the device: F32, F16, Q8_0 or one of <see cref="LayerKernels.KeptBlockTypes"/>.</summary>
    public GgmlType Type { get; }

    /// <summary>Rows of one matrix (of one expert's, for a stack).</summary>
    public int Rows { get; }

    public int Cols { get; }

    /// <summary>Matrices stacked one after another (<see cref="UploadExperts"/>), 1 for an ordinary matrix.</summary>
    public int Experts { get; }

    public long ByteCount => _buffer.Length;

    /// <summary>The device type a stored type is kept in.</summary>
    public static GgmlType DeviceType(GgmlType stored) => stored switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.Q8_0 => stored,
        GgmlType.BF16 => GgmlType.F32,
        _ when LayerKernels.KeepsBlocks(stored) => stored,
        _ => GgmlType.F16,
    };

    public static DeviceMatrix Upload(Accelerator accelerator, in WeightMatrix m) => Upload(accelerator, new ReadOnlySpan<WeightMatrix>(in m));

    /// <summary>
    /// The experts' matrices of one kind (gate, up or down of a block) in one buffer, expert e's rows after expert
    /// e − 1's, for <see cref="MatMulExperts"/>: one launch reaches every expert.
    /// </summary>
    /// <exception cref="NotSupportedException">The experts' matrices differ in type or shape.</exception>
    public static DeviceMatrix UploadExperts(Accelerator accelerator, ReadOnlySpan<WeightMatrix> experts)
    {
        foreach (var m in experts)
            if (m.Type != experts[0].Type || m.Rows != experts[0].Rows || m.Cols != experts[0].Cols)
                throw new NotSupportedException($"the experts' matrices differ ({m.Type} {m.Rows}×{m.Cols} beside {experts[0].Type} {experts[0].Rows}×{experts[0].Cols}); the device runs experts of one type and shape");
        return Upload(accelerator, experts);
    }

    private static DeviceMatrix Upload(Accelerator accelerator, ReadOnlySpan<WeightMatrix> parts)
    {
        var type = DeviceType(parts[0].Type);
        long partBytes = GgmlTypeInfo.RowBytes(type, parts[0].Cols) * parts[0].Rows;
        var buffer = accelerator.Allocate1D<byte>(partBytes * parts.Length);
        try
        {
            for (int i = 0; i < parts.Length; i++) Fill(buffer.View.SubView(i * partBytes, partBytes), type, parts[i]);
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
        return new DeviceMatrix(buffer, type, parts[0].Rows, parts[0].Cols, parts.Length);
    }

    /// <summary>Writes <paramref name="m"/>'s rows as <paramref name="type"/> into <paramref name="dst"/>.</summary>
    private static void Fill(ArrayView<byte> dst, GgmlType type, in WeightMatrix m)
    {
        if (type == m.Type)
        {
            dst.CopyFromCPU(ref *m.Data, dst.Length);
            return;
        }
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, m.Cols);
        int rowsPerChunk = (int)Math.Max(1, StagingBytes / rowBytes);
        var staging = new byte[(long)rowsPerChunk * rowBytes];
        var row = new float[m.Cols];
        for (int r0 = 0; r0 < m.Rows; r0 += rowsPerChunk)
        {
            int count = Math.Min(rowsPerChunk, m.Rows - r0);
            for (int r = 0; r < count; r++)
            {
                Dequantize.Row(m.Type, m.Row(r0 + r), row);
                var span = staging.AsSpan(r * rowBytes, rowBytes);
                if (type == GgmlType.F32) row.AsSpan().CopyTo(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(span));
                else System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(row, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, System.Half>(span));
            }
            dst.SubView((long)r0 * rowBytes, (long)count * rowBytes).CopyFromCPU<byte, ArrayView<byte>>(staging.AsSpan(0, count * rowBytes));
        }
    }

    /// <summary>
    /// Fewest rows (tokens) an F16 product runs on the tensor-core kernel (<see cref="PtxTensorCoreGemm"/>) instead of the
    /// row kernels, which stream the weights once per 4 rows and stay the batch-1 path.
    /// </summary>
    /// <remarks>NOTE: not tuned on a device yet (docs/gpu-results.md lists the crossover as unmeasured).</remarks>
    public const int TensorCoreMinRows = 16;

    /// <summary>Whether <see cref="MatMul"/> with <paramref name="batch"/> rows runs on the tensor-core kernel.</summary>
    public bool UsesTensorCores(PtxTensorCoreGemm? gemm, int batch) =>
        gemm is { F16Products: true } && Type == GgmlType.F16 && batch >= TensorCoreMinRows && Cols % 8 == 0;

    /// <summary>
    /// Fewest rows (tokens) a Q8_0 or block-type product is widened to f16 and run on the tensor-core kernel, with
    /// <see cref="PtxTensorCoreGemm.QuantizedProducts"/>: widening a slab costs a pass over its weights, which the
    /// product of this many rows repays; batch-1 and small batches stay on the row kernels.
    /// </summary>
    /// <remarks>NOTE: not tuned on a device yet (docs/gpu-results.md lists the path as unmeasured).</remarks>
    public const int QuantizedTensorCoreMinRows = 64;

    /// <summary>
    /// Whether <see cref="MatMul"/> with <paramref name="batch"/> rows runs this quantized matrix on the tensor cores:
    /// the types of <see cref="PtxTensorCoreGemm.WidensInKernel"/> widened inside the kernel, the other block types slab by slab.
    /// </summary>
    public bool UsesDequantizedTensorCores(PtxTensorCoreGemm? gemm, int batch) =>
        gemm is { QuantizedProducts: true } && LayerKernels.DequantizesToHalf(Type) && batch >= QuantizedTensorCoreMinRows && Cols % 8 == 0;

    /// <summary><c>y[b, r] = Σ_c W[r, c] · x[b, c]</c>: x <c>[batch, cols]</c>, y <c>[batch, rows]</c>.</summary>
    /// <param name="kernels">The ILGPU layer kernels (row kernels).</param>
    /// <param name="gemm">The tensor-core kernel on CUDA, or null (other accelerators).</param>
    /// <param name="x">Activations.</param>
    /// <param name="y">Output.</param>
    /// <param name="batch">Rows of <paramref name="x"/>.</param>
    public void MatMul(LayerKernels kernels, PtxTensorCoreGemm? gemm, ArrayView<float> x, ArrayView<float> y, int batch)
    {
        ArrayView<byte> w = _buffer.View;
        if (TensorCoreInput(gemm, batch) is { } input)
        {
            gemm!.MatMul(input, w, x, y, batch, Rows, Cols);
            return;
        }
        if (UsesDequantizedTensorCores(gemm, batch))
        {
            if (PtxTensorCoreGemm.WidensInKernel(Type)) gemm!.MatMulBlocks(Type, w, x, y, batch, Rows, Cols);
            else MatMulDequantized(kernels, gemm!, x, y, batch);
            return;
        }
        switch (Type)
        {
            case GgmlType.F32: kernels.MatMul(w.Cast<float>(), x, y, Rows, Cols, batch); break;
            case GgmlType.F16: kernels.MatMul(w.Cast<ILGPU.Half>(), x, y, Rows, Cols, batch); break;
            case GgmlType.Q8_0: kernels.MatMulQ8_0(w, x, y, Rows, Cols, batch); break;
            default: kernels.MatMulBlocks(Type, w, x, y, Rows, Cols, batch); break;
        }
    }

    /// <summary>
    /// Every expert's product of a stack (<see cref="UploadExperts"/>) in one launch: expert e's rows <c>starts[e] …</c>
    /// of x, <c>[·, cols]</c>, into the same rows of y, <c>[·, rows]</c>. An F16 stack with <see cref="UsesTensorCores"/>
    /// at <paramref name="maxRows"/> rows runs on the grouped tensor-core kernel
    /// (<see cref="PtxTensorCoreGemm.MatMulGrouped(TensorCoreElement, ArrayView{byte}, ArrayView{float}, ArrayView{float}, ArrayView{int}, int, int, int, int, int)"/>: x staged to f16, one CTA column of row tiles per expert, tiles
    /// past an expert's rows return at once); any other, and every product without <paramref name="gemm"/>, on the row
    /// kernels (<see cref="LayerKernels.MatMulExperts"/>).
    /// </summary>
    /// <param name="kernels">The ILGPU layer kernels.</param>
    /// <param name="gemm">The tensor-core kernel on CUDA, or null (other accelerators, captured steps).</param>
    /// <param name="x">Input rows grouped by expert.</param>
    /// <param name="y">Output rows.</param>
    /// <param name="starts">First row of each expert, <c>[experts + 1]</c>, on the device.</param>
    /// <param name="rows">Rows of x and y in all (<c>starts[experts]</c>: the step's tokens times the experts each picks).</param>
    /// <param name="maxRows">The most rows one expert can have (the step's token count).</param>
    /// <remarks>
    /// NOTE: both paths launch by <paramref name="rows"/> and <paramref name="maxRows"/> only, never by each expert's row
    /// count, which only the device knows. The choice follows the step's token count as <see cref="MatMul"/>'s follows
    /// its rows (<see cref="TensorCoreMinRows"/>), so a row's f32 rounding depends on the step's size, not on the routing.
    /// BF16 stacks are kept as F32 on the device (<see cref="DeviceType"/>) and so stay on the row kernels.
    /// </remarks>
    public void MatMulExperts(LayerKernels kernels, PtxTensorCoreGemm? gemm, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts, int rows, int maxRows)
    {
        if (TensorCoreInput(gemm, maxRows) is { } input)
        {
            gemm!.MatMulGrouped(input, _buffer.View, x, y, starts, Experts, maxRows, rows, Rows, Cols);
            return;
        }
        kernels.MatMulExperts(Type, _buffer.View, x, y, starts, Experts, Rows, Cols, maxRows);
    }

    /// <summary>
    /// The tensor-core input type <see cref="MatMul"/> with <paramref name="batch"/> rows (<see cref="MatMulExperts"/>
    /// with that many tokens) converts the activations to, or null where it runs elsewhere: the row kernels, or the
    /// quantized tensor-core paths (gemm_q8_0 …, the f16 slabs; a fused op shares gemm_q8_0's staging, <see cref="StagedInput"/>).
    /// </summary>
    public TensorCoreElement? TensorCoreInput(PtxTensorCoreGemm? gemm, int batch) => UsesTensorCores(gemm, batch) ? TensorCoreElement.F16 : null;

    /// <summary>
    /// The input type <see cref="MatMul"/> with <paramref name="batch"/> rows stages the activations to, or null where it
    /// does not stage them: <see cref="TensorCoreInput"/>, and f16 for the block types the tensor-core kernel widens itself
    /// (<see cref="PtxTensorCoreGemm.WidensInKernel"/>); the slab path and the row kernels run on their own.
    /// </summary>
    private TensorCoreElement? StagedInput(PtxTensorCoreGemm? gemm, int batch) =>
        TensorCoreInput(gemm, batch)
        ?? (UsesDequantizedTensorCores(gemm, batch) && PtxTensorCoreGemm.WidensInKernel(Type) ? TensorCoreElement.F16 : null);

    /// <summary>
    /// <c>outputs[i] = x · matrices[i]ᵀ</c> for several matrices over the same activations x <c>[batch, cols]</c> (an
    /// op's q, k and v or gate and up; a mixture-of-experts block's router and shared gate and up), each bit for bit as
    /// its own <see cref="MatMul"/> gives it; the matrices that stage x as one input type (<see cref="StagedInput"/>: the
    /// f16 products and the block types the tensor-core kernel widens itself) read one conversion of x
    /// (<see cref="SharedConversions.Plan"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The spans differ in length, or the matrices in columns.</exception>
    public static void MatMulSameInput(LayerKernels kernels, PtxTensorCoreGemm? gemm, ArrayView<float> x, int batch,
        ReadOnlySpan<DeviceMatrix> matrices, ReadOnlySpan<ArrayView<float>> outputs) =>
        MatMulSameInput(kernels, gemm, x, batch, null, matrices, outputs);

    /// <summary>
    /// <see cref="MatMulExperts"/> of several stacks over the same rows x (a block's gate and up) into
    /// <paramref name="outputs"/>, each bit for bit as its own; the stacks on the grouped tensor-core kernel with one input
    /// type read one conversion of x.
    /// </summary>
    /// <exception cref="ArgumentException">The spans differ in length, or the stacks in columns.</exception>
    public static void MatMulExpertsSameInput(LayerKernels kernels, PtxTensorCoreGemm? gemm, ArrayView<float> x, ArrayView<int> starts,
        int rows, int maxRows, ReadOnlySpan<DeviceMatrix> stacks, ReadOnlySpan<ArrayView<float>> outputs) =>
        MatMulSameInput(kernels, gemm, x, maxRows, new ExpertRows(starts, rows), stacks, outputs);

    /// <summary>The grouping of <see cref="MatMulExperts"/>: first row of each expert, rows in all.</summary>
    private readonly record struct ExpertRows(ArrayView<int> Starts, int Rows);

    // batch: rows of x, or for experts the most rows one expert can have (the step's tokens)
    private static void MatMulSameInput(LayerKernels kernels, PtxTensorCoreGemm? gemm, ArrayView<float> x, int batch, ExpertRows? experts,
        ReadOnlySpan<DeviceMatrix> matrices, ReadOnlySpan<ArrayView<float>> outputs)
    {
        if (outputs.Length != matrices.Length) throw new ArgumentException($"{matrices.Length} matrices but {outputs.Length} outputs", nameof(outputs));
        foreach (var m in matrices)
            if (m.Cols != matrices[0].Cols)
                throw new ArgumentException($"matrices over the same activations have the same columns, not {m.Cols} beside {matrices[0].Cols}", nameof(matrices));
        Span<TensorCoreElement?> inputs = stackalloc TensorCoreElement?[matrices.Length];
        Span<int> convertedBy = stackalloc int[matrices.Length];
        // Expert stacks share only the grouped kernel's input (there is no grouped block-type kernel).
        for (int i = 0; i < matrices.Length; i++) inputs[i] = experts is null ? matrices[i].StagedInput(gemm, batch) : matrices[i].TensorCoreInput(gemm, batch);
        SharedConversions.Plan(inputs, convertedBy);
        for (int i = 0; i < matrices.Length; i++)
        {
            if (convertedBy[i] < 0)
            {
                if (experts is { } e) matrices[i].MatMulExperts(kernels, gemm, x, outputs[i], e.Starts, e.Rows, batch);
                else matrices[i].MatMul(kernels, gemm, x, outputs[i], batch);
                continue;
            }
            if (convertedBy[i] != i) continue;   // ran with the first product of its type
            var a = gemm!.Stage(inputs[i]!.Value, x, experts?.Rows ?? batch, matrices[i].Cols);
            for (int j = i; j < matrices.Length; j++)
            {
                if (convertedBy[j] != i) continue;
                var m = matrices[j];
                if (experts is { } e) gemm.MatMulGrouped(a, m._buffer.View, outputs[j], e.Starts, m.Experts, batch, m.Rows);
                else if (PtxTensorCoreGemm.WidensInKernel(m.Type)) gemm.MatMulBlocks(a, m.Type, m._buffer.View, outputs[j], m.Rows);
                else gemm.MatMul(a, m._buffer.View, outputs[j], m.Rows);
            }
        }
    }

    /// <summary>
    /// The slab path (block types): the activations converted to f16 once, then per slab of rows its weights widened into the shared
    /// workspace and multiplied into columns <c>first .. first + count</c> of <paramref name="y"/> (rows <see cref="Rows"/> apart).
    /// </summary>
    private void MatMulDequantized(LayerKernels kernels, PtxTensorCoreGemm gemm, ArrayView<float> x, ArrayView<float> y, int batch)
    {
        PtxTensorCoreGemm.CheckShape(batch, Rows, Cols);
        if (y.Length < (long)batch * Rows) throw new ArgumentException("the output is shorter than its matrix", nameof(y));
        int slabRows = DequantizedSlabs.SlabRows(Rows, Cols);
        var workspace = gemm.Workspace((long)slabRows * Cols);
        IntPtr a = gemm.StageActivations(TensorCoreElement.F16, x, batch, Cols);
        IntPtr w = workspace.LoadEffectiveAddressAsPtr(), y0 = y.LoadEffectiveAddressAsPtr();
        long rowBytes = GgmlTypeInfo.RowBytes(Type, Cols);
        for (int s = 0, count = DequantizedSlabs.Count(Rows, slabRows); s < count; s++)
        {
            var (first, rows) = DequantizedSlabs.Slab(Rows, slabRows, s);
            kernels.DequantizeToHalf(Type, _buffer.View.SubView(first * rowBytes, rows * rowBytes), workspace, rows, Cols);
            gemm.Run(TensorCoreElement.F16, a, w, y0 + (nint)first * sizeof(float), batch, rows, Cols, ldc: Rows);
        }
    }

    /// <summary>
    /// <c>y[b, r] = act(Σ_c W[r, c] · x[b, c]) · Σ_c U[r, c] · x[b, c]</c> in one row-kernel launch, this matrix being the
    /// gate W and <paramref name="up"/> U; false (nothing launched) where the product runs elsewhere (the tensor-core
    /// kernel, the simple kernels) or the two matrices differ in type or shape.
    /// </summary>
    /// <param name="kernels">The ILGPU layer kernels.</param>
    /// <param name="gemm">The tensor-core kernel on CUDA, or null.</param>
    /// <param name="up">The up projection.</param>
    /// <param name="activation">The gated activation.</param>
    /// <param name="x">Activations, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="batch">Rows of <paramref name="x"/>.</param>
    public bool TryMatMulGlu(LayerKernels kernels, PtxTensorCoreGemm? gemm, DeviceMatrix up, GluActivation activation, ArrayView<float> x, ArrayView<float> y, int batch)
    {
        if (up.Type != Type || up.Rows != Rows || up.Cols != Cols || UsesTensorCores(gemm, batch) || UsesDequantizedTensorCores(gemm, batch)) return false;
        ArrayView<byte> g = _buffer.View, u = up._buffer.View;
        return Type switch
        {
            GgmlType.F32 => kernels.TryMatMulGlu(activation, g.Cast<float>(), u.Cast<float>(), x, y, Rows, Cols, batch),
            GgmlType.F16 => kernels.TryMatMulGlu(activation, g.Cast<ILGPU.Half>(), u.Cast<ILGPU.Half>(), x, y, Rows, Cols, batch),
            _ => kernels.TryMatMulGlu(activation, Type, g, u, x, y, Rows, Cols, batch),
        };
    }

    /// <summary>Embedding rows of <paramref name="ids"/> widened to f32: output <c>[tokenCount, cols]</c>.</summary>
    public void Gather(LayerKernels kernels, ArrayView<int> ids, ArrayView<float> output, int tokenCount)
    {
        ArrayView<byte> w = _buffer.View;
        switch (Type)
        {
            case GgmlType.F32: kernels.Embedding(w.Cast<float>(), ids, output, tokenCount, Cols); break;
            case GgmlType.F16: kernels.Embedding(w.Cast<ILGPU.Half>(), ids, output, tokenCount, Cols); break;
            case GgmlType.Q8_0: kernels.EmbeddingQ8_0(w, ids, output, tokenCount, Cols); break;
            default: kernels.EmbeddingBlocks(Type, w, ids, output, tokenCount, Cols); break;
        }
    }

    public void Dispose() => _buffer.Dispose();
}
