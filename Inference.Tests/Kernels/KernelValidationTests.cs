using Inference.Models;
using Inference.Kernels;
using Inference.Kernels.Attention;
using Inference.Kernels.Layer;

namespace Inference.Tests.Kernels;

/// <summary>Launchers reject bad arguments with exceptions before anything runs.</summary>
public class KernelValidationTests
{
    private static readonly AttentionShape Shape = new(8, 2, 64, 16, 4);

    [TestCase(0)]
    [TestCase(100)]
    public void DecodeRejectsPartitionSizesThatAreNotWholeTiles(int partitionSize) =>
        Assert.Throws<ArgumentException>(() =>
            _ = new PagedDecodeAttention<float, F32Element>(KernelTestAccelerator.Cpu, Shape, partitionSize));

    [Test]
    public void DecodeRejectsContextsBeyondTheBlockTable()
    {
        using var kernel = new PagedDecodeAttention<float, F32Element>(KernelTestAccelerator.Cpu, Shape, 64);
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            kernel.Run(default, default, default, default, default, 1, Shape.MaxContextLength + 1, default));
    }

    [Test]
    public void LayerKernelsRejectBadShapes()
    {
        var kernels = LayerKernelTests.Kernels.Value;
        Assert.Throws<ArgumentException>(() => kernels.Rope(default, default, 1, 1, 64, 63, 10000f, RopeLayout.Normal));
        Assert.Throws<ArgumentException>(() => kernels.Rope(default, default, 1, 1, 64, 128, 10000f, RopeLayout.Neox));
        Assert.Throws<ArgumentOutOfRangeException>(() => kernels.TopK(default, default, default, 1, 10, 11));
        Assert.Throws<ArgumentException>(() => kernels.MatMulQ8_0(default, default, default, 4, 33, 1));
    }
}
