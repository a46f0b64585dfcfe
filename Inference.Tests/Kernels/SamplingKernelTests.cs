using System.Numerics.Tensors;
using ILGPU;
using ILGPU.Runtime;
using Inference.Kernels.Layer;
using Inference.Sampling;

namespace Inference.Tests.Kernels;

/// <summary>
/// The device sampler (<see cref="SamplingKernels"/> on the CPU accelerator) against the host <see cref="Sampler"/>: the
/// same token for the same logits, history and seed, and the same penalized logits, bit for bit.
/// </summary>
public class SamplingKernelTests
{
    private static Accelerator Acc => KernelTestAccelerator.Cpu;

    private static SamplingOptions RandomOptions(Random r)
    {
        float temperature = r.Next(5) == 0 ? 0 : (float)(0.1 + r.NextDouble() * 2);
        return new SamplingOptions
        {
            Temperature = temperature,
            TopK = r.Next(4) switch { 0 => 0, 1 => 1, 2 => r.Next(2, 20), _ => r.Next(1, 3000) },
            TopP = r.Next(3) == 0 ? 1f : (float)(0.05 + 0.95 * r.NextDouble()),
            MinP = r.Next(3) == 0 ? 0f : (float)(r.NextDouble() * 0.3),
            RepetitionPenalty = r.Next(2) == 0 ? 1f : (float)(0.5 + r.NextDouble() * 1.5),
            PenaltyLastN = r.Next(4) == 0 ? 0 : r.Next(1, 40),
            FrequencyPenalty = r.Next(2) == 0 ? 0 : (float)(r.NextDouble() * 4 - 2),
            PresencePenalty = r.Next(2) == 0 ? 0 : (float)(r.NextDouble() * 4 - 2),
            Seed = (ulong)r.NextInt64(),
        };
    }

    /// <summary>Random logits; <paramref name="levels"/> &gt; 0 quantizes them into that many values (ties everywhere).</summary>
    private static void FillLogits(Random r, Span<float> row, int levels)
    {
        for (int i = 0; i < row.Length; i++)
        {
            double v = r.NextDouble() * 12 - 6;
            if (levels > 0) v = Math.Round(v * levels / 12.0) * 12.0 / levels;
            row[i] = (float)v;
        }
        if (row.Length > 4 && r.Next(4) == 0)
        {
            row[r.Next(row.Length)] = float.NegativeInfinity;   // a masked token
            row[r.Next(row.Length)] = 0f;
            row[r.Next(row.Length)] = -0f;
        }
    }

    /// <summary>Runs <paramref name="steps"/> steps of <paramref name="rows"/> requests with their own options and history.</summary>
    private static void Compare(int vocab, int rows, int steps, int groupSize, int levels, int seed)
    {
        var r = new Random(seed);
        var options = new SamplingOptions[rows];
        var host = new Sampler[rows];
        var device = new Sampler[rows];
        var history = new List<int>[rows];
        var promptLength = new int[rows];
        for (int i = 0; i < rows; i++)
        {
            options[i] = RandomOptions(r);
            host[i] = new Sampler(options[i], vocab);
            device[i] = new Sampler(options[i], vocab);
            promptLength[i] = r.Next(0, 12);
            history[i] = Enumerable.Range(0, promptLength[i]).Select(_ => r.Next(vocab)).ToList();
        }
        using var sampler = new DeviceSampler(Acc, groupSize);
        var batch = new DeviceSamplingRows { VocabSize = vocab };
        int logitRows = rows + 1;   // one spare row that no request samples
        var logits = new float[logitRows * vocab];
        using var buffer = Acc.Allocate1D<float>(logits.Length);
        for (int step = 0; step < steps; step++)
        {
            FillLogits(r, logits, levels);
            // Rows sit at shuffled logit rows.
            var rowOf = Enumerable.Range(0, logitRows).OrderBy(_ => r.Next()).Take(rows).ToArray();
            var expected = new int[rows];
            var penalized = (float[])logits.Clone();
            batch.Clear();
            for (int i = 0; i < rows; i++)
            {
                var row = penalized.AsSpan(rowOf[i] * vocab, vocab);
                expected[i] = host[i].Sample(row, history[i].ToArray(), promptLength[i]);
                device[i].AddDeviceRow(batch, rowOf[i], history[i].ToArray(), promptLength[i]);
            }
            buffer.CopyFromCPU(logits);
            sampler.Run(buffer.View, batch);
            var after = buffer.GetAsArray1D();
            for (int i = 0; i < rows; i++)
            {
                string what = $"vocab {vocab}, group {groupSize}, step {step}, row {i}, {options[i]}";
                Assert.That(batch.Tokens[i], Is.EqualTo(expected[i]), what);
                var got = after.AsSpan(rowOf[i] * vocab, vocab);
                var want = penalized.AsSpan(rowOf[i] * vocab, vocab);
                for (int c = 0; c < vocab; c++)
                    if (BitConverter.SingleToInt32Bits(got[c]) != BitConverter.SingleToInt32Bits(want[c]))
                        Assert.Fail($"penalized logit {c} differs: {got[c]} vs {want[c]} ({what})");
                device[i].CommitDeviceChoice();
                history[i].Add(expected[i]);
            }
        }
    }

