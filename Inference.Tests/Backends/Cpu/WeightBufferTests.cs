using Inference.Backends.Cpu;

namespace Inference.Tests.Backends.Cpu;

public unsafe class WeightBufferTests
{
    [TestCase(1)]
    [TestCase(4097)]
    [TestCase((2 << 20) + 12345)]
    public void WholeLengthIsWritableAndLargeBuffersAreHugePageAligned(long bytes)
    {
        var buffer = new WeightBuffer(bytes);
        Assert.That(buffer.Length, Is.EqualTo(bytes));
        var span = new Span<byte>(buffer.Data, (int)bytes);
        var rng = new Random((int)bytes);
        var expected = new byte[bytes];
        rng.NextBytes(expected);
        expected.CopyTo(span);
        Assert.That(span.SequenceEqual(expected), Is.True);
        if (bytes >= 2 << 20) Assert.That((long)buffer.Data % (2 << 20), Is.Zero, "2 MiB aligned");
        else Assert.That((long)buffer.Data % 64, Is.Zero, "64-byte aligned");
        GC.KeepAlive(buffer);
    }

    [Test]
    public void RejectsEmptyBuffersAndFinalizesTheRejectedInstanceQuietly()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new WeightBuffer(0));
        // The half-built instance is finalized too: a throwing finalizer would end the process here.
        GC.Collect();
        GC.WaitForPendingFinalizers();
    }
}
