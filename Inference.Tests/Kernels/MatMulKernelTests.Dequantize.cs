using ILGPU;
using ILGPU.Runtime;
using Inference.Backends.Cpu;
using Inference.Kernels.Layer;
using Inference.Loading;
using Half = System.Half;

namespace Inference.Tests.Kernels;

/// <summary>
/// The device dequantizer to f16 (<see cref="LayerKernels.DequantizeToHalf"/>) against the host: every kept block type
/// and Q8_0, random block bytes with random f16 scales and mins drawn from every finite bit pattern (subnormal, tiny and
/// large values, so products overflow f16 and round into its subnormals), several row lengths and row counts; the output
/// must equal, bit for bit, <see cref="Dequantize.Row"/> followed by the round-to-nearest-even conversion an F16 upload
/// makes; the halves around the output are poisoned and must stay so.
/// </summary>
public partial class MatMulKernelTests
{
    private static IEnumerable<TestCaseData> DequantizeCases()
    {
        foreach (var type in LayerKernels.KeptBlockTypes.ToArray().Prepend(GgmlType.Q8_0))
        {
            GgmlTypeInfo.TryGetBlock(type, out int qk, out _);
            yield return new TestCaseData(type, 1, qk);
            yield return new TestCaseData(type, 3, 3 * qk);
            yield return new TestCaseData(type, 7, qk == 32 ? 32 * 9 : 512);
        }
    }

    [TestCaseSource(nameof(DequantizeCases))]
    public void DequantizeToHalf_IsTheHostDequantizerRoundedToHalf(GgmlType type, int rows, int cols)
    {
        var kernels = Kernel[Layout.Thread1Row].Value;
        var rng = new Random(HashCode.Combine(type, rows, cols, 17));
        var blocks = RandomBlocksAnyScale(rng, type, rows, cols);
        var expected = HostHalves(type, blocks, rows, cols);

        const int guard = 6;   // poisoned halves before (the output starts 8 bytes in) and after the output
        var poisoned = new ushort[guard + rows * cols + guard];
        Array.Fill(poisoned, (ushort)0x7E5A);
        var acc = kernels.Accelerator;
        using var wb = acc.Allocate1D(blocks);
        using var ob = acc.Allocate1D(poisoned);
        kernels.DequantizeToHalf(type, wb.View, ob.View.SubView(4, (long)rows * cols), rows, cols);
        acc.Synchronize();
        var actual = ob.GetAsArray1D();
        Assert.That(actual[..4], Is.All.EqualTo((ushort)0x7E5A), "written before the output");
        Assert.That(actual[(4 + rows * cols)..], Is.All.EqualTo((ushort)0x7E5A), "written past the output");
        var got = actual.AsSpan(4, rows * cols).ToArray();
        int mismatches = 0, first = -1;
        for (int i = 0; i < got.Length; i++)
            if (got[i] != expected[i]) { mismatches++; if (first < 0) first = i; }
        Assert.That(mismatches, Is.Zero, () => $"{type} {rows}x{cols}: {mismatches} halves differ, the first at {first} " +
            $"(row {first / cols}, column {first % cols}): 0x{got[first]:X4} against the host's 0x{expected[first]:X4}");
        int special = expected.Count(h => (h & 0x7C00) == 0x7C00 || (h & 0x7C00) == 0);
        TestContext.Out.WriteLine($"{type} {rows}x{cols}: {special} of {expected.Length} values infinite, subnormal or zero");
    }

