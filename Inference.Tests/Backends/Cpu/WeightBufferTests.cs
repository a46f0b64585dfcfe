using Inference.Backends.Cpu;
using Inference.Loading;

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

public unsafe class WeightArenaTests
{
    [Test]
    public void PiecesAreAlignedDisjointAndShareBuffersUntilOneIsFull()
    {
        var arena = new WeightArena();
        var rng = new Random(9);
        var pieces = new List<(long Start, long Bytes, WeightBuffer Owner, byte[] Data)>();
        // Small pieces (many to a buffer, across a buffer boundary), one large enough for a buffer of its own.
        long[] sizes = [1, 63, 64, 4097, 3 << 20, 5 << 20, 7 << 20, 6 << 20, 7 << 20, 100, 40 << 20, 7 << 20, 65];
        foreach (long bytes in sizes)
        {
            byte* p = arena.Allocate(bytes, out var owner);
            Assert.That((long)p % 64, Is.Zero, $"{bytes} bytes: 64-byte aligned");
            Assert.That(p >= owner.Data && p + bytes <= owner.Data + owner.Length, Is.True, $"{bytes} bytes inside their owner");
            var data = new byte[bytes];
            rng.NextBytes(data);
            data.CopyTo(new Span<byte>(p, (int)bytes));
            pieces.Add(((long)p, bytes, owner, data));
        }
        foreach (var (start, bytes, owner, data) in pieces)
            Assert.That(new Span<byte>((byte*)start, (int)bytes).SequenceEqual(data), Is.True, $"{bytes} bytes kept (no overlap)");
        Assert.That(pieces.Take(10).Select(p => p.Owner).Distinct().Count(), Is.EqualTo(1), "small pieces share a buffer");
        Assert.That(pieces[10].Owner.Length, Is.EqualTo(40L << 20), "a large piece gets a buffer of its own");
        Assert.That(pieces[11].Owner, Is.Not.SameAs(pieces[0].Owner), "a new buffer when one is full");
        Assert.That(pieces[12].Owner, Is.SameAs(pieces[11].Owner), "then pieces come from the new one");
        Assert.Throws<ArgumentOutOfRangeException>(() => arena.Allocate(0, out _));
    }
}

public unsafe class PrepareIntoArenaTests
{
    [TestCase(GgmlType.F32)]
    [TestCase(GgmlType.F16)]
    [TestCase(GgmlType.BF16)]
    public void Float_matrices_are_copied_into_the_arena_with_the_same_products(GgmlType type)
    {
        const int rows = 37, cols = 96, batch = 3;
        var rng = new Random(41 + (int)type);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var direct = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
        var copied = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
        using var pool = new WorkerPool(2);
        fixed (byte* pw = weights)
        {
            var w = new WeightMatrix(type, pw, rows, cols);
            var prepared = MatMul.PrepareInto(w, new WeightArena());
            Assert.That((nint)prepared.Data, Is.Not.EqualTo((nint)pw), "a copy");
            Assert.That(prepared.Owner, Is.Not.Null, "kept alive by the matrix");
            if (prepared.HalfShift == 0)
                Assert.That(new ReadOnlySpan<byte>(prepared.Data, weights.Length).SequenceEqual(weights), Is.True, "the same bytes");
            else
                for (int i = 0; i < weights.Length / 2; i++)   // F16 with a subnormal: every value times 2^HalfShift
                    Assert.That(Fp16.ToFloat(((ushort*)prepared.Data)[i]), Is.EqualTo(MathF.ScaleB(Fp16.ToFloat(((ushort*)pw)[i]), prepared.HalfShift)));
            MatMul.Multiply(w, x, direct, batch, pool);
            MatMul.Multiply(prepared, x, copied, batch, pool);
            Assert.That(MatMul.PrepareInto(w, null).Data == pw, Is.True, "no arena: read in place");
        }
        Assert.That(direct, Has.None.NaN);
        Assert.That(copied, Is.EqualTo(direct));
    }
}
