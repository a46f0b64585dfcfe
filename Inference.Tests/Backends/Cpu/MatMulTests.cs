using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Tests.Backends.Cpu;

public unsafe class MatMulTests
{
    private static readonly GgmlType[] Types =
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.IQ4_NL,
         GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_XS];

    private static IEnumerable<KernelPath> SupportedPaths() => Enum.GetValues<KernelPath>().Where(KernelPaths.IsSupported);

    // (rows, cols): odd row counts; column counts with vector tails for the float kernels, odd block counts for the
    // 32-blocks and several super-blocks for the K-quants.
    private static (int Rows, int Cols)[] Shapes(GgmlType type) => MatMulReference.ActivationBlock(type) switch
    {
        256 => [(7, 256), (33, 768), (5, 1024)],
        32 => [(7, 32), (33, 96), (5, 1056), (16, 288)],
        _ => [(7, 1), (33, 47), (5, 1040)],
    };

    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var type in Types)
        foreach (var path in SupportedPaths())
        foreach (var (rows, cols) in Shapes(type))
        foreach (int batch in new[] { 1, 3, 17 })
            yield return new TestCaseData(type, path.ToString(), rows, cols, batch).SetArgDisplayNames($"{type}", $"{path}", $"{rows}x{cols}", $"batch {batch}");
    }

    [TestCaseSource(nameof(Cases))]
    public void Fast_matmul_matches_the_float64_reference(GgmlType type, string pathName, int rows, int cols, int batch)
    {
        // NOTE: the path travels as a name because KernelPath is internal and test methods are public.
        var path = Enum.Parse<KernelPath>(pathName);
        Check(type, path, rows, cols, batch, seed: (int)type * 1_000_003 + rows * 7919 + cols * 31 + batch);
    }

    private static readonly GgmlType[] PackedTypes =
        [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.IQ4_NL, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K,
         GgmlType.Q3_K, GgmlType.Q2_K, GgmlType.IQ4_XS];

    private static readonly GgmlType[] PackedSuperBlockTypes =
        [GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.Q3_K, GgmlType.Q2_K, GgmlType.IQ4_XS];

    private static readonly GgmlType[] PackedBlock32Types =
        [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.IQ4_NL];

    /// <summary>
    /// Batch invariance of the packed 32-value-block kernels on every vector path (VNNI loops included, emulated where
    /// the machine lacks AVX-VNNI): each batch row of batches 1 … 9 (every tile width and their remainders) gets the
    /// bits it gets alone, in the five whole groups and in the three tail rows of the GGUF layout.
    /// </summary>
    [Test]
    public void Packed_32_value_blocks_give_each_batch_row_its_batch_one_bits([ValueSource(nameof(PackedBlock32Types))] GgmlType type)
    {
        if (!PackedWeights.IsSupportedFor(type)) Assert.Ignore($"no packed {type} kernel on this machine");
        AssertBatchRowsGetBatchOneBits(type, 43, 320, 71);
    }

    // Packed weights (eight rows per group): row counts below, at and across whole groups; batch sizes through every
    // tile width (the K-quant kernels split dependency chains differently for one or two batch rows than for three or four);
    // one batch row over many groups reads two groups side by side (Q8_0).
    private static IEnumerable<TestCaseData> PackedCases()
    {
        foreach (var type in PackedTypes)
        {
            int block = GgmlTypeInfo.BlockElements(type);
            foreach (var (rows, blocks, batch) in new[] { (7, 3, 1), (8, 1, 1), (8, 3, 2), (16, 2, 3), (33, 2, 4), (33, 9, 17), (64, 4, 6), (64, 4, 1), (203, 3, 1) })
                yield return new TestCaseData(type, rows, blocks * block, batch);
        }
    }

    [TestCaseSource(nameof(PackedCases))]
    public void Packed_weights_match_the_float64_reference(GgmlType type, int rows, int cols, int batch)
    {
        if (!PackedWeights.IsSupportedFor(type)) Assert.Ignore($"no packed {type} kernel on this machine");
        // Every vector path: with AVX-VNNI the K-quant kernels also run their AVX2 integer steps at Vector256.
        foreach (var path in SupportedPaths().Where(p => p >= KernelPath.Vector256))
            Check(type, path, rows, cols, batch, seed: rows * 7919 + cols * 31 + batch, prepare: true);
    }

    /// <summary>Batch invariance: a request's outputs must not depend on what it is batched with.</summary>
    /// <remarks>203 rows over two threads make chunks of 25 rows (eight-row float tiles, four-row tiles and single rows);
    /// float rows of 325 columns have a scalar tail.</remarks>
    [Test]
    public void Each_batch_row_gets_the_bits_it_gets_alone(
        [ValueSource(nameof(Types))] GgmlType type, [Values(45, 203)] int rows, [Values(11, 14)] int batch)
    {
        bool isFloat = type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;
        int cols = MatMulReference.ActivationBlock(type) == 256 ? 768 : isFloat ? 325 : 320;
        var rng = new Random(5 + (int)type + rows + batch);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var all = new float[batch * rows];
        all.AsSpan().Fill(float.NaN);
        using var pool = new WorkerPool(rows > 100 ? 2 : 3);
        fixed (byte* pw = weights)
        {
            // As the model uses them: prepared (repacked where this machine's fastest kernel wants it).
            var w = MatMul.Prepare(new WeightMatrix(type, pw, rows, cols));
            if (PackedWeights.IsSupportedFor(type)) Assert.That(w.Packed, Is.Not.Null, "packed");
            MatMul.Multiply(w, x, all, batch, pool);
            var one = new float[rows];
            for (int b = 0; b < batch; b++)
            {
                one.AsSpan().Fill(float.NaN);
                MatMul.Multiply(w, x.AsSpan(b * cols, cols), one, 1, pool);
                Assert.That(all.AsSpan(b * rows, rows).ToArray(), Is.EqualTo(one), $"batch row {b}");
            }
        }
    }

    /// <summary>
    /// Small float batches (speculative verification: the model's K + 1 positions) take single-pass tiles that read
    /// each weight once for all batch rows, in column chunks: every batch row must get the bits it gets alone, and on
    /// the AVX2 path the bits of the plain reference with that path's accumulation order. Rows: whole four-row tiles and
    /// remainders; columns: under one vector, a vector tail, exactly one chunk, chunk boundaries with and without a tail.
    /// </summary>
    [Test]
    public void Small_float_batches_give_each_row_its_batch_one_bits(
        [Values(GgmlType.F32, GgmlType.F16, GgmlType.BF16)] GgmlType type, [Values(1, 2, 3, 4, 5, 6, 7, 8, 9)] int batch)
    {
        var shapes = new[] { (7, 5), (13, 15), (16, 256), (9, 264), (21, 520), (8, 1031) };
        using var pool = new WorkerPool(2);
        foreach (var path in SupportedPaths())
        foreach (var (rows, cols) in shapes)
        {
            var rng = new Random(41 + 13 * batch + rows + cols + (int)type);
            var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
            var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
            var all = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
            var one = new float[rows];
            string where = $"{path}, {rows}x{cols}";
            fixed (byte* pw = weights)
            {
                var w = MatMul.Prepare(new WeightMatrix(type, pw, rows, cols));
                MatMul.Multiply(w, x, all, batch, pool, path);
                for (int b = 0; b < batch; b++)
                {
                    one.AsSpan().Fill(float.NaN);
                    MatMul.Multiply(w, x.AsSpan(b * cols, cols), one, 1, pool, path);
                    Assert.That(all.AsSpan(b * rows, rows).ToArray(), Is.EqualTo(one), $"batch row {b}, {where}");
                }
                if (KernelPaths.Floats256(path))
                {
                    var plain = new float[batch * rows];
                    MatMulReference.MultiplyFloat256(w, x, plain, batch);
                    Assert.That(all, Is.EqualTo(plain), $"plain reference, {where}");
                }
            }
        }
    }

    /// <summary>The packed super-block kernels at every batch size from 1 to 9 (every tile width and the one-row steps): each
    /// batch row gets the bits it gets alone, on every vector path. 41 rows: five groups and a tail row of the GGUF layout.</summary>
    [Test]
    public void Packed_super_blocks_give_each_batch_row_its_batch_one_bits([ValueSource(nameof(PackedSuperBlockTypes))] GgmlType type)
    {
        if (!PackedWeights.IsSupportedFor(type)) Assert.Ignore($"no packed {type} kernel on this machine");
        int cols = 2 * GgmlTypeInfo.BlockElements(type) * (GgmlTypeInfo.BlockElements(type) == 32 ? 8 : 1);
        AssertBatchRowsGetBatchOneBits(type, 41, cols, 29);
    }

    /// <summary>Batches 2..9 of a prepared (packed) matrix on every vector path that runs it give each row the bits of
    /// that row multiplied alone; outputs start as NaN.</summary>
    private static void AssertBatchRowsGetBatchOneBits(GgmlType type, int rows, int cols, int seed)
    {
        var rng = new Random(seed + (int)type);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, 9 * cols);
        using var pool = new WorkerPool(2);
        fixed (byte* pw = weights)
        {
            var w = MatMul.Prepare(new WeightMatrix(type, pw, rows, cols));
            Assert.That(w.Packed, Is.Not.Null, "packed");
            foreach (var path in SupportedPaths().Where(PackedWeights.Runs))
            {
                var alone = Enumerable.Repeat(float.NaN, 9 * rows).ToArray();
                for (int b = 0; b < 9; b++) MatMul.Multiply(w, x.AsSpan(b * cols, cols), alone.AsSpan(b * rows, rows), 1, pool, path);
                Assert.That(alone, Has.None.NaN, $"{path}: every output written");
                for (int batch = 2; batch <= 9; batch++)
                {
                    var all = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
                    MatMul.Multiply(w, x.AsSpan(0, batch * cols), all, batch, pool, path);
                    Assert.That(all, Is.EqualTo(alone.AsSpan(0, batch * rows).ToArray()), $"{path}, batch {batch}");
                }
            }
        }
    }

    [Test]
    public void Shared_activations_give_the_bits_of_separate_products(
        [ValueSource(nameof(PackedTypes))] GgmlType type, [Values(1, 5)] int batch, [Values(2, 3)] int matrices)
    {
        int cols = 3 * GgmlTypeInfo.BlockElements(type) * (GgmlTypeInfo.BlockElements(type) == 32 ? 8 : 1);
        CompareSharedWithSeparate(type, batch, matrices, cols, 17 + (int)type + batch, allFinite: true, expectRan: true,
            (ReadOnlySpan<float> x, int b, WorkerPool pool, in WeightMatrix w0, Span<float> y0, in WeightMatrix w1, Span<float> y1, in WeightMatrix w2, Span<float> y2) =>
            {
                MatMul.MultiplyShared(x, b, pool, w0, y0, w1, y1, w2, y2);
                return true;
            });
    }

    /// <summary>
    /// Packed matrices of different types whose kernels read the same activations (Q8_K: a Q4_K_M layer's Q4_K q, k with a
    /// Q6_K v; Q8_0; Q8_1) run as one job with the bits of the separate products; types that read different activations
    /// (Q8_0 with Q4_K, Q4_0 with Q4_1) are not one job and still give those bits.
    /// </summary>
    [TestCase(GgmlType.Q4_K, GgmlType.Q4_K, GgmlType.Q6_K, true)]
    [TestCase(GgmlType.Q6_K, GgmlType.Q5_K, GgmlType.Q4_K, true)]
    [TestCase(GgmlType.Q3_K, GgmlType.Q2_K, GgmlType.IQ4_XS, true)]
    [TestCase(GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.IQ4_NL, true)]
    [TestCase(GgmlType.Q5_0, GgmlType.Q8_0, GgmlType.Q8_0, true)]
    [TestCase(GgmlType.Q4_1, GgmlType.Q5_1, GgmlType.Q4_1, true)]
    [TestCase(GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q8_0, false)]
    [TestCase(GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q4_0, false)]
    public void Shared_activations_of_mixed_packed_types_give_the_bits_of_separate_products(GgmlType t0, GgmlType t1, GgmlType t2, bool oneJob)
    {
        GgmlType[] types = [t0, t1, t2];
        if (!types.All(PackedWeights.IsSupportedFor)) Assert.Ignore("no packed kernels on this machine");
        int cols = types.Any(t => GgmlTypeInfo.BlockElements(t) == 256) ? 512 : 256;
        foreach (int batch in new[] { 1, 5 })
        foreach (int matrices in new[] { 2, 3 })
            CompareSharedWithSeparate(types, batch, matrices, cols, 41 + batch + matrices, allFinite: true, expectRan: true,
                (ReadOnlySpan<float> x, int b, WorkerPool pool, in WeightMatrix w0, Span<float> y0, in WeightMatrix w1, Span<float> y1, in WeightMatrix w2, Span<float> y2) =>
                {
                    bool together = MatMul.SharesOnePackedJob(w0, w1, w2);
                    Assert.That(together, Is.EqualTo(oneJob || (matrices == 2 && t1.Equals(t0))), $"one job, {matrices} matrices");
                    MatMul.MultiplyShared(x, b, pool, w0, y0, w1, y1, w2, y2);
                    return true;
                });
    }

    /// <summary>
    /// Two or three float matrices sharing their activations run as one pool job (rows of every matrix in one range, split
    /// across matrix boundaries by the pool's chunks); every output must have the bits of the separate products, F16 with
    /// finite weights (re-biased activations), with an infinity in one matrix only (the matrices would take different
    /// kernels: refused) or in all, and with activations of 2^16 and more.
    /// </summary>
    [Test]
    public void Shared_float_activations_give_the_bits_of_separate_products(
        [Values(GgmlType.F32, GgmlType.F16, GgmlType.BF16)] GgmlType type, [Values(1, 5)] int batch, [Values(2, 3)] int matrices,
        [Values("finite", "large-x")] string variant) => SharedFloats(type, batch, matrices, variant);

    [Test]
    public void Shared_f16_activations_with_infinite_weights_give_the_bits_of_separate_products(
        [Values(1, 5)] int batch, [Values(2, 3)] int matrices, [Values("one-infinite", "all-infinite")] string variant) =>
        SharedFloats(GgmlType.F16, batch, matrices, variant);

    private static void SharedFloats(GgmlType type, int batch, int matrices, string variant)
    {
        // NOTE: every F16 matrix gets a subnormal half, so each finite one is stored times 2^10 (WeightMatrix.HalfShift); an
        // infinite one is kept as stored, so with one infinite matrix the activations would differ at any batch: refused.
        bool mixed = variant == "one-infinite";
        CompareSharedWithSeparate(type, batch, matrices, 96, 31 + (int)type + batch + matrices, allFinite: !variant.EndsWith("infinite"),
            expectRan: !mixed, MatMul.TryMultiplySharedFloats,
            weights =>
            {
                if (type == GgmlType.F16) foreach (var w in weights) (w[2 * 3], w[2 * 3 + 1]) = (0x01, 0x00);   // 2^-24 at row 0, column 3
                if (variant == "one-infinite") weights[1][2 * 7 + 1] = 0x7C;                         // +inf at row 0, column 7 of matrix 1
                if (variant == "all-infinite") foreach (var w in weights) w[2 * 5 + 1] = 0xFC;       // -inf at row 0, column 5
            },
            x =>
            {
                if (variant == "large-x") x[3] = 70000f;
            });
    }

    private delegate bool SharedProduct(ReadOnlySpan<float> x, int batch, WorkerPool pool,
        in WeightMatrix w0, Span<float> y0, in WeightMatrix w1, Span<float> y1, in WeightMatrix w2, Span<float> y2);

    /// <summary>
    /// Runs <paramref name="shared"/> on two or three random matrices of 45, 24 and 13 rows (a three-thread pool, so chunks
    /// straddle matrix boundaries) and compares every output with the separate products; <paramref name="expectRan"/> is
    /// whether <paramref name="shared"/> must take the product (false: it must refuse and write nothing).
    /// </summary>
    private static void CompareSharedWithSeparate(GgmlType type, int batch, int matrices, int cols, int seed, bool allFinite, bool expectRan,
        SharedProduct shared, Action<byte[][]>? editWeights = null, Action<float[]>? editX = null) =>
        CompareSharedWithSeparate([type, type, type], batch, matrices, cols, seed, allFinite, expectRan, shared, editWeights, editX);

    private static void CompareSharedWithSeparate(GgmlType[] types, int batch, int matrices, int cols, int seed, bool allFinite, bool expectRan,
        SharedProduct shared, Action<byte[][]>? editWeights = null, Action<float[]>? editX = null)
    {
        int[] rows = [45, 24, 13];
        var rng = new Random(seed);
        var weights = rows.Select((r, i) => CpuTestHelpers.RandomWeights(rng, types[i], r, cols)).ToArray();
        editWeights?.Invoke(weights);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        editX?.Invoke(x);
        var together = rows.Select(r => Enumerable.Repeat(float.NaN, batch * r).ToArray()).ToArray();
        var separate = rows.Select(r => Enumerable.Repeat(float.NaN, batch * r).ToArray()).ToArray();
        using var pool = new WorkerPool(3);
        fixed (byte* p0 = weights[0])
        fixed (byte* p1 = weights[1])
        fixed (byte* p2 = weights[2])
        {
            var w = new[] { new WeightMatrix(types[0], p0, rows[0], cols), new WeightMatrix(types[1], p1, rows[1], cols), new WeightMatrix(types[2], p2, rows[2], cols) }
                .Select(m => MatMul.Prepare(m)).ToArray();
            var w2 = matrices == 3 ? w[2] : default;
            bool ran = shared(x, batch, pool, w[0], together[0], w[1], together[1], w2, matrices == 3 ? together[2] : default);
            Assert.That(ran, Is.EqualTo(expectRan), "one job unless the matrices take different kernels");
            if (!ran)
            {
                Assert.That(together.SelectMany(y => y), Has.All.NaN, "a refused product writes nothing");
                return;
            }
            for (int i = 0; i < matrices; i++) MatMul.Multiply(w[i], x, separate[i], batch, pool);
        }
        for (int i = 0; i < matrices; i++)
        {
            // NOTE: both sides start as NaN, and the separate products write every output (an infinite weight can make a
            // true NaN, which NUnit counts as equal to NaN).
            if (allFinite) Assert.That(together[i], Has.None.NaN, $"matrix {i} fully written");
            Assert.That(together[i], Is.EqualTo(separate[i]), $"matrix {i}");
        }
        if (matrices == 2) Assert.That(together[2], Has.All.NaN, "no third matrix written when none is given");
    }

    /// <summary>
    /// F16 weights without infinities or NaNs take a lighter widening at batch 1 with the activations carrying the
    /// 2^112 re-bias; weights with an infinity, or activations of 2^16 and more, take the full widening. Each case must
    /// give the bits the batched (full-widening) product gives.
    /// </summary>
    [Test]
    public void F16_batch_one_gives_the_batched_bits_with_infinities_and_large_activations(
        [Values(false, true)] bool infinity, [Values(false, true)] bool largeActivation)
    {
        const int rows = 19, cols = 72;
        var rng = new Random(31 + (infinity ? 1 : 0) + (largeActivation ? 2 : 0));
        var weights = CpuTestHelpers.RandomWeights(rng, GgmlType.F16, rows, cols);
        if (infinity) BitConverter.TryWriteBytes(weights.AsSpan((5 * cols + 17) * 2, 2), (ushort)0x7C00);
        var x = CpuTestHelpers.RandomFloats(rng, cols);
        if (largeActivation) x[40] = 70_000f;
        var twice = x.Concat(x).ToArray();
        var one = Enumerable.Repeat(float.NaN, rows).ToArray();
        var two = Enumerable.Repeat(float.NaN, 2 * rows).ToArray();
        using var pool = new WorkerPool(2);
        fixed (byte* pw = weights)
        {
            var w = MatMul.Prepare(new WeightMatrix(GgmlType.F16, pw, rows, cols));
            Assert.That(w.FiniteHalves, Is.EqualTo(!infinity), "finite halves");
            MatMul.Multiply(w, x, one, 1, pool);
            MatMul.Multiply(w, twice, two, 2, pool);
        }
        if (infinity) Assert.That(float.IsInfinity(one[5]) || float.IsNaN(one[5]), "the infinity reaches its row");
        Assert.That(one, Is.EqualTo(two.AsSpan(0, rows).ToArray()));
        Assert.That(one, Is.EqualTo(two.AsSpan(rows, rows).ToArray()));
    }

    private static readonly GgmlType[] IntegerTypes =
        [GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.IQ4_NL, GgmlType.Q2_K, GgmlType.Q3_K,
         GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_XS];

    /// <summary>
    /// The quantized kernels' AVX2 steps (<c>vpmaddubsw</c>, <c>vpmaddwd</c>) and their VNNI loops compute the same exact
    /// integers, so they give the same bits: the VNNI loops run with emulated VNNI instructions on every AVX2 machine and
    /// with the real ones where AVX-VNNI exists. 41 rows: five packed groups and a tail row of the GGUF layout.
    /// </summary>
    [Test]
    public void Integer_kernels_give_the_same_bits_with_and_without_VNNI(
        [ValueSource(nameof(IntegerTypes))] GgmlType type, [Values(1, 3, 4, 6)] int batch)
    {
        if (!KernelPaths.IsSupported(KernelPath.Vector256)) Assert.Ignore("needs AVX2");
        const int rows = 41, cols = 768;
        var rng = new Random(23 + batch + (int)type);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var paths = new[] { KernelPath.Vector256, KernelPath.Vector256VnniEmulated, KernelPath.Vector256Vnni }.Where(KernelPaths.IsSupported).ToArray();
        var y = paths.Select(_ => Enumerable.Repeat(float.NaN, batch * rows).ToArray()).ToArray();
        using var pool = new WorkerPool(2);
        fixed (byte* pw = weights)
        {
            var w = MatMul.Prepare(new WeightMatrix(type, pw, rows, cols));
            Assert.That(w.Packed is not null, Is.EqualTo(PackedWeights.IsSupportedFor(type)), "packed where this machine packs");
            for (int i = 0; i < paths.Length; i++) MatMul.Multiply(w, x, y[i], batch, pool, paths[i]);
        }
        Assert.That(y[0], Has.None.NaN);
        for (int i = 1; i < paths.Length; i++) Assert.That(y[i], Is.EqualTo(y[0]), $"{paths[i]} against {paths[0]}");
    }

    /// <summary>
    /// Batch 1 on packed weights reads two groups side by side (<see cref="IPackedKernel.TileTwoGroups"/>; without VNNI
    /// its own loop): one thread takes the whole range, so 203 rows are twelve pairs of groups, one group alone and three
    /// tail rows. Every batch row of batches 1 to 9 must get the bits it gets alone, on AVX2 and on the emulated VNNI
    /// loops alike, and batch 1 must match the float64 reference.
    /// </summary>
    [Test]
    public void Batch_one_reading_two_groups_gives_the_bits_of_every_batch([ValueSource(nameof(PackedTypes))] GgmlType type)
    {
        if (!PackedWeights.IsSupportedFor(type)) Assert.Ignore($"no packed {type} kernel on this machine");
        const int rows = 203;
        int cols = MatMulReference.ActivationBlock(type) == 256 ? 512 : 160;
        var rng = new Random(61 + (int)type);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, 9 * cols);
        var one = new float[rows];
        var paths = new[] { KernelPath.Vector256, KernelPath.Vector256VnniEmulated, KernelPath.Vector256Vnni }.Where(KernelPaths.IsSupported).ToArray();
        using var pool = new WorkerPool(1);
        fixed (byte* pw = weights)
        {
            var w = MatMul.Prepare(new WeightMatrix(type, pw, rows, cols));
            Assert.That(w.Packed, Is.Not.Null, "packed");
            var alone = new float[9 * rows];
            foreach (var path in paths)
            {
                for (int b = 0; b < 9; b++)
                {
                    one.AsSpan().Fill(float.NaN);
                    MatMul.Multiply(w, x.AsSpan(b * cols, cols), one, 1, pool, path);
                    if (path == paths[0]) one.CopyTo(alone, b * rows);
                    else Assert.That(one, Is.EqualTo(alone.AsSpan(b * rows, rows).ToArray()), $"{path} against {paths[0]}, batch row {b}");
                }
                for (int batch = 2; batch <= 9; batch++)
                {
                    var all = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
                    MatMul.Multiply(w, x.AsSpan(0, batch * cols), all, batch, pool, path);
                    Assert.That(all, Is.EqualTo(alone.AsSpan(0, batch * rows).ToArray()), $"{path}, batch {batch}");
                }
            }
        }
        Check(type, KernelPath.Vector256, rows, cols, 1, seed: 67 + (int)type, prepare: true);
    }

    /// <summary>
    /// Weights of a model that streams from memory (<see cref="WeightArena.StreamsFromMemory"/>) ask for lines far ahead
    /// at batch 1 (<see cref="PackedSteps.PrefetchFar"/>, past the end of a matrix this small): the products keep every
    /// bit of the same weights packed without it, for batches 1 to 5 on every integer path.
    /// </summary>
    [Test]
    public void Weights_that_stream_from_memory_give_the_bits_of_weights_that_do_not([ValueSource(nameof(PackedTypes))] GgmlType type)
    {
        if (!PackedWeights.IsSupportedFor(type)) Assert.Ignore($"no packed {type} kernel on this machine");
        const int rows = 203;
        int cols = MatMulReference.ActivationBlock(type) == 256 ? 512 : 160;
        var rng = new Random(71 + (int)type);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, 5 * cols);
        var paths = new[] { KernelPath.Vector256, KernelPath.Vector256VnniEmulated, KernelPath.Vector256Vnni }.Where(KernelPaths.IsSupported).ToArray();
        using var pool = new WorkerPool(2);
        fixed (byte* pw = weights)
        {
            var matrix = new WeightMatrix(type, pw, rows, cols);
            var cached = MatMul.PrepareInto(matrix, new WeightArena());
            var streamed = MatMul.PrepareInto(matrix, new WeightArena { StreamsFromMemory = true });
            Assert.That(cached.Packed!.Streams, Is.False);
            Assert.That(streamed.Packed!.Streams, Is.True);
            foreach (var path in paths)
            for (int batch = 1; batch <= 5; batch++)
            {
                var a = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
                var b = Enumerable.Repeat(float.NaN, batch * rows).ToArray();
                MatMul.Multiply(cached, x.AsSpan(0, batch * cols), a, batch, pool, path);
                MatMul.Multiply(streamed, x.AsSpan(0, batch * cols), b, batch, pool, path);
                Assert.That(a, Has.None.NaN, $"{path}, batch {batch}");
                Assert.That(b, Is.EqualTo(a), $"{path}, batch {batch}");
            }
        }
    }

    [TestCaseSource(nameof(PackedTypes))]
    public void Packed_weights_agree_with_the_unpacked_kernel(GgmlType type)
    {
        const int rows = 24, batch = 5;
        int cols = 2 * GgmlTypeInfo.BlockElements(type) * (GgmlTypeInfo.BlockElements(type) == 32 ? 8 : 1);
        var rng = new Random(11);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var packed = new float[batch * rows];
        var plain = new float[batch * rows];
        packed.AsSpan().Fill(float.NaN);
        plain.AsSpan().Fill(float.NaN);
        var absSums = new double[batch * rows];
        using var pool = new WorkerPool(2);
        fixed (byte* pw = weights)
        {
            var w = new WeightMatrix(type, pw, rows, cols);
            var prepared = MatMul.Prepare(w);
            if (prepared.Packed is null) Assert.Ignore($"no packed {type} kernel on this machine (needs AVX-VNNI)");
            MatMul.Multiply(w, x, plain, batch, pool);
            MatMul.Multiply(prepared, x, packed, batch, pool);
            var wf = MatMulReference.DequantizedWeights(w);
            for (int b = 0; b < batch; b++)
            for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                absSums[b * rows + r] += Math.Abs(wf[r * cols + c] * x[b * cols + c]);
        }
        // Same integer sums, same activations: only the f32 order of the per-block scaling differs, so the two agree to
        // a few roundings of the terms' magnitudes (not of the result's, which cancellation can make much smaller).
        for (int i = 0; i < plain.Length; i++)
            Assert.That(packed[i], Is.EqualTo(plain[i]).Within(1e-5 * absSums[i] + 1e-6), $"output {i}");
    }

    private static void Check(GgmlType type, KernelPath path, int rows, int cols, int batch, int seed, bool prepare = false)
    {
        var rng = new Random(seed);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var y = new float[batch * rows];
        y.AsSpan().Fill(float.NaN);
        using var pool = new WorkerPool(3);

        fixed (byte* pw = weights)
        {
            var w = new WeightMatrix(type, pw, rows, cols);
            if (prepare) w = MatMul.Prepare(w);
            MatMul.Multiply(w, x, y, batch, pool, path);

            var wf = MatMulReference.DequantizedWeights(w);
            var exact = new double[batch * rows];
            MatMulReference.Multiply(w, x, exact, batch);

            int block = MatMulReference.ActivationBlock(type);
            // The activations as the integer kernels see them (dequantized from the reference block quantizers).
            var xq = block == 0 ? x : QuantizedActivations(x, cols, block);
            var halfStep = block == 0 ? null : HalfSteps(x, block);
            for (int b = 0; b < batch; b++)
            for (int r = 0; r < rows; r++)
            {
                double onQuantized = 0, absProduct = 0, quantBound = 0;
                for (int c = 0; c < cols; c++)
                {
                    double wv = wf[r * cols + c];
                    onQuantized += wv * xq[b * cols + c];
                    absProduct += Math.Abs(wv * x[b * cols + c]);
                    if (halfStep is not null) quantBound += Math.Abs(wv) * halfStep[b * cols + c];
                }
                quantBound += Q8_1SumRounding(type, weights, r, cols, xq.AsSpan(b * cols, cols));
                float got = y[b * rows + r];
                // f32 accumulation (and the f32 products of scales) against float64.
                double roundoff = 2e-5 * absProduct + 1e-6;
                string where = $"batch row {b}, output {r}";
                Assert.That(got, Is.EqualTo(onQuantized).Within(roundoff + Q8_1SumRounding(type, weights, r, cols, xq.AsSpan(b * cols, cols))),
                    "against quantized activations, " + where);
                Assert.That(got, Is.EqualTo(exact[b * rows + r]).Within(quantBound * 1.0001 + roundoff), "against exact activations, " + where);
            }
        }
    }

    /// <summary>
    /// Q4_1 and Q5_1 take each block's min times the Q8_1 activation's s = f16(d·Σq) (d the unrounded scale) rather
    /// than times Σ of the dequantized activations f16(d)·Σq: at most |m|·2^-10·|d·Σq| apart per block.
    /// </summary>
    private static double Q8_1SumRounding(GgmlType type, byte[] weights, int r, int cols, ReadOnlySpan<float> xq)
    {
        if (type is not (GgmlType.Q4_1 or GgmlType.Q5_1)) return 0;
        int bb = GgmlTypeInfo.BlockBytes(type);
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        double bound = 0;
        for (int k = 0; k < cols / 32; k++)
        {
            double m = (double)BitConverter.ToHalf(weights, (int)(r * rowBytes + k * bb + 2));
            double sum = 0;
            for (int j = 0; j < 32; j++) sum += xq[32 * k + j];
            bound += Math.Abs(m) * Math.ScaleB(1, -10) * 1.01 * Math.Abs(sum);
        }
        return bound;
    }

    /// <summary>For each activation, half the quantization step of its block (blocks never straddle rows because
    /// cols is a multiple of the block), plus for Q8_0 the f16 rounding of the scale: |d − f16(d)|·|q| ≤ 2^-11·d·127.</summary>
    private static double[] HalfSteps(float[] x, int block)
    {
        var result = new double[x.Length];
        for (int start = 0; start < x.Length; start += block)
        {
            float amax = 0;
            for (int j = start; j < start + block; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
            double f16 = block == 32 ? amax * Math.ScaleB(1, -11) : 0;
            result.AsSpan(start, block).Fill(amax / 127.0 / 2 + f16);
        }
        return result;
    }

    private static float[] QuantizedActivations(float[] x, int cols, int block)
    {
        var result = new float[x.Length];
        var q = new sbyte[block];
        var bsums = new short[16];
        for (int start = 0; start < x.Length; start += block)
        {
            float d = block == 32
                ? ActivationQuantizer.Q8_0Block(x.AsSpan(start, 32), q)
                : Quantize.Q8_KBlock(x.AsSpan(start, 256), q, bsums);
            for (int j = 0; j < block; j++) result[start + j] = d * q[j];
        }
        return result;
    }

    /// <summary>The matmul check over many random seeds (SWEEP_SEEDS, default 20; SWEEP_SEED=k runs only seed k).</summary>
    [Test, Explicit("long seed sweep, run by hand")]
    public void Seed_sweep()
    {
        int seeds = int.Parse(Environment.GetEnvironmentVariable("SWEEP_SEEDS") ?? "20");
        var failures = new List<string>();
        for (int seed = 0; seed < seeds; seed++)
        foreach (var c in Cases())
        {
            var args = c.Arguments;
            if (Environment.GetEnvironmentVariable("SWEEP_SEED") is { } only && int.Parse(only) != seed) continue;
            try
            {
                Check((GgmlType)args[0]!, Enum.Parse<KernelPath>((string)args[1]!), (int)args[2]!, (int)args[3]!, (int)args[4]!, seed);
            }
            catch (Exception e)
            {
                failures.Add($"seed {seed} {string.Join(",", args)}: {e.Message}");
            }
        }
        Assert.That(failures, Is.Empty);
    }

    [Test]
    public void Integer_kernels_see_the_full_range_of_codes()
    {
        // Extreme weights (all codes 0 or 15 for Q4_0, ±127 for Q8_0) must not saturate the 16-bit pair sums.
        const int rows = 3, cols = 64;
        var x = new float[cols];
        for (int c = 0; c < cols; c++) x[c] = c % 2 == 0 ? 1f : -1f;
        foreach (var type in new[] { GgmlType.Q8_0, GgmlType.Q4_0 })
        {
            var wf = new float[cols];
            for (int c = 0; c < cols; c++) wf[c] = c % 2 == 0 ? 1f : -1f;
            var bytes = new byte[rows * GgmlTypeInfo.RowBytes(type, cols)];
            for (int r = 0; r < rows; r++) Quantize.Row(type, wf, bytes.AsSpan(r * (int)GgmlTypeInfo.RowBytes(type, cols)));
            foreach (var path in SupportedPaths())
            {
                var y = new float[rows];
                y.AsSpan().Fill(float.NaN);
                using var pool = new WorkerPool(2);
                fixed (byte* pw = bytes)
                {
                    var w = new WeightMatrix(type, pw, rows, cols);
                    MatMul.Multiply(w, x, y, 1, pool, path);
                    var exact = new double[rows];
                    MatMulReference.Multiply(w, x, exact, 1);
                    for (int r = 0; r < rows; r++) Assert.That(y[r], Is.EqualTo(exact[r]).Within(1e-3 * cols), $"{type} {path}");
                }
            }
        }
    }

    [TestCase(GgmlType.F16)]
    [TestCase(GgmlType.Q4_0)]
    [TestCase(GgmlType.Q4_K)]
    public void Repeated_calls_allocate_nothing_on_the_calling_thread(GgmlType type)
    {
        const int rows = 64, cols = 512, batch = 5;
        var rng = new Random(5);
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var y = new float[batch * rows];
        using var pool = new WorkerPool(2);
        fixed (byte* pw = weights)
        {
            var w = new WeightMatrix(type, pw, rows, cols);
            // Scratch and job boxes grow here, and every batch size's kernels are compiled (first calls allocate in the JIT).
            for (int i = 0; i < 100; i++) MatMul.Multiply(w, x, y, i % batch + 1, pool);
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 200; i++) MatMul.Multiply(w, x, y, i % batch + 1, pool);
            Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.EqualTo(0));
        }
    }

    [Test]
    public void Validates_arguments()
    {
        using var pool = new WorkerPool(1);
        var bytes = new byte[4 * 32 * 4];
        fixed (byte* pw = bytes)
        {
            var w = new WeightMatrix(GgmlType.F32, pw, 4, 32);
            Assert.Throws<ArgumentException>(() => MatMul.Multiply(w, new float[31], new float[4], 1, pool));
            Assert.Throws<ArgumentException>(() => MatMul.Multiply(w, new float[32], new float[3], 1, pool));
            Assert.Throws<ArgumentOutOfRangeException>(() => MatMul.Multiply(w, new float[32], new float[4], -1, pool));
            var q8_1 = new WeightMatrix(GgmlType.Q8_1, pw, 2, 32);
            Assert.Throws<NotSupportedException>(() => MatMul.Multiply(q8_1, new float[32], new float[2], 1, pool));
        }
    }
}