    [Test]
    public void DequantizeToHalf_RejectsOtherTypesAndBadViews()
    {
        var kernels = Kernel[Layout.Thread1Row].Value;
        using var wb = kernels.Accelerator.Allocate1D<byte>(2 * 144 + 2);
        using var ob = kernels.Accelerator.Allocate1D<ushort>(1024);
        var w = wb.View;
        var o = ob.View;
        Assert.Multiple(() =>
        {
            Assert.Throws<ArgumentException>(() => kernels.DequantizeToHalf(GgmlType.F16, w, o, 1, 256), "F16 is not dequantized");
            Assert.Throws<ArgumentException>(() => kernels.DequantizeToHalf(GgmlType.Q4_K, Skip<byte>(w, 1), o, 1, 256), "odd byte");
            Assert.Throws<ArgumentException>(() => kernels.DequantizeToHalf(GgmlType.Q4_K, w, o, 1, 128), "half a block");
            Assert.Throws<ArgumentException>(() => kernels.DequantizeToHalf(GgmlType.Q4_K, w, o, 3, 256), "too few bytes");
            Assert.Throws<ArgumentException>(() => kernels.DequantizeToHalf(GgmlType.Q4_K, w, o.SubView(0, 300), 2, 256), "output too short");
            Assert.Throws<ArgumentException>(() => kernels.DequantizeToHalf(GgmlType.Q4_K, w, Skip<ushort>(o, 1), 1, 256), "output not 4-byte aligned");
        });
    }

    /// <summary>The integer conversion is <see cref="System.Half"/>'s: every f32 near each f16 boundary and random bit patterns.</summary>
    [Test]
    public void HalfBits_IsRoundToNearestEven()
    {
        var rng = new Random(5);
        var values = new List<float> { 0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.Epsilon, 65504f, 65519.996f, 65520f, -65520f, 6.1035156e-05f };
        for (int h = 0; h < 0x7C00; h++)
        {
            // each positive finite f16, the midpoint to the next, and f32 neighbours of the midpoint
            float v = (float)BitConverter.UInt16BitsToHalf((ushort)h), next = (float)BitConverter.UInt16BitsToHalf((ushort)(h + 1));
            float mid = (float)(((double)v + next) / 2);
            values.AddRange([v, mid, MathF.BitDecrement(mid), MathF.BitIncrement(mid), -mid]);
        }
        for (int i = 0; i < 200_000; i++) values.Add(BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32)));
        foreach (float v in values)
        {
            if (float.IsNaN(v)) continue;
            uint expected = BitConverter.HalfToUInt16Bits((Half)v);
            if (MatMulKernels.HalfBits(v) != expected)
                Assert.Fail($"{v:R} (0x{BitConverter.SingleToUInt32Bits(v):X8}): 0x{MatMulKernels.HalfBits(v):X4}, System.Half gives 0x{expected:X4}");
        }
        Assert.That(float.IsNaN((float)BitConverter.UInt16BitsToHalf((ushort)MatMulKernels.HalfBits(float.NaN))), Is.True, "NaN stays NaN");
    }

    /// <summary>What an F16 upload of the rows holds: <see cref="Dequantize.Row"/>, then the host's conversion to f16.</summary>
    internal static ushort[] HostHalves(GgmlType type, byte[] blocks, int rows, int cols)
    {
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var row = new float[cols];
        var halves = new Half[rows * cols];
        for (int r = 0; r < rows; r++)
        {
            Dequantize.Row(type, blocks.AsSpan(r * rowBytes, rowBytes), row);
            System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(row, halves.AsSpan(r * cols, cols));
        }
        return System.Runtime.InteropServices.MemoryMarshal.Cast<Half, ushort>(halves).ToArray();
    }

    /// <summary>
    /// Random block bytes with each f16 scale and min a random finite bit pattern: a quarter subnormal, a quarter of
    /// magnitude 2^12 or more (products beyond the f16 range), the rest any finite value, either sign.
    /// </summary>
    internal static byte[] RandomBlocksAnyScale(Random rng, GgmlType type, int rows, int cols)
    {
        var bytes = RandomBlocks(rng, type, rows, cols);
        GgmlTypeInfo.TryGetBlock(type, out int qk, out int blockBytes);
        int[] halves = ScaleOffsets(type);
        for (int block = 0; block < bytes.Length; block += blockBytes)
            foreach (int o in halves)
            {
                int sign = rng.Next(2) << 15;
                int magnitude = rng.Next(4) switch
                {
                    0 => rng.Next(1, 0x400),              // subnormal
                    1 => rng.Next(0x6C00, 0x7C00),        // 2^12 .. 65504
                    _ => rng.Next(0, 0x7C00),             // any finite
                };
                BitConverter.TryWriteBytes(bytes.AsSpan(block + o, 2), (ushort)(sign | magnitude));
            }
        return bytes;
    }
}
