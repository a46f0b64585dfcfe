using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Inference.Backends.Cpu;
using Inference.Cuda;
using Inference.Kernels;
using Inference.Tests.Support;

namespace Inference.Tests.Cuda;

/// <summary>
/// The FlashAttention-2-style paged prefill (<c>Ptx/flash_prefill_f16.ptx</c>) without a GPU: the embedded text is the
/// generator's output, holds the tensor-core instructions and only ASCII, and <see cref="PtxInterpreter"/> runs the module
/// itself — cp.async through the block table, ldmatrix (plain and transposed), mma, the online softmax with its lane
/// shuffles, causal masking with the prefix offset — against the float64 paged attention reference.
/// </summary>
public class FlashPrefillTests
{
    private static string Source => PtxModule.ReadSource(FlashPrefillPtx.ModuleName);

    [Test]
    public void EmbeddedModuleIsTheGeneratorsOutput()
    {
        string generated = FlashPrefillPtx.Generate();
        string embedded;
        try { embedded = Source; }
        catch (InvalidOperationException) { embedded = ""; }   // not generated yet
        if (generated != embedded && Environment.GetEnvironmentVariable("INFERENCE_REGENERATE_PTX") == "1")
            File.WriteAllText(Path.Combine(TestData.RepoRoot, "Inference.Cuda", "Ptx", FlashPrefillPtx.ModuleName + ".ptx"), generated);
        Assert.That(embedded, Is.EqualTo(generated),
            "Ptx/flash_prefill_f16.ptx differs from FlashPrefillPtx.Generate: rerun this test with INFERENCE_REGENERATE_PTX=1 and rebuild");
    }

    [Test]
    public void ModuleUsesTensorCoreInstructionsAndIsAscii()
    {
        var s = Source;
        Assert.That(s, Does.Contain("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"));
        Assert.That(s, Does.Contain("ldmatrix.sync.aligned.m8n8.x4.shared.b16"));
        Assert.That(s, Does.Contain("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"));
        Assert.That(s, Does.Contain("cp.async.cg.shared.global"));
        Assert.That(s, Does.Contain("cp.async.wait_group"));
        foreach (var t in FlashPrefillTile.All)
            Assert.That(s, Does.Contain($".visible .entry {t.Entry}("));
        int bad = s.ToList().FindIndex(c => c > 127);
        Assert.That(bad, Is.EqualTo(-1), () => $"non-ASCII character U+{(int)s[bad]:X4} at offset {bad}");
    }

    [Test]
    public void TilesAreConsistent()
    {
        foreach (var t in FlashPrefillTile.All)
        {
            t.Validate();
            Assert.That(t.SharedBytes, Is.LessThanOrEqualTo(48 * 1024));
            // the swizzle puts the eight rows of every ldmatrix 8x8 matrix in eight different 16-byte bank groups
            for (int row0 = 0; row0 < t.BlockKv; row0 += 8)
                for (int chunk = 0; chunk < t.ChunksPerRow; chunk++)
                {
                    int groups = Enumerable.Range(row0, 8).Select(r => t.SwizzledOffset(r, chunk) % 128 / 16).Distinct().Count();
                    Assert.That(groups, Is.EqualTo(8), $"D {t.HeadDim}: rows {row0}.., chunk {chunk}");
                }
        }
    }

    /// <summary>One sequence of a launch: cached prefix positions, then the chunk's query tokens.</summary>
    public readonly record struct Chunk(int Prefix, int Tokens);

