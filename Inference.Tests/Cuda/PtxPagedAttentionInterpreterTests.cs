using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Inference.Backends.Cpu;
using Inference.Cuda;
using Inference.Kernels;
using Inference.Tests.Kernels;

namespace Inference.Tests.Cuda;

/// <summary>
/// The paged decode attention modules themselves (<c>Ptx/paged_attention_f32.ptx</c>, <c>paged_attention_f16.ptx</c> and
/// <c>paged_attention_reduce.ptx</c>) run in <see cref="PtxInterpreter"/> with the launch geometry and argument order of
/// <see cref="PtxPagedAttention.Run"/>, against the float64 <see cref="PagedAttentionReference"/>: decode and the prefill
/// form (token_seqs given), MHA, GQA and MQA, head dims 64 and 128, block sizes 8 and 16, contexts that cross block and
/// partition boundaries, empty partitions, a context of one, and sliding windows.
/// </summary>
/// <remarks>
/// The kernels compute in f32 (ex2.approx modelled as correctly rounded); f16 K/V widen exactly, so both element types are
/// compared with the reference on the values the kernel reads (f16-rounded for f16) at a relative L2 of 1e-5.
/// </remarks>
public class PtxPagedAttentionInterpreterTests
{
    private const double Tolerance = 1e-5;

    /// <summary>Multiprocessors assumed for the automatic partition size.</summary>
    private const int Multiprocessors = 132;

    /// <summary>One sequence of a launch: its context length after the step and how many query tokens end it.</summary>
    public readonly record struct Seq(int Context, int Tokens = 1);

    private static IEnumerable<TestCaseData> Cases()
    {
        // f16, heads, kvHeads, headDim, blockSize, partitionSize (0: automatic), window, decode, sequences
        yield return Case("f32 MHA D64 bs16, partitions of 32, contexts 1/17/100", false, 2, 2, 64, 16, 32, 0, true, new(1), new(17), new(100));
        yield return Case("f16 MHA D64 bs16, partitions of 32, contexts 1/17/100", true, 2, 2, 64, 16, 32, 0, true, new(1), new(17), new(100));
        yield return Case("f32 GQA 2:1 D128 bs8, partitions of 16, contexts 9/40/65", false, 4, 2, 128, 8, 16, 0, true, new(9), new(40), new(65));
        yield return Case("f16 GQA 2:1 D128 bs8, partitions of 16, contexts 9/40/65", true, 4, 2, 128, 8, 16, 0, true, new(9), new(40), new(65));
        yield return Case("f32 MQA 3:1 D64 bs8, partitions of 24, contexts 2/48/49", false, 3, 1, 64, 8, 24, 0, true, new(2), new(48), new(49));
        yield return Case("f16 MQA 4:1 D128 bs16, partitions of 48, contexts 1/95", true, 4, 1, 128, 16, 48, 0, true, new(1), new(95));
        yield return Case("f16 GQA 2:1 D64 bs16, automatic partitions, contexts 3/200", true, 4, 2, 64, 16, 0, 0, true, new(3), new(200));
        yield return Case("f32 prefill MHA D64 bs8, chunks after a prefix", false, 2, 2, 64, 8, 16, 0, false, new(37, 5), new(6, 6));
        yield return Case("f16 prefill GQA 2:1 D128 bs16, chunks after a prefix", true, 4, 2, 128, 16, 32, 0, false, new(70, 4), new(3, 3));
        yield return Case("f32 window 20 GQA 2:1 D64 bs8, decode", false, 4, 2, 64, 8, 16, 20, true, new(1), new(20), new(21), new(90));
        yield return Case("f16 window 33 MQA 2:1 D128 bs16, decode", true, 2, 1, 128, 16, 32, 33, true, new(5), new(64), new(97));
        yield return Case("f16 window 12 MHA D64 bs8, prefill", true, 2, 2, 64, 8, 16, 12, false, new(50, 6), new(13, 4));
    }

