using ILGPU;
using ILGPU.Runtime;
using Inference.Loading;

namespace Inference.Kernels.Layer;

public sealed partial class LayerKernels
{
    private ExpertMatMulKernels? _expertKernels;

    /// <summary>
    /// <see cref="ExpertKernels.Group"/>: the routed slots grouped by expert on the device (the CPU path's order), for
    /// <see cref="MatMulExperts"/> and <see cref="CombineExperts"/>.
    /// </summary>
    /// <param name="chosen">Expert of each slot, <c>[tokenCount, k]</c> (from <see cref="RouteExperts"/>).</param>
    /// <param name="starts">Output, first row of each expert, <c>[experts + 1]</c>.</param>
    /// <param name="rowTokens">Output, token of each row, <c>[tokenCount · k]</c>.</param>
    /// <param name="slotRows">Output, row of each slot, <c>[tokenCount · k]</c>.</param>
    /// <param name="tokenCount">Tokens.</param>
    /// <param name="experts">Experts.</param>
    /// <param name="k">Experts per token.</param>
    public void GroupExperts(ArrayView<int> chosen, ArrayView<int> starts, ArrayView<int> rowTokens, ArrayView<int> slotRows, int tokenCount, int experts, int k)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokenCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(k, experts);
        Experts().Group(experts, chosen, starts, rowTokens, slotRows, tokenCount * k, k);
    }

    /// <summary>
    /// Every expert's product in one launch (<see cref="MatMulKernels"/>' <c>Experts*</c> kernels): expert e's rows
    /// <c>starts[e] … starts[e + 1] − 1</c> of <paramref name="x"/> times its matrix into the same rows of
    /// <paramref name="y"/>; the row kernel of <paramref name="type"/> where the shapes allow (the F32/F16/Q8_0 simple
    /// kernels otherwise), as for one matrix. The launch depends on the shapes and <paramref name="maxRows"/> only.
    /// </summary>
    /// <param name="type">F32, F16, Q8_0 or one of <see cref="KeptBlockTypes"/>.</param>
    /// <param name="weights">The experts' matrices stacked as stored, <c>[experts, rows, row bytes]</c>, starting at an even byte.</param>
    /// <param name="x">Input rows grouped by expert, <c>[maxRows · k, cols]</c> at most.</param>
    /// <param name="y">Output rows, the same grouping, <c>[·, rows]</c>.</param>
    /// <param name="starts">First row of each expert, <c>[experts + 1]</c> (from <see cref="GroupExperts"/>).</param>
    /// <param name="experts">Experts.</param>
    /// <param name="rows">Output features of one expert.</param>
    /// <param name="cols">Input features.</param>
    /// <param name="maxRows">The most rows one expert can have (the step's token count).</param>
    /// <exception cref="ArgumentException">The type is not multiplied on the device, or the shapes do not fit it.</exception>
    public void MatMulExperts(GgmlType type, ArrayView<byte> weights, ArrayView<float> x, ArrayView<float> y, ArrayView<int> starts,
        int experts, int rows, int cols, int maxRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(experts, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRows, 1);
        var k = Experts();
        switch (type)
        {
            case GgmlType.F32:
                var f32 = weights.Cast<float>();
                if (IsWide(cols, 4, f32, 16, x)) k.F32(ExpertRowConfig(rows, maxRows, experts), f32, x, y, starts, rows, cols, _lanesPerRow);
                else k.SimpleF32(ExpertSimpleConfig(rows, maxRows, experts), f32, x, y, starts, rows, cols);
                break;
            case GgmlType.F16:
                var f16 = weights.Cast<ILGPU.Half>();
                if (IsWide(cols, 8, f16, 16, x)) k.F16(ExpertRowConfig(rows, maxRows, experts), f16, x, y, starts, rows, cols, _lanesPerRow);
                else k.SimpleF16(ExpertSimpleConfig(rows, maxRows, experts), f16, x, y, starts, rows, cols);
                break;
            case GgmlType.Q8_0:
                CheckQ8_0(weights, cols);
                if (IsWide(cols, MatMulKernels.Q8BlockElements, weights, 2, x))
                    k.Q8_0(ExpertRowConfig(rows, maxRows, experts), weights.Cast<ushort>(), x, y, starts, rows, cols, _lanesPerRow);
                else
                    k.SimpleQ8_0(ExpertSimpleConfig(rows, maxRows, experts), weights, weights.Cast<ILGPU.Half>(), x, y, starts, rows, cols);
                break;
            default:
                var b = CheckBlocks(type, weights, experts * rows, cols);
                b.Experts(ExpertRowConfig(rows, maxRows, experts), weights.Cast<ushort>(), x, y, starts, rows, cols, _lanesPerRow);
                break;
        }
    }

    private KernelConfig ExpertRowConfig(int rows, int maxRows, int experts)
    {
        int rowsPerGroup = _rowGroupSize / _lanesPerRow;
        return new(new Index3D((rows + rowsPerGroup - 1) / rowsPerGroup, (maxRows + MatMulKernels.BatchChunk - 1) / MatMulKernels.BatchChunk, experts),
            new Index3D(_rowGroupSize, 1, 1));
    }

    private KernelConfig ExpertSimpleConfig(int rows, int maxRows, int experts) =>
        new(new Index3D(rows, maxRows, experts), new Index3D(_groupSize, 1, 1));

    /// <summary>The expert kernels, compiled when a mixture-of-experts block first runs (other models never pay for them).</summary>
    private ExpertMatMulKernels Experts()
    {
        lock (_blockKernels) return _expertKernels ??= new ExpertMatMulKernels(_accelerator);
    }

    private sealed class ExpertMatMulKernels(Accelerator a)
    {
        public readonly Action<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int> Group =
            a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int>(ExpertKernels.Group);

        public readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int> F32 =
            a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int>(MatMulKernels.ExpertsF32);

        public readonly Action<KernelConfig, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int> F16 =
            a.LoadStreamKernel<ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int>(MatMulKernels.ExpertsF16);

        public readonly Action<KernelConfig, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int> Q8_0 =
            a.LoadStreamKernel<ArrayView<ushort>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int>(MatMulKernels.ExpertsQ8_0);

        public readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int> SimpleF32 =
            a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int>(MatMulKernels.ExpertsSimple<float, F32Element>);

        public readonly Action<KernelConfig, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int> SimpleF16 =
            a.LoadStreamKernel<ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int>(MatMulKernels.ExpertsSimple<ILGPU.Half, F16Element>);

        public readonly Action<KernelConfig, ArrayView<byte>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int> SimpleQ8_0 =
            a.LoadStreamKernel<ArrayView<byte>, ArrayView<ILGPU.Half>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int>(MatMulKernels.ExpertsQ8_0Simple);
    }
}
