using ILGPU;
using ILGPU.Runtime;
using Inference.Sampling;

namespace Inference.Kernels.Layer;

/// <summary>
/// Runs <see cref="SamplingKernels"/> over rows of device logits described by <see cref="DeviceSamplingRows"/>: the
/// rows' parameters and penalties go up, only the chosen token ids come back.
/// </summary>
/// <remarks>Not thread-safe: one step at a time, on the accelerator's thread.</remarks>
internal sealed class DeviceSampler : IDisposable
{
    private readonly Accelerator _accelerator;
    private readonly int _groupSize;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _expTable;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int> _sample;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int> _penalties;
    private MemoryBuffer1D<int, Stride1D.Dense>? _ints;       // rows' ints, then penalty ints, then tokens
    private MemoryBuffer1D<float, Stride1D.Dense>? _floats;   // rows' floats, then penalty floats

    /// <param name="accelerator">Where the logits live.</param>
    /// <param name="maxGroupSize">Threads per row (rounded down to a power of two the accelerator allows).</param>
    public DeviceSampler(Accelerator accelerator, int maxGroupSize = SamplingKernels.MaxGroupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxGroupSize, 1);
        _accelerator = accelerator;
        _groupSize = KernelGroupSize.For(accelerator, Math.Min(maxGroupSize, SamplingKernels.MaxGroupSize));
        _sample = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int>(SamplingKernels.Sample);
        _penalties = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int>(SamplingKernels.ApplyPenalties);
        _expTable = accelerator.Allocate1D(SamplingMath.ExpTable);
    }

    /// <summary>Threads per row.</summary>
    public int GroupSize => _groupSize;

    /// <summary>
    /// Applies the rows' penalties to <paramref name="logits"/> (in place) and writes each row's choice to
    /// <c>rows.Tokens</c>.
    /// </summary>
    /// <param name="logits">The step's logits, <c>[logit rows, rows.VocabSize]</c>, on this accelerator.</param>
    /// <param name="rows">The rows to choose for.</param>
    public void Run(ArrayView<float> logits, DeviceSamplingRows rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        int n = rows.Count, p = rows.PenaltyCount, vocab = rows.VocabSize;
        if (n == 0) return;
        if (vocab < 1 || vocab > SamplingMath.MaxVocabSize) throw new ArgumentOutOfRangeException(nameof(rows), $"vocabulary size {vocab} is outside [1, {SamplingMath.MaxVocabSize}]");
        for (int r = 0; r < n; r++)
        {
            long end = ((long)rows.Ints[2 * r] + 1) * vocab;
            if (rows.Ints[2 * r] < 0 || end > logits.Length) throw new ArgumentOutOfRangeException(nameof(rows), $"logit row {rows.Ints[2 * r]} is outside the {logits.Length / vocab} rows");
        }
        int intCount = 2 * n + 2 * p + n, floatCount = 4 * n + 2 * p;
        if (_ints is null || _ints.Length < intCount)
        {
            _ints?.Dispose();
            _ints = null;
            _ints = _accelerator.Allocate1D<int>(Math.Max(intCount, 64));
        }
        if (_floats is null || _floats.Length < floatCount)
        {
            _floats?.Dispose();
            _floats = null;
            _floats = _accelerator.Allocate1D<float>(Math.Max(floatCount, 128));
        }
        var ints = _ints.View;
        var floats = _floats.View;
        ((ArrayView<int>)ints.SubView(0, 2 * n)).CopyFromCPU<int, ArrayView<int>>(rows.Ints.AsSpan(0, 2 * n));
        ((ArrayView<float>)floats.SubView(0, 4 * n)).CopyFromCPU<float, ArrayView<float>>(rows.Floats.AsSpan(0, 4 * n));
        if (p > 0)
        {
            var penaltyInts = ints.SubView(2 * n, 2 * p);
            var penaltyFloats = floats.SubView(4 * n, 2 * p);
            ((ArrayView<int>)penaltyInts).CopyFromCPU<int, ArrayView<int>>(rows.PenaltyInts.AsSpan(0, 2 * p));
            ((ArrayView<float>)penaltyFloats).CopyFromCPU<float, ArrayView<float>>(rows.PenaltyFloats.AsSpan(0, 2 * p));
            var stream = _accelerator.DefaultStream;
            _penalties(stream, p, logits, penaltyInts, penaltyFloats, DeviceSamplingRows.Repeat);
            _penalties(stream, p, logits, penaltyInts, penaltyFloats, DeviceSamplingRows.Subtract);
        }
        var tokens = ints.SubView(2 * n + 2 * p, n);
        _sample(new KernelConfig(n, _groupSize), logits, ints.SubView(0, 2 * n), floats.SubView(0, 4 * n), _expTable.View, tokens, vocab);
        ((ArrayView<int>)tokens).CopyToCPU(rows.Tokens.AsSpan(0, n));
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _ints?.Dispose();
        _floats?.Dispose();
        _expTable.Dispose();
    }
}