    private static TestCaseData Case(string name, bool f16, int heads, int kvHeads, int headDim, int blockSize, int partitionSize,
        int window, bool decode, params Seq[] seqs) =>
        new(f16, heads, kvHeads, headDim, blockSize, partitionSize, window, decode, seqs) { TestName = $"PagedAttentionMatchesFloat64Reference({name})" };

    [TestCaseSource(nameof(Cases))]
    public void PagedAttentionMatchesFloat64Reference(bool f16, int heads, int kvHeads, int headDim, int blockSize, int partitionSize,
        int window, bool decode, Seq[] seqs)
    {
        var run = Run(PartialSource(f16), ReduceSource, f16, heads, kvHeads, headDim, blockSize, partitionSize, window, decode, seqs,
            seed: heads * 31 + headDim + blockSize * 7 + window + (f16 ? 1000 : 0) + (decode ? 0 : 500));
        TestContext.Out.WriteLine($"{run.Partitions} partitions of {run.PartitionSize}: relative L2 {run.RelativeL2:E2}");
        Assert.That(run.Partitions, Is.GreaterThan(1), "the case should span several partitions");
        Assert.That(run.RelativeL2, Is.LessThanOrEqualTo(Tolerance));
    }

    /// <summary>The main loop issues the next step's K/V loads before it computes the current step's dot product.</summary>
    [TestCase(true)]
    [TestCase(false)]
    public void TheLoopIssuesTheNextLoadsBeforeItComputes(bool f16)
    {
        string s = PartialSource(f16);
        int loop = s.IndexOf("KV_LOOP:", StringComparison.Ordinal);
        int kLoad = s.IndexOf(f16 ? "ld.global.nc.v4.b32 {nkp0" : "ld.global.nc.v4.f32 {nk0", StringComparison.Ordinal);
        int vLoad = s.IndexOf(f16 ? "ld.global.nc.v4.b32 {nvp0" : "ld.global.nc.v4.f32 {nv0", StringComparison.Ordinal);
        int dot = s.IndexOf("mul.f32         s, q0, k0;", StringComparison.Ordinal);
        int back = s.IndexOf("@more bra       KV_LOOP;", StringComparison.Ordinal);
        Assert.That(new[] { loop, kLoad, vLoad, dot, back }, Is.All.GreaterThan(-1));
        Assert.That(new[] { loop, kLoad, vLoad, dot, back }, Is.Ordered);
    }

    [Test]
    public void TheComparisonCatchesAMissingRescale()
    {
        // one accumulator element not rescaled by 2^(m - m_new) when the running max grows
        var broken = Regex.Replace(PartialSource(true), @"\tmul\.f32 +a3, a3, corr;\n", "");
        Assert.That(broken, Is.Not.EqualTo(PartialSource(true)));
        var run = Run(broken, ReduceSource, true, 2, 1, 64, 16, 32, 0, true, [new(70), new(5)], seed: 3);
        Assert.That(run.RelativeL2, Is.GreaterThan(Tolerance));
    }

    [Test]
    public void TheComparisonCatchesAWrongPartitionMerge()
    {
        // the reduce pass summing l without its weight 2^(m_p - M)
        var broken = Regex.Replace(ReduceSource, @"fma\.rn\.f32 +den, l, w, den;", "add.f32 den, den, l;");
        Assert.That(broken, Is.Not.EqualTo(ReduceSource));
        var run = Run(PartialSource(false), broken, false, 2, 2, 64, 8, 16, 0, true, [new(60)], seed: 4);
        Assert.That(run.RelativeL2, Is.GreaterThan(Tolerance));
    }

    [Test]
    public void InterpreterCatchesAMissingBarrier()
    {
        // the block-table stage read by other threads before the barrier that publishes it
        var broken = Regex.Replace(PartialSource(true), @"\tbar\.sync +0;\n", "");
        Assert.That(broken, Is.Not.EqualTo(PartialSource(true)));
        var ex = Assert.Throws<InvalidOperationException>(() =>
            Run(broken, ReduceSource, true, 4, 1, 64, 8, 64, 0, true, [new(60)], seed: 5));
        Assert.That(ex!.Message, Does.Contain("without a barrier"));
    }

