using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Models.Graph;

namespace Inference.Tests.Backends.Cpu;

/// <summary>
/// The CPU mixture-of-experts block against its plain float64 reference: routing (softmax, top-k, renormalisation or
/// not), the shared expert's sigmoid gate, quantized experts; batch invariance; and that only the chosen experts are read.
/// </summary>
public unsafe class MixtureOfExpertsTests
{
    private const int Dim = 256, Width = 256, SharedWidth = 512, Experts = 6;

    /// <summary>A random block: router F32 [experts, dim], experts of one type, optionally a shared expert.</summary>
    private sealed class Block
    {
        public required ExpertLayer Layer { get; init; }
        public required WeightMatrix[] Stored { get; init; }
        public required float[]?[] Vectors { get; init; }
        public required List<byte[]> Memory { get; init; }

        public WeightMatrix[] Prepared() => Stored.Select(m => m.Rows == 0 ? m : MatMul.Prepare(m)).ToArray();
    }

    private static WeightMatrix Pinned(List<byte[]> memory, byte[] bytes, GgmlType type, int rows, int cols)
    {
        var pinned = GC.AllocateArray<byte>(bytes.Length, pinned: true);
        bytes.CopyTo(pinned, 0);
        memory.Add(pinned);
        return new WeightMatrix(type, (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned)), rows, cols);
    }

    private static Block NewBlock(int seed, GgmlType type, int topK, bool normalize, bool shared)
    {
        var rng = new Random(seed);
        var memory = new List<byte[]>();
        var matrices = new List<WeightMatrix>();
        var vectors = new List<float[]?>();
        int Add(WeightMatrix m)
        {
            matrices.Add(m);
            vectors.Add(null);
            return matrices.Count - 1;
        }
        byte[] Floats(int rows, int cols, float scale) =>
            MemoryMarshal.AsBytes(CpuTestHelpers.RandomFloats(rng, rows * cols, scale).AsSpan()).ToArray();
        int router = Add(Pinned(memory, Floats(Experts, Dim, 0.3f), GgmlType.F32, Experts, Dim));
        var gate = new int[Experts];
        var up = new int[Experts];
        var down = new int[Experts];
        for (int e = 0; e < Experts; e++)
        {
            gate[e] = Add(Pinned(memory, CpuTestHelpers.RandomWeights(rng, type, Width, Dim), type, Width, Dim));
            up[e] = Add(Pinned(memory, CpuTestHelpers.RandomWeights(rng, type, Width, Dim), type, Width, Dim));
            down[e] = Add(Pinned(memory, CpuTestHelpers.RandomWeights(rng, type, Dim, Width), type, Dim, Width));
        }
        var layer = new ExpertLayer(router, gate, up, down, Width, topK, normalize);
        if (shared)
        {
            int sg = Add(Pinned(memory, CpuTestHelpers.RandomWeights(rng, type, SharedWidth, Dim), type, SharedWidth, Dim));
            int su = Add(Pinned(memory, CpuTestHelpers.RandomWeights(rng, type, SharedWidth, Dim), type, SharedWidth, Dim));
            int sd = Add(Pinned(memory, CpuTestHelpers.RandomWeights(rng, type, Dim, SharedWidth), type, Dim, SharedWidth));
            matrices.Add(default);
            vectors.Add(CpuTestHelpers.RandomFloats(rng, Dim, 0.1f));
            layer = layer with { SharedGate = sg, SharedUp = su, SharedDown = sd, SharedGateInput = matrices.Count - 1, SharedWidth = SharedWidth };
        }
        return new Block { Layer = layer, Stored = [.. matrices], Vectors = [.. vectors], Memory = memory };
    }

    private static float[] Run(Block b, WeightMatrix[] prepared, float[] x, int n, WorkerPool pool, MixtureOfExperts? op = null)
    {
        var y = new float[n * Dim];
        Array.Fill(y, float.NaN);
        (op ?? new MixtureOfExperts()).Run(b.Layer, prepared, b.Vectors, x, y, n, pool);
        return y;
    }

    [TestCase(GgmlType.F32, 2, true, false, 1e-5)]
    [TestCase(GgmlType.F32, 3, false, true, 1e-5)]
    [TestCase(GgmlType.F16, 2, true, true, 1e-5)]
    // Quantized experts: the integer kernels quantize the activations (Q8_0 / Q8_K, before gate/up and before down); the
    // reference rounds them alike (else Q8_K's error alone reaches 0.1 on these random K-quant blocks).
    [TestCase(GgmlType.Q8_0, 2, true, true, 1e-4)]
    [TestCase(GgmlType.Q4_K, 2, false, true, 1e-4)]
    [TestCase(GgmlType.Q6_K, 1, true, false, 1e-4)]
    public void MatchesReference(GgmlType type, int topK, bool normalize, bool shared, double tolerance)
    {
        var b = NewBlock(11 + topK + (int)type, type, topK, normalize, shared);
        using var pool = new WorkerPool(2);
        var prepared = b.Prepared();
        foreach (int n in (ReadOnlySpan<int>)[1, 5, 19])
        {
            var x = CpuTestHelpers.RandomFloats(new Random(n), n * Dim);
            var actual = Run(b, prepared, x, n, pool);
            var expected = new double[n * Dim];
            MixtureOfExpertsReference.Run(b.Layer, b.Stored, b.Vectors, x, expected, n, quantizedActivations: true);
            for (int t = 0; t < n; t++)
            {
                double err = global::Inference.Kernels.Reference.ReferenceCompare.RelativeL2(actual.AsSpan(t * Dim, Dim).ToArray(),
                    Array.ConvertAll(expected[(t * Dim)..((t + 1) * Dim)], v => (float)v));
                Assert.That(err, Is.LessThan(tolerance), $"{type} n={n} token {t}");
            }
        }
    }

    [TestCase(GgmlType.F32)]
    [TestCase(GgmlType.Q8_0)]
    [TestCase(GgmlType.Q4_K)]
    public void RowBits_DoNotDependOnTheBatch(GgmlType type)
    {
        var b = NewBlock(5, type, 2, normalize: true, shared: true);
        using var pool = new WorkerPool(2);
        var prepared = b.Prepared();
        var op = new MixtureOfExperts();
        const int n = 23;
        var x = CpuTestHelpers.RandomFloats(new Random(3), n * Dim);
        var all = Run(b, prepared, x, n, pool, op);
        for (int t = 0; t < n; t += 5)
        {
            var alone = Run(b, prepared, x[(t * Dim)..((t + 1) * Dim)], 1, pool, op);
            Assert.That(alone, Is.EqualTo(all[(t * Dim)..((t + 1) * Dim)]), $"token {t} alone");
        }
        // A middle slice of the batch (other tokens, other expert groups).
        var part = Run(b, prepared, x[(4 * Dim)..(13 * Dim)], 9, pool, op);
        Assert.That(part, Is.EqualTo(all[(4 * Dim)..(13 * Dim)]));
    }

    [Test]
    public void ExpertsNoTokenChose_AreNeverRead()
    {
        // Route the tokens, then poison every expert none of them chose with NaN: the output must not change.
        var b = NewBlock(9, GgmlType.F32, 2, normalize: true, shared: false);
        using var pool = new WorkerPool(2);
        const int n = 2;
        var x = CpuTestHelpers.RandomFloats(new Random(8), n * Dim);
        var before = Run(b, b.Prepared(), x, n, pool);
        var logits = new double[n * Experts];
        MatMulReference.Multiply(b.Stored[b.Layer.Router], x, logits, n);
        var probs = Array.ConvertAll(logits, v => (float)v);
        var chosen = new int[n * 2];
        MixtureOfExperts.Route(probs, n, Experts, 2, true, chosen, new float[n * 2]);
        int poisoned = 0;
        for (int e = 0; e < Experts; e++)
        {
            if (chosen.Contains(e)) continue;
            foreach (int id in (ReadOnlySpan<int>)[b.Layer.Gate[e], b.Layer.Up[e], b.Layer.Down[e]])
            {
                var m = b.Stored[id];
                new Span<float>(m.Data, m.Rows * m.Cols).Fill(float.NaN);
            }
            poisoned++;
        }
        Assert.That(poisoned, Is.GreaterThanOrEqualTo(Experts - n * 2));
        var after = Run(b, b.Prepared(), x, n, pool);
        Assert.That(after, Is.EqualTo(before));
        Assert.That(after.All(float.IsFinite), Is.True);
    }

    [Test]
    public void Route_TopKInDescendingOrder_RenormalisedOrNot()
    {
        float[] logits = [0.5f, 2f, -1f, 2f, 1f];
        var p = (float[])logits.Clone();
        var chosen = new int[3];
        var weights = new float[3];
        MixtureOfExperts.Route(p, 1, 5, 3, normalize: false, chosen, weights);
        Assert.That(chosen, Is.EqualTo(new[] { 1, 3, 4 }), "ties to the lower index, then descending");
        double z = logits.Sum(l => Math.Exp(l));
        Assert.That(weights[0], Is.EqualTo(Math.Exp(2) / z).Within(1e-6));
        Assert.That(weights[2], Is.EqualTo(Math.Exp(1) / z).Within(1e-6));
        p = (float[])logits.Clone();
        MixtureOfExperts.Route(p, 1, 5, 3, normalize: true, chosen, weights);
        Assert.That(weights.Sum(), Is.EqualTo(1f).Within(1e-6));
        Assert.That(weights[0] / weights[2], Is.EqualTo(Math.E).Within(1e-5));
    }
}