    [TestCase(1, 4, 16)]
    [TestCase(2, 4, 4)]
    [TestCase(37, 6, 16)]
    [TestCase(1000, 8, 16)]
    [TestCase(1537, 6, 64)]
    [TestCase(300, 5, 1)]
    public void ChoosesWhatTheHostSamplerChooses(int vocab, int rows, int groupSize) =>
        Compare(vocab, rows, steps: 6, groupSize, levels: 0, seed: vocab * 31 + groupSize);

    [TestCase(257, 8)]
    [TestCase(1000, 16)]
    public void ChoosesWhatTheHostSamplerChooses_WithTies(int vocab, int groupSize) =>
        Compare(vocab, rows: 8, steps: 5, groupSize, levels: 6, seed: vocab + 7);

    [Test]
    public void GreedyRankKey_IsTensorPrimitivesIndexOfMax()
    {
        var r = new Random(5);
        for (int trial = 0; trial < 500; trial++)
        {
            int n = r.Next(1, 40);
            var x = new float[n];
            for (int i = 0; i < n; i++)
                x[i] = r.Next(6) switch { 0 => 0f, 1 => -0f, 2 => float.NaN, 3 => float.PositiveInfinity, 4 => r.Next(3), _ => -r.Next(3) };
            if (r.Next(2) == 0)
                for (int i = 0; i < n; i++)
                    if (float.IsNaN(x[i])) x[i] = 1f;
            ulong best = ulong.MaxValue;
            for (int i = 0; i < n; i++) best = Math.Min(best, SamplingMath.Key(x[i], i));
            Assert.That(SamplingMath.IdOf(best), Is.EqualTo(TensorPrimitives.IndexOfMax<float>(x)), string.Join(", ", x));
        }
    }

    [Test]
    public void Weights_FollowTheExponential()
    {
        for (float d = 0; d > -28; d -= 0.0137f)
        {
            double expected = Math.Exp(d) * (1L << SamplingMath.WeightBits);
            Assert.That((double)SamplingMath.Weight(d), Is.EqualTo(expected).Within(2e-5 * expected + 1), $"d = {d}");
        }
        Assert.That(SamplingMath.Weight(0f), Is.EqualTo(1L << SamplingMath.WeightBits));
        Assert.That(SamplingMath.Weight(float.NaN), Is.Zero);
        Assert.That(SamplingMath.Weight(float.NegativeInfinity), Is.Zero);
    }

    [Test]
    public void ReservedDraw_IsTheNextHostDraw_WhenTheDeviceChoiceIsNotUsed()
    {
        var options = new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0, Seed = 11 };
        var plain = new Sampler(options, 64);
        var reserving = new Sampler(options, 64);
        var r = new Random(3);
        var rows = new DeviceSamplingRows { VocabSize = 64 };
        for (int step = 0; step < 20; step++)
        {
            var logits = new float[64];
            FillLogits(r, logits, 0);
            rows.Clear();
            reserving.AddDeviceRow(rows, 0, [], 0);
            reserving.AddDeviceRow(rows, 0, [], 0);   // described twice (a retried step): still one draw
            Assert.That(reserving.Sample((float[])logits.Clone(), []), Is.EqualTo(plain.Sample((float[])logits.Clone(), [])));
        }
    }
}