    [Test]
    public void TheComparisonCatchesRowsPastThePartitionEnd()
    {
        // the softmax update no longer skipped for the slots past the partition end (score 0, stale V)
        var broken = Regex.Replace(PartialSource(true), @"\t@!valid bra +KV_NEXT;\n", "");
        Assert.That(broken, Is.Not.EqualTo(PartialSource(true)));
        var run = Run(broken, ReduceSource, true, 2, 2, 64, 16, 32, 0, true, [new(21), new(50)], seed: 6);
        Assert.That(run.RelativeL2, Is.GreaterThan(Tolerance));
    }

    [Test]
    public void TheComparisonCatchesAReadBeforeTheWindow()
    {
        // partitions no longer start at the window: the rows before it are NaN
        var broken = Regex.Replace(PartialSource(false), @"\t@windowed max\.u32 +part_start, part_start, tmp;\n", "");
        Assert.That(broken, Is.Not.EqualTo(PartialSource(false)));
        var run = Run(broken, ReduceSource, false, 2, 1, 64, 8, 16, 10, true, [new(40)], seed: 7);
        Assert.That(run.RelativeL2, Is.GreaterThan(Tolerance));
    }

    private static string PartialSource(bool f16) => PtxModule.ReadSource(f16 ? "paged_attention_f16" : "paged_attention_f32");

    private static string ReduceSource => PtxModule.ReadSource("paged_attention_reduce");

    private sealed record Result(double RelativeL2, int Partitions, int PartitionSize, float[] Output);

