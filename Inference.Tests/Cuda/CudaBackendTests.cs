using Inference.Cuda;

namespace Inference.Tests.Cuda;

/// <summary>Device probing and PTX resources; these run everywhere, with or without a GPU.</summary>
public class CudaBackendTests
{
    [Test]
    public void ProbeNeverThrowsAndIsConsistent()
    {
        var probe = CudaBackend.Probe();
        if (probe.IsAvailable)
        {
            Assert.That(probe.DeviceCount, Is.GreaterThan(0));
            Assert.That(probe.Reason, Is.Null);
        }
        else
        {
            Assert.That(probe.DeviceCount, Is.EqualTo(0));
            Assert.That(probe.Reason, Is.Not.Null.And.Not.Empty);
        }
    }

    [TestCase("paged_attention_f32", "paged_attention_f32")]
    [TestCase("paged_attention_f16", "paged_attention_f16")]
    [TestCase("paged_attention_reduce", "paged_attention_reduce")]
    public void PtxModulesAreEmbedded(string module, string entry)
    {
        var source = PtxModule.ReadSource(module);
        Assert.That(source, Does.Contain($".visible .entry {entry}("));
        Assert.That(source, Does.Contain(".target sm_80"));
        // The driver's PTX JIT rejects any non-ASCII byte, comments included (offline ptxas 11.8 accepts them).
        var nonAscii = source.Select((c, i) => (c, i)).FirstOrDefault(p => p.c > 127);
        Assert.That(nonAscii.c, Is.EqualTo('\0'), $"non-ASCII character U+{(int)nonAscii.c:X4} at offset {nonAscii.i}");
    }

    [Test]
    public void MissingModuleFailsLoudly() =>
        Assert.Throws<InvalidOperationException>(() => PtxModule.ReadSource("no_such_module"));
}

/// <summary>The automatic Flash-Decoding partition size of the PTX launchers (host arithmetic only).</summary>
public class PtxPartitionSizeTests
{
    /// <summary>Eight query heads of 128 over <paramref name="kvHeads"/> KV heads, tables long enough for <paramref name="maxContext"/>.</summary>
    private static Inference.Kernels.AttentionShape Shape(int kvHeads, int blockSize, int maxContext) =>
        new(8, kvHeads, 128, blockSize, (maxContext + blockSize - 1) / blockSize);

    [TestCase(1, 8, 16, 1024, 132)]
    [TestCase(1, 8, 16, 16384, 132)]
    [TestCase(64, 8, 16, 16384, 132)]
    [TestCase(1, 1, 32, 1, 132)]
    [TestCase(3, 2, 8, 100_000, 108)]
    [TestCase(128, 8, 16, 16384, 132)]
    [TestCase(512, 8, 16, 4096, 132)]
    public void ChoosesWholeBlocksWithinTheStagedTable(int tokens, int kvHeads, int blockSize, int maxContext, int multiprocessors)
    {
        var shape = Shape(kvHeads, blockSize, maxContext);
        int size = PtxPagedAttention.ChoosePartitionSize(shape, tokens, maxContext, multiprocessors);
        Assert.That(size % blockSize, Is.Zero);
        Assert.That(size / blockSize, Is.InRange(1, PtxPagedAttention.MaxBlocksPerPartition));
        int min = PtxPagedAttention.MinPartitionPositions, perSm = PtxPagedAttention.CtasPerMultiprocessor;
        Assert.That(size, Is.GreaterThanOrEqualTo(Math.Min(min, PtxPagedAttention.MaxBlocksPerPartition * blockSize)));
        if ((long)tokens * kvHeads < perSm * multiprocessors)
            Assert.That(size, Is.LessThanOrEqualTo(Math.Max(PtxPagedAttention.MaxPartitionPositions, blockSize)));
        int partitions = (maxContext + size - 1) / size;
        // enough CTAs to fill the device whenever the context allows partitions of the smallest size
        long ctas = (long)tokens * kvHeads * partitions;
        if ((long)tokens * kvHeads * (maxContext / min) >= perSm * multiprocessors && size < PtxPagedAttention.MaxBlocksPerPartition * blockSize)
            Assert.That(ctas, Is.GreaterThanOrEqualTo(perSm * multiprocessors / 2), "within a factor two of the target after rounding to whole blocks");
    }

    /// <summary>
    /// The one sizing that Run and Reserve share: the partitions cover the context, and the partial buffers hold
    /// <c>tokens × heads × partitions</c> rows of headDim outputs and of (max, sum), for each bucket a decode step may
    /// reserve and then run.
    /// </summary>
    [TestCase(8, 16, 4096, 132, 0)]
    [TestCase(2, 8, 1000, 108, 0)]
    [TestCase(1, 32, 16384, 132, 0)]
    [TestCase(8, 16, 4096, 132, 256)]
    public void ScratchCoversThePartitionsOfTheLaunch(int kvHeads, int blockSize, int maxContext, int multiprocessors, int fixedSize)
    {
        var shape = Shape(kvHeads, blockSize, maxContext);
        for (int tokens = 1; tokens <= 512; tokens *= 2)
        {
            var scratch = PtxPagedAttention.Scratch(shape, fixedSize, tokens, maxContext, multiprocessors);
            int size = fixedSize > 0 ? fixedSize : PtxPagedAttention.ChoosePartitionSize(shape, tokens, maxContext, multiprocessors);
            Assert.That(scratch.PartitionSize, Is.EqualTo(size), $"tokens {tokens}");
            Assert.That((long)scratch.PartitionCount * size, Is.GreaterThanOrEqualTo(maxContext), $"tokens {tokens}");
            Assert.That((long)(scratch.PartitionCount - 1) * size, Is.LessThan(maxContext), $"tokens {tokens}");
            long rows = (long)tokens * shape.HeadCount * scratch.PartitionCount;
            Assert.That(scratch.OutFloats, Is.EqualTo(rows * shape.HeadDim), $"tokens {tokens}");
            Assert.That(scratch.MlFloats, Is.EqualTo(rows * 2), $"tokens {tokens}");
        }
    }
}
