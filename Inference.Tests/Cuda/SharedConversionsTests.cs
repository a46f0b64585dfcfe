using ILGPU;
using ILGPU.Runtime;
using Inference.Backends.Cpu;
using Inference.Cuda;
using Inference.Cuda.Runner;
using Inference.Kernels.Layer;
using Inference.Loading;
using Half = System.Half;

namespace Inference.Tests.Cuda;

/// <summary>
/// Products over one input that share a conversion to the tensor-core input type (<see cref="SharedConversions"/>,
/// <see cref="DeviceMatrix.MatMulSameInput"/>), without a GPU: the plan, and on the CPU accelerator (no tensor-core
/// launcher, so every product on its row kernel) the same-input products equal each matrix's own product bit for bit.
/// </summary>
public class SharedConversionsTests
{
    private const TensorCoreElement F16 = TensorCoreElement.F16, BF16 = TensorCoreElement.BF16;
    private static readonly Lazy<LayerKernels> Kernels = new(() => new LayerKernels(DeviceTestAccelerator.Cpu, 1));

    private static (int[] ConvertedBy, int Conversions) Plan(params TensorCoreElement?[] inputs)
    {
        var convertedBy = Enumerable.Repeat(int.MinValue, inputs.Length).ToArray();
        int conversions = SharedConversions.Plan(inputs, convertedBy);
        return (convertedBy, conversions);
    }

    [Test]
    public void Plan_ProductsOfOneType_ReadTheFirstOnesConversion()
    {
        Assert.That(Plan(F16, F16, F16), Is.EqualTo((new[] { 0, 0, 0 }, 1)), "q, k, v");
        Assert.That(Plan(F16, F16), Is.EqualTo((new[] { 0, 0 }, 1)), "gate, up");
        Assert.That(Plan(F16), Is.EqualTo((new[] { 0 }, 1)));
    }

    [Test]
    public void Plan_ProductsOffTheTensorCoreKernel_TakeNoPart()
    {
        Assert.That(Plan(F16, null, F16), Is.EqualTo((new[] { 0, -1, 0 }, 1)));
        Assert.That(Plan(null, F16, F16), Is.EqualTo((new[] { -1, 1, 1 }, 1)), "the first product of the type converts, not the first product");
        Assert.That(Plan(null, null, null), Is.EqualTo((new[] { -1, -1, -1 }, 0)));
        Assert.That(Plan(), Is.EqualTo((Array.Empty<int>(), 0)));
    }

    [Test]
    public void Plan_F16AndBf16_ConvertOnceEach()
    {
        Assert.That(Plan(F16, BF16, F16), Is.EqualTo((new[] { 0, 1, 0 }, 2)));
        Assert.That(Plan(BF16, null, F16, BF16, F16), Is.EqualTo((new[] { 0, -1, 2, 0, 2 }, 2)));
    }

    [Test]
    public void Plan_RefusesTooShortAPlan() =>
        Assert.Throws<ArgumentException>(() => SharedConversions.Plan([F16, F16], new int[1]));

    /// <summary>A device matrix of <paramref name="type"/> from random values in [-1, 1).</summary>
    internal static unsafe DeviceMatrix RandomMatrix(Accelerator acc, Random rng, GgmlType type, int rows, int cols, int experts = 1)
    {
        var parts = new WeightMatrix[experts];
        var bytes = new byte[experts][];
        var handles = new System.Runtime.InteropServices.GCHandle[experts];
        try
        {
            for (int e = 0; e < experts; e++)
            {
                int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
                bytes[e] = new byte[rows * rowBytes];
                var row = new float[cols];
                for (int r = 0; r < rows; r++)
                {
                    for (int c = 0; c < cols; c++) row[c] = rng.NextSingle() * 2 - 1;
                    var dst = bytes[e].AsSpan(r * rowBytes, rowBytes);
                    switch (type)
                    {
                        case GgmlType.F32: row.AsSpan().CopyTo(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(dst)); break;
                        case GgmlType.F16: System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(row, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(dst)); break;
                        case GgmlType.Q8_0: Quantize.RowQ8_0(row, dst); break;
                        default: throw new ArgumentOutOfRangeException(nameof(type), type, "F32, F16 or Q8_0");
                    }
                }
                handles[e] = System.Runtime.InteropServices.GCHandle.Alloc(bytes[e], System.Runtime.InteropServices.GCHandleType.Pinned);
                parts[e] = new WeightMatrix(type, (byte*)handles[e].AddrOfPinnedObject(), rows, cols);
            }
            return experts == 1 ? DeviceMatrix.Upload(acc, parts[0]) : DeviceMatrix.UploadExperts(acc, parts);
        }
        finally
        {
            foreach (var h in handles) if (h.IsAllocated) h.Free();
        }
    }

    internal static float[] RandomActivations(Random rng, long count) =>
        [.. Enumerable.Range(0, (int)count).Select(_ => rng.NextSingle() * 2 - 1)];   // not f16-exact