    /// <summary>
    /// Both passes in the interpreter, as <see cref="PtxPagedAttention.Run"/> launches them: pass 1 over
    /// (tokens, KV heads, partitions) with 32 · kvMul threads, pass 2 over tokens · heads with headDim threads. K/V rows
    /// that no query may read (spare blocks, past each context, before each window) are NaN; the partial buffers and the
    /// output are NaN-poisoned with a guard past their ends.
    /// </summary>
    private static Result Run(string partialSource, string reduceSource, bool f16, int heads, int kvHeads, int headDim, int blockSize,
        int partitionSize, int window, bool decode, Seq[] seqs, int seed)
    {
        if (decode && seqs.Any(s => s.Tokens != 1)) throw new ArgumentException("decode is one token per sequence");
        int[] contexts = [.. seqs.Select(s => s.Context)];
        var c = PagedAttentionCase.Create(heads, kvHeads, headDim, blockSize, contexts, f16 ? KvStorage.F16 : KvStorage.F32, seed);
        var shape = c.Shape;
        var pshape = new PagedAttentionShape(heads, kvHeads, headDim, blockSize) { SlidingWindow = window };
        int kvStride = kvHeads * headDim, qStride = heads * headDim;
        int tokens = seqs.Sum(s => s.Tokens), maxContext = contexts.Max();

        // token t of sequence s sits at position context - tokens + i
        var tokenSeqs = new int[tokens];
        var tokenPositions = new int[tokens];
        for (int s = 0, t = 0; s < seqs.Length; s++)
            for (int i = 0; i < seqs[s].Tokens; i++, t++)
                (tokenSeqs[t], tokenPositions[t]) = (s, seqs[s].Context - seqs[s].Tokens + i);
        var rng = new Random(seed + 1);
        var q = PagedAttentionCase.Random(rng, tokens * qStride, 2f);

        // the reference, on the values the kernel reads
        var expected = new float[tokens * qStride];
        for (int s = 0, t = 0; s < seqs.Length; t += seqs[s].Tokens, s++)
        {
            var table = c.BlockTables.AsSpan(s * shape.MaxBlocksPerSeq, shape.MaxBlocksPerSeq);
            var keys = PagedAttentionReference.Gather<float>(pshape, c.K, table, seqs[s].Context);
            var values = PagedAttentionReference.Gather<float>(pshape, c.V, table, seqs[s].Context);
            PagedAttentionReference.Forward(pshape, q.AsSpan(t * qStride, seqs[s].Tokens * qStride), keys, values,
                seqs[s].Context - seqs[s].Tokens, expected.AsSpan(t * qStride, seqs[s].Tokens * qStride));
        }

        // NaN in every row no query of the launch may read
        var readable = new bool[c.BlockCount * blockSize];
        for (int s = 0; s < seqs.Length; s++)
        {
            int first = window > 0 ? Math.Max(0, seqs[s].Context - seqs[s].Tokens + 1 - window) : 0;
            for (int p = first; p < seqs[s].Context; p++)
                readable[c.BlockTables[s * shape.MaxBlocksPerSeq + p / blockSize] * blockSize + p % blockSize] = true;
        }
        for (int row = 0; row < readable.Length; row++)
            if (!readable[row])
                for (int e = row * kvStride; e < (row + 1) * kvStride; e++)
                {
                    c.K[e] = c.V[e] = float.NaN;
                    c.KHalf[e] = c.VHalf[e] = Half.NaN;
                }

        var scratch = PtxPagedAttention.Scratch(shape, partitionSize, tokens, maxContext, Multiprocessors);
        var mem = new PtxInterpreter.Memory();
        ulong pq = mem.Upload(q), pt = mem.Upload(c.BlockTables), pc = mem.Upload(contexts);
        ulong pk = f16 ? mem.Upload(c.KHalf) : mem.Upload(c.K), pv = f16 ? mem.Upload(c.VHalf) : mem.Upload(c.V);
        ulong ps = decode ? 0 : mem.Upload(tokenSeqs), pp = decode ? 0 : mem.Upload(tokenPositions);
        const int guard = 64;
        ulong partialOut = mem.Poisoned((int)scratch.OutFloats + guard), partialMl = mem.Poisoned((int)scratch.MlFloats + guard);
        int outFloats = tokens * qStride;
        ulong output = mem.Poisoned(outFloats + guard);

        float scaleLog2 = shape.Scale * 1.4426950408889634f;   // as the launcher computes it
        var partial = PtxInterpreter.Parse(partialSource);
        string entry = f16 ? "paged_attention_f16" : "paged_attention_f32";
        partial.Launch(entry, (tokens, kvHeads, scratch.PartitionCount), 32 * shape.KvMul, mem,
            pq, pk, pv, pt, decode ? pc : 0, ps, pp, partialOut, partialMl,
            (ulong)heads, (ulong)kvHeads, (ulong)headDim, (ulong)blockSize, (ulong)shape.MaxBlocksPerSeq,
            (ulong)scratch.PartitionSize, BitConverter.SingleToUInt32Bits(scaleLog2), (ulong)window);
        PtxInterpreter.Parse(reduceSource).Launch("paged_attention_reduce", tokens * heads, 1, headDim, mem,
            partialOut, partialMl, output, (ulong)headDim, (ulong)scratch.PartitionCount);

        AssertGuard(mem, partialOut, (int)scratch.OutFloats, guard, "partial_out");
        AssertGuard(mem, partialMl, (int)scratch.MlFloats, guard, "partial_ml");
        AssertGuard(mem, output, outFloats, guard, "out");
        var actual = MemoryMarshal.Cast<byte, float>(mem.Bytes(output, outFloats * 4)).ToArray();
        double diff = 0, norm = 0;
        for (int i = 0; i < outFloats; i++)
        {
            double d = (double)actual[i] - expected[i];
            diff += d * d;
            norm += (double)expected[i] * expected[i];
        }
        double relative = double.IsNaN(diff) ? double.PositiveInfinity : Math.Sqrt(diff / norm);
        return new Result(relative, scratch.PartitionCount, scratch.PartitionSize, actual);
    }


    private static void AssertGuard(PtxInterpreter.Memory mem, ulong at, int floats, int guard, string what)
    {
        var tail = MemoryMarshal.Cast<byte, float>(mem.Bytes(at + (ulong)floats * 4, guard * 4));
        for (int i = 0; i < guard; i++) Assert.That(tail[i], Is.NaN, $"store past the end of {what} at element {floats + i}");
    }
}
