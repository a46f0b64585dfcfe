using ILGPU;
using ILGPU.Runtime;
using Inference.Loading;

namespace Inference.Kernels.Layer;

/// <summary>The fused kernels of a decode step, compiled on first use (a backend that never fuses pays nothing).</summary>
public sealed partial class LayerKernels
{
    private Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>? _addRmsNorm;
    private Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, RopeKvShape>? _ropeKvF32;
    private Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, RopeKvShape>? _ropeKvF16;
    // The fused GLU kernels by activation (GluSlot), the block forms by block type (the kept types, then Q8_0) then
    // activation: read without a lock on every launch, written once under one.
    private readonly Action<KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int>?[] _glu =
        new Action<KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int>?[(KeptBlockTypes.Length + 1) * 2];
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>?[] _gluF32 =
        new Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>?[2];
    private readonly Action<KernelConfig, ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int, int, int>?[] _gluF16 =
        new Action<KernelConfig, ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int, int, int>?[2];

    /// <summary>
    /// <see cref="RmsNormKernels.AddRmsNorm"/>: <c>x += delta</c>, then <c>output = rmsnorm(x) ⊙ weight</c>, over
    /// <paramref name="rows"/> rows of <paramref name="dim"/> (the bits of <see cref="Add"/> then <see cref="RmsNorm"/>).
    /// </summary>
    /// <param name="x">Residual stream, <c>[rows, dim]</c>, updated.</param>
    /// <param name="delta">Addend, <c>[rows, dim]</c>.</param>
    /// <param name="weight">Scale, <c>[dim]</c>.</param>
    /// <param name="output">Output, <c>[rows, dim]</c> (may be <paramref name="delta"/>).</param>
    /// <param name="rows">Rows.</param>
    /// <param name="dim">Row length.</param>
    /// <param name="epsilon">Added to the mean square.</param>
    public void AddRmsNorm(ArrayView<float> x, ArrayView<float> delta, ArrayView<float> weight, ArrayView<float> output, int rows, int dim, float epsilon)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(dim, 1);
        var kernel = _addRmsNorm ??= _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(RmsNormKernels.AddRmsNorm);
        kernel(new KernelConfig(rows, _groupSize), x, delta, weight, output, dim, epsilon);
    }

    /// <summary>
    /// <see cref="RopeKvKernels.WriteF32"/>: RoPE of <paramref name="q"/> in place and of <paramref name="k"/> into the
    /// f32 cache with <paramref name="v"/>, in one launch.
    /// </summary>
    /// <param name="q">Queries, <c>[tokenCount, queryHeads, headDim]</c>, rotated (and scaled) in place.</param>
    /// <param name="k">Keys, <c>[tokenCount, kvHeads, headDim]</c> (not modified).</param>
    /// <param name="v">Values, same shape.</param>
    /// <param name="cos">cos θ, <c>[tokenCount, rotaryDim / 2]</c>.</param>
    /// <param name="sin">sin θ, same shape.</param>
    /// <param name="slots">Slot per token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache, same shape.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="shape">Heads, dimensions, pairing and the query factor.</param>
    /// <exception cref="ArgumentException">The rotary dimension is odd, not positive or larger than the head.</exception>
    public void RopeWriteKv(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> cos, ArrayView<float> sin, ArrayView<int> slots,
        ArrayView<float> kCache, ArrayView<float> vCache, int tokenCount, RopeKvShape shape)
    {
        CheckRopeKv(shape);
        var kernel = _ropeKvF32 ??= _accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<int>, ArrayView<float>, ArrayView<float>, RopeKvShape>(RopeKvKernels.WriteF32);
        kernel(new Index2D(shape.ItemsPerToken, tokenCount), q, k, v, cos, sin, slots, kCache, vCache, shape);
    }

    /// <summary><see cref="RopeKvKernels.WriteF16"/>: as the f32 overload, into an f16 cache.</summary>
    /// <param name="q">Queries, <c>[tokenCount, queryHeads, headDim]</c>, rotated (and scaled) in place.</param>
    /// <param name="k">Keys, <c>[tokenCount, kvHeads, headDim]</c> (not modified).</param>
    /// <param name="v">Values, same shape.</param>
    /// <param name="cos">cos θ, <c>[tokenCount, rotaryDim / 2]</c>.</param>
    /// <param name="sin">sin θ, same shape.</param>
    /// <param name="slots">Slot per token, <c>[tokenCount]</c>.</param>
    /// <param name="kCache">Key cache, <c>[slotCount, kvDim]</c>.</param>
    /// <param name="vCache">Value cache, same shape.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="shape">Heads, dimensions, pairing and the query factor.</param>
    /// <exception cref="ArgumentException">The rotary dimension is odd, not positive or larger than the head.</exception>
    public void RopeWriteKv(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> cos, ArrayView<float> sin, ArrayView<int> slots,
        ArrayView<ILGPU.Half> kCache, ArrayView<ILGPU.Half> vCache, int tokenCount, RopeKvShape shape)
    {
        CheckRopeKv(shape);
        var kernel = _ropeKvF16 ??= _accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<int>, ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, RopeKvShape>(RopeKvKernels.WriteF16);
        kernel(new Index2D(shape.ItemsPerToken, tokenCount), q, k, v, cos, sin, slots, kCache, vCache, shape);
    }

    private static void CheckRopeKv(RopeKvShape shape)
    {
        if (shape.RotaryDim <= 0 || shape.RotaryDim % 2 != 0 || shape.RotaryDim > shape.HeadDim)
            throw new ArgumentException("rotaryDim must be even, positive and at most headDim.", nameof(shape));
        ArgumentOutOfRangeException.ThrowIfLessThan(shape.QueryHeads, 1, nameof(shape));
        ArgumentOutOfRangeException.ThrowIfLessThan(shape.KvHeads, 1, nameof(shape));
    }

    /// <summary>
    /// <see cref="MatMulKernels.GluF32{TAct}"/>: <c>y = act(gate · x) ⊙ (up · x)</c> on the row kernels, when they take
    /// the shape (as <see cref="MatMul(ArrayView{float}, ArrayView{float}, ArrayView{float}, int, int, int)"/> decides);
    /// otherwise nothing is launched and the caller runs the two products and the activation.
    /// </summary>
    /// <param name="activation">The gated activation.</param>
    /// <param name="gate">Gate weights, <c>[rows, cols]</c>.</param>
    /// <param name="up">Up weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    /// <param name="batch">Input rows.</param>
    /// <returns>Whether the fused kernel ran.</returns>
    public bool TryMatMulGlu(GluActivation activation, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        if (!IsWide(cols, 4, gate, 16, x) || !IsWide(cols, 4, up, 16, x)) return false;
        var kernel = Volatile.Read(ref _gluF32[GluSlot(activation)]) ?? LoadGluF32(activation);
        kernel(RowConfig(rows, batch), gate, up, x, y, rows, cols, batch, _lanesPerRow);
        return true;
    }

    /// <summary><see cref="MatMulKernels.GluF16{TAct}"/>: as the F32 overload, F16 weights.</summary>
    /// <param name="activation">The gated activation.</param>
    /// <param name="gate">Gate weights, <c>[rows, cols]</c>.</param>
    /// <param name="up">Up weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    /// <param name="batch">Input rows.</param>
    /// <returns>Whether the fused kernel ran.</returns>
    public bool TryMatMulGlu(GluActivation activation, ArrayView<ILGPU.Half> gate, ArrayView<ILGPU.Half> up, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        if (!IsWide(cols, 8, gate, 16, x) || !IsWide(cols, 8, up, 16, x)) return false;
        var kernel = Volatile.Read(ref _gluF16[GluSlot(activation)]) ?? LoadGluF16(activation);
        kernel(RowConfig(rows, batch), gate, up, x, y, rows, cols, batch, _lanesPerRow);
        return true;
    }

    /// <summary>
    /// <see cref="MatMulKernels.GluQ8_0{TAct}"/> for Q8_0, else the block row kernel's fused form for
    /// <paramref name="type"/> (one of <see cref="KeptBlockTypes"/>): <c>y = act(gate · x) ⊙ (up · x)</c> when the row
    /// kernels take the shape; otherwise nothing is launched.
    /// </summary>
    /// <param name="activation">The gated activation.</param>
    /// <param name="type">Q8_0 or a kept block type.</param>
    /// <param name="gate">Gate weights' raw blocks, starting at an even byte.</param>
    /// <param name="up">Up weights' raw blocks, same shape.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features (whole blocks).</param>
    /// <param name="batch">Input rows.</param>
    /// <returns>Whether the fused kernel ran.</returns>
    /// <exception cref="ArgumentException">As <see cref="MatMulQ8_0"/> or <see cref="MatMulBlocks"/>.</exception>
    public bool TryMatMulGlu(GluActivation activation, GgmlType type, ArrayView<byte> gate, ArrayView<byte> up, ArrayView<float> x, ArrayView<float> y, int rows, int cols, int batch)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        int typeIndex;
        if (type == GgmlType.Q8_0)
        {
            CheckQ8_0(gate, cols);
            CheckQ8_0(up, cols);
            if (!IsWide(cols, MatMulKernels.Q8BlockElements, gate, 2, x) || !IsWide(cols, MatMulKernels.Q8BlockElements, up, 2, x)) return false;
            typeIndex = KeptBlockTypes.Length;
        }
        else
        {
            typeIndex = CheckBlockIndex(type, gate, rows, cols);
            CheckBlockIndex(type, up, rows, cols);
        }
        int slot = typeIndex * 2 + GluSlot(activation);
        var kernel = Volatile.Read(ref _glu[slot]) ?? LoadGluBlocks(slot, type, activation);
        kernel(RowConfig(rows, batch), gate.Cast<ushort>(), up.Cast<ushort>(), x, y, rows, cols, batch, _lanesPerRow);
        return true;
    }

    /// <summary>The slot of <paramref name="activation"/> in the GLU kernel arrays: Silu 0, anything else GELU-tanh (1).</summary>
    private static int GluSlot(GluActivation activation) => activation == GluActivation.Silu ? 0 : 1;

    private Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> LoadGluF32(GluActivation activation)
    {
        lock (_gluF32)
        {
            return _gluF32[GluSlot(activation)] ??= activation == GluActivation.Silu
                ? _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.GluF32<SiluGlu>)
                : _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.GluF32<GeluTanhGlu>);
        }
    }

    private Action<KernelConfig, ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int, int, int> LoadGluF16(GluActivation activation)
    {
        lock (_gluF16)
        {
            return _gluF16[GluSlot(activation)] ??= activation == GluActivation.Silu
                ? _accelerator.LoadStreamKernel<ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.GluF16<SiluGlu>)
                : _accelerator.LoadStreamKernel<ArrayView<ILGPU.Half>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.GluF16<GeluTanhGlu>);
        }
    }

    private Action<KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> LoadGluBlocks(
        int slot, GgmlType type, GluActivation activation)
    {
        lock (_glu)
        {
            return _glu[slot] ??= activation == GluActivation.Silu ? LoadGlu<SiluGlu>(type) : LoadGlu<GeluTanhGlu>(type);
        }
    }

    private Action<KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> LoadGlu<TAct>(GgmlType type)
        where TAct : struct, IGluActivation =>
        type == GgmlType.Q8_0 ? LoadGlu(MatMulKernels.GluQ8_0<TAct>)
        : ForBlockType<GluLoader<TAct>, Action<KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int>>(
            type, new GluLoader<TAct>(_accelerator));

    /// <summary><see cref="MatMulKernels.GluBlocks{TBlock, TAct}"/> of a block type (through <see cref="ForBlockType"/>).</summary>
    private readonly struct GluLoader<TAct>(Accelerator accelerator)
        : IBlockTypeLoader<Action<KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int>>
        where TAct : struct, IGluActivation
    {
        public Action<KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> Load<TBlock>()
            where TBlock : struct, MatMulKernels.IWeightBlock
        {
            Action<ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> kernel = MatMulKernels.GluBlocks<TBlock, TAct>;
            return accelerator.LoadStreamKernel(kernel);
        }
    }

    private Action<KernelConfig, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> LoadGlu(
        Action<ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, int, int, int> kernel) =>
        _accelerator.LoadStreamKernel(kernel);
}