    internal static void AssertBitwiseEqual(float[] got, float[] expected, string what)
    {
        Assert.That(got, Has.None.NaN, $"{what}: every output written");
        Assert.That(got.Select(BitConverter.SingleToInt32Bits), Is.EqualTo(expected.Select(BitConverter.SingleToInt32Bits)), what);
    }

    /// <summary>q, k and v (of other types too, Q8_0 included) over one input equal each matrix's own product.</summary>
    [TestCase(GgmlType.F16, GgmlType.F16, GgmlType.F16)]
    [TestCase(GgmlType.F16, GgmlType.F32, GgmlType.Q8_0)]
    public void SameInput_OnTheRowKernels_EqualsEachProductAlone(GgmlType q, GgmlType k, GgmlType v)
    {
        var acc = DeviceTestAccelerator.Cpu;
        var rng = new Random(5);
        const int batch = 19, cols = 64;
        int[] rows = [40, 16, 24];
        GgmlType[] types = [q, k, v];
        var matrices = new DeviceMatrix[3];
        var together = new MemoryBuffer1D<float, Stride1D.Dense>[3];
        var alone = new MemoryBuffer1D<float, Stride1D.Dense>[3];
        try
        {
            for (int i = 0; i < 3; i++)
            {
                matrices[i] = RandomMatrix(acc, rng, types[i], rows[i], cols);
                together[i] = acc.Allocate1D(Enumerable.Repeat(float.NaN, batch * rows[i]).ToArray());
                alone[i] = acc.Allocate1D(Enumerable.Repeat(float.NaN, batch * rows[i]).ToArray());
            }
            using var x = acc.Allocate1D(RandomActivations(rng, batch * cols));
            DeviceMatrix.MatMulSameInput(Kernels.Value, null, x.View, batch, matrices, [together[0].View, together[1].View, together[2].View]);
            for (int i = 0; i < 3; i++) matrices[i].MatMul(Kernels.Value, null, x.View, alone[i].View, batch);
            acc.Synchronize();
            for (int i = 0; i < 3; i++) AssertBitwiseEqual(together[i].GetAsArray1D(), alone[i].GetAsArray1D(), $"{"qkv"[i]} ({types[i]})");
        }
        finally
        {
            foreach (var b in together.Concat(alone)) b?.Dispose();
            foreach (var m in matrices) m?.Dispose();
        }
    }

    /// <summary>A block's gate and up stacks over the same gathered rows equal each stack's own grouped product.</summary>
    [Test]
    public void ExpertsSameInput_OnTheRowKernels_EqualsEachStackAlone()
    {
        var acc = DeviceTestAccelerator.Cpu;
        var rng = new Random(6);
        int[] counts = [3, 0, 5, 9];
        const int width = 24, dim = 32;
        int experts = counts.Length, rows = counts.Sum(), maxRows = counts.Max();
        var starts = new int[experts + 1];
        for (int e = 0; e < experts; e++) starts[e + 1] = starts[e] + counts[e];
        using var gate = RandomMatrix(acc, rng, GgmlType.F16, width, dim, experts);
        using var up = RandomMatrix(acc, rng, GgmlType.F16, width, dim, experts);
        using var x = acc.Allocate1D(RandomActivations(rng, rows * dim));
        using var s = acc.Allocate1D(starts);
        var poison = Enumerable.Repeat(float.NaN, rows * width).ToArray();
        using var gateTogether = acc.Allocate1D(poison);
        using var upTogether = acc.Allocate1D(poison);
        using var gateAlone = acc.Allocate1D(poison);
        using var upAlone = acc.Allocate1D(poison);
        DeviceMatrix.MatMulExpertsSameInput(Kernels.Value, null, x.View, s.View, rows, maxRows, [gate, up], [gateTogether.View, upTogether.View]);
        gate.MatMulExperts(Kernels.Value, null, x.View, gateAlone.View, s.View, rows, maxRows);
        up.MatMulExperts(Kernels.Value, null, x.View, upAlone.View, s.View, rows, maxRows);
        acc.Synchronize();
        AssertBitwiseEqual(gateTogether.GetAsArray1D(), gateAlone.GetAsArray1D(), "gate");
        AssertBitwiseEqual(upTogether.GetAsArray1D(), upAlone.GetAsArray1D(), "up");
    }

    [Test]
    public void SameInput_RefusesMismatchedMatricesAndOutputs()
    {
        var acc = DeviceTestAccelerator.Cpu;
        var rng = new Random(7);
        using var a = RandomMatrix(acc, rng, GgmlType.F32, 8, 32);
        using var b = RandomMatrix(acc, rng, GgmlType.F32, 8, 64);
        using var x = acc.Allocate1D<float>(2 * 64);
        using var y = acc.Allocate1D<float>(2 * 8);
        using var y2 = acc.Allocate1D<float>(2 * 8);
        Assert.Throws<ArgumentException>(() => DeviceMatrix.MatMulSameInput(Kernels.Value, null, x.View, 2, [a, a], [y.View]), "one output short");
        Assert.Throws<ArgumentException>(() => DeviceMatrix.MatMulSameInput(Kernels.Value, null, x.View, 2, [a, b], [y.View, y2.View]), "columns differ");
    }
}