    private static IEnumerable<TestCaseData> Cases()
    {
        // heads, kvHeads, headDim, blockSize, sequences (prefix, chunk)
        yield return Case("MHA, one partial query tile, one K/V tile", 2, 2, 64, 16, new Chunk(0, 37));
        yield return Case("MHA, a prefix over three K/V tiles", 2, 2, 64, 16, new Chunk(150, 20));
        yield return Case("GQA 4:1, two sequences, four query tiles", 8, 2, 128, 16, new Chunk(0, 50), new Chunk(23, 9));
        yield return Case("MQA, block size 32, prefix spanning tiles", 4, 1, 64, 32, new Chunk(70, 33), new Chunk(0, 1));
        yield return Case("GQA 3:1 (a group that does not divide 64), block size 8", 3, 1, 128, 8, new Chunk(100, 30));
        yield return Case("block size 24 (not a power of two), one-token chunk", 4, 2, 64, 24, new Chunk(61, 1), new Chunk(5, 70));
        yield return Case("head dim 128, block size 1", 2, 1, 128, 1, new Chunk(3, 40));
    }

    private static TestCaseData Case(string name, int heads, int kvHeads, int headDim, int blockSize, params Chunk[] chunks) =>
        new TestCaseData(heads, kvHeads, headDim, blockSize, chunks) { TestName = $"FlashPrefillMatchesFloat64Reference({name})" };

    [TestCaseSource(nameof(Cases))]
    public void FlashPrefillMatchesFloat64Reference(int heads, int kvHeads, int headDim, int blockSize, Chunk[] chunks)
    {
        var run = Run(Source, heads, kvHeads, headDim, blockSize, chunks, seed: heads * 131 + headDim + blockSize * 7 + chunks.Length);
        TestContext.Out.WriteLine($"largest |out - ref| / bound = {run.WorstRatio:F3}");
        Assert.That(run.WorstRatio, Is.LessThanOrEqualTo(1.0), run.WorstDetail);
    }

    [Test]
    public void ARowsBitsDoNotDependOnTheOtherSequencesOfTheLaunch()
    {
        // one CTA per (query tile, KV head, sequence): a sequence's rows see only its own K/V tiles, and extra masked
        // tiles (longer rows of the same CTA) scale by exactly 2^0
        var alone = Run(Source, 4, 2, 64, 16, [new Chunk(40, 30)], seed: 5, replicate: 0);
        var together = Run(Source, 4, 2, 64, 16, [new Chunk(10, 90), new Chunk(40, 30), new Chunk(0, 3)], seed: 5, replicate: 1);
        int rowFloats = 4 * 64, tokens = 30;
        var a = alone.Output.AsSpan(0, tokens * rowFloats).ToArray();
        var b = together.Output.AsSpan(90 * rowFloats, tokens * rowFloats).ToArray();
        Assert.That(b.Select(BitConverter.SingleToInt32Bits), Is.EqualTo(a.Select(BitConverter.SingleToInt32Bits)));
    }

    [Test]
    public void TheBoundCatchesAMissingCausalMask()
    {
        // what makes the reference comparison meaningful: without the mask each row sees later positions of its chunk
        var broken = Regex.Replace(Source, @"\tselp\.f32 +(s\d+), 0fFF800000, \1, pm;", "");
        Assert.That(broken, Is.Not.EqualTo(Source));
        var run = Run(broken, 2, 1, 64, 16, [new Chunk(5, 20)], seed: 9);
        Assert.That(run.WorstRatio, Is.GreaterThan(1.0));
    }

    [Test]
    public void InterpreterCatchesAnEarlyRead()
    {
        var broken = Regex.Replace(Source, @"cp\.async\.wait_group +0;", "cp.async.wait_group 1;");
        Assert.That(broken, Is.Not.EqualTo(Source));
        var ex = Assert.Throws<InvalidOperationException>(() => Run(broken, 2, 2, 64, 16, [new Chunk(100, 10)], seed: 1));
        Assert.That(ex!.Message, Does.Contain("in flight"));
    }

    [TestCase(2, 2, 1, 1, 1)]
    [TestCase(2, 2, 64, 1, 1)]
    [TestCase(2, 2, 65, 3, 2)]
    [TestCase(8, 1, 20, 2, 3)]
    public void GridCoversEveryRow(int heads, int kvHeads, int maxChunk, int seqs, int expectedX)
    {
        var shape = new AttentionShape(heads, kvHeads, 64, 16, 8);
        var grid = PtxFlashPrefillAttention.Grid(shape, seqs, maxChunk);
        Assert.That(grid, Is.EqualTo((expectedX, kvHeads, seqs)));
    }

    [Test]
    public void SupportsHeadDims64And128Only()
    {
        Assert.That(PtxFlashPrefillAttention.Supports(new AttentionShape(4, 2, 64, 16, 4)), Is.True);
        Assert.That(PtxFlashPrefillAttention.Supports(new AttentionShape(4, 2, 128, 16, 4)), Is.True);
        Assert.That(PtxFlashPrefillAttention.Supports(new AttentionShape(4, 2, 96, 16, 4)), Is.False);
    }

    private sealed record Result(float[] Output, double WorstRatio, string WorstDetail);

    /// <summary>
    /// Runs the entry for <paramref name="headDim"/> in the interpreter over a shuffled block pool whose unused rows are NaN
    /// (so a read past the context shows), with NaN-poisoned output (plus a guard past its end), and compares every output
    /// row with <see cref="PagedAttentionReference"/> (float64) on the f16-rounded queries the kernel uses. The bound per row:
    /// max|v| · (2⁻¹¹ for P rounded to f16 + 2·E for f32 scores + 2⁻²⁰ for ex2.approx + ctx·2⁻²² for f32 sums), with
    /// E = scale · max_j Σ_d |q_d k_jd| · (D/16 + 2) · 2⁻²⁴.
    /// </summary>
    /// <remarks>With <c>replicate</c> = r ≥ 0, sequence r gets the data of sequence 0 of a run with the same seed and
    /// <c>replicate</c> = 0 (for the batch-invariance test).</remarks>
    private static Result Run(string source, int heads, int kvHeads, int headDim, int blockSize, Chunk[] chunks, int seed, int replicate = -1)
    {
        int seqs = chunks.Length, tokens = chunks.Sum(c => c.Tokens);
        int maxCtx = chunks.Max(c => c.Prefix + c.Tokens), maxBlocks = (maxCtx + blockSize - 1) / blockSize;
        var shape = new AttentionShape(heads, kvHeads, headDim, blockSize, maxBlocks);
        var pshape = new PagedAttentionShape(heads, kvHeads, headDim, blockSize);
        int kvStride = kvHeads * headDim, qStride = heads * headDim;
        int blocksUsed = chunks.Sum(c => (c.Prefix + c.Tokens + blockSize - 1) / blockSize), blockCount = blocksUsed + 3;

        var nan = (Half)float.NaN;
        var k = Enumerable.Repeat(nan, blockCount * blockSize * kvStride).ToArray();
        var v = Enumerable.Repeat(nan, k.Length).ToArray();
        var tables = Enumerable.Repeat(int.MaxValue, seqs * maxBlocks).ToArray();   // unused entries are never read
        var q = new float[tokens * qStride];
        var starts = new int[seqs + 1];
        var lens = new int[seqs];
        int[] order = [.. Enumerable.Range(0, blockCount).OrderBy(i => (i * 7919 + seed) % blockCount)];   // a fixed shuffle
        int nextBlock = 0;
        for (int s = 0; s < seqs; s++)
        {
            var rng = new Random(s == replicate ? seed : seed * 1000 + s);
            var (prefix, n) = (chunks[s].Prefix, chunks[s].Tokens);
            lens[s] = prefix + n;
            starts[s + 1] = starts[s] + n;
            for (int b = 0; b < (lens[s] + blockSize - 1) / blockSize; b++) tables[s * maxBlocks + b] = order[nextBlock++];
            for (int p = 0; p < lens[s]; p++)
            {
                int row = (tables[s * maxBlocks + p / blockSize] * blockSize + p % blockSize) * kvStride;
                for (int e = 0; e < kvStride; e++)
                {
                    k[row + e] = (Half)NonZero(rng);
                    v[row + e] = (Half)NonZero(rng);
                }
            }
            for (int i = starts[s] * qStride; i < starts[s + 1] * qStride; i++) q[i] = NonZero(rng) * 2f;
        }

        var mem = new PtxInterpreter.Memory();
        ulong pq = mem.Upload(q), pk = mem.Upload(k), pv = mem.Upload(v), pt = mem.Upload(tables);
        ulong ps = mem.Upload(starts), pc = mem.Upload(lens);
        const int guard = 64;
        int outFloats = tokens * qStride;
        ulong po = mem.Alloc((outFloats + guard) * 4);
        MemoryMarshal.Cast<byte, float>(mem.Bytes(po, (outFloats + guard) * 4)).Fill(float.NaN);

        var tile = FlashPrefillTile.For(headDim)!;
        var grid = PtxFlashPrefillAttention.Grid(shape, seqs, chunks.Max(c => c.Tokens));
        float scaleLog2 = shape.Scale * 1.4426950408889634f;
        PtxInterpreter.Parse(source).Launch(tile.Entry, grid, FlashPrefillTile.Threads, mem, pq, pk, pv, pt, ps, pc, po,
            (ulong)heads, (ulong)kvHeads, (ulong)blockSize, (ulong)maxBlocks, BitConverter.SingleToUInt32Bits(scaleLog2));
        var all = MemoryMarshal.Cast<byte, float>(mem.Bytes(po, (outFloats + guard) * 4)).ToArray();
        for (int i = outFloats; i < all.Length; i++) Assert.That(all[i], Is.NaN, $"store past the output at element {i}");
        var output = all[..outFloats];

        double worst = 0;
        string detail = "";
        var qRounded = Array.ConvertAll(q, x => (float)(Half)x);
        for (int s = 0; s < seqs; s++)
        {
            int n = chunks[s].Tokens, start = chunks[s].Prefix;
            var table = tables.AsSpan(s * maxBlocks, maxBlocks);
            var keys = PagedAttentionReference.Gather<Half>(pshape, k, table, lens[s]);
            var values = PagedAttentionReference.Gather<Half>(pshape, v, table, lens[s]);
            var expected = new float[n * qStride];
            PagedAttentionReference.Forward(pshape, qRounded.AsSpan(starts[s] * qStride, n * qStride), keys, values, start, expected);
            for (int i = 0; i < n; i++)
                for (int h = 0; h < heads; h++)
                {
                    int kvh = h / (heads / kvHeads), ctx = start + i + 1;
                    double maxDot = 0, maxV = 0;
                    for (int j = 0; j < ctx; j++)
                    {
                        double dot = 0;
                        for (int d = 0; d < headDim; d++)
                        {
                            dot += Math.Abs((double)qRounded[(starts[s] + i) * qStride + h * headDim + d] * keys[j * kvStride + kvh * headDim + d]);
                            maxV = Math.Max(maxV, Math.Abs(values[j * kvStride + kvh * headDim + d]));
                        }
                        maxDot = Math.Max(maxDot, dot);
                    }
                    double e = shape.Scale * maxDot * (headDim / 16 + 2) * Math.Pow(2, -24);
                    double bound = maxV * (Math.Pow(2, -11) + 2 * e + Math.Pow(2, -20) + ctx * Math.Pow(2, -22)) + 1e-7;
                    for (int d = 0; d < headDim; d++)
                    {
                        float got = output[(starts[s] + i) * qStride + h * headDim + d], want = expected[i * qStride + h * headDim + d];
                        double ratio = float.IsNaN(got) ? double.PositiveInfinity : Math.Abs(got - want) / bound;
                        if (ratio > worst)
                        {
                            worst = ratio;
                            detail = $"sequence {s} token {i} head {h} dim {d}: {got} vs {want} (bound {bound:E2})";
                        }
                    }
                }
        }
        return new Result(output, worst, detail);
    }

    private static float NonZero(Random rng)
    {
        float x = rng.NextSingle() * 2f - 1f;
        return x == 0f ? 0.5f : x;
    }
}
