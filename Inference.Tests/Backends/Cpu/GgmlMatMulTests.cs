using Inference.Backends.Cpu;
using Inference.Kernels.Reference;
using Inference.Loading;
using Inference.Tests.Support;

namespace Inference.Tests.Backends.Cpu;

/// <summary>Our quantized matmuls against ggml's own <c>mul_mat</c> (llama.cpp's CPU backend) on the same bytes.</summary>
[NonParallelizable]
public unsafe class GgmlMatMulTests
{
    private static (byte[] Weights, float[] X) RandomProblem(GgmlType type, int rows, int cols, int batch, int seed)
    {
        var rng = new Random(seed);
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var weights = new byte[rows * rowBytes];
        for (int r = 0; r < rows; r++)
        {
            Quantize.Row(type, CpuTestHelpers.RandomFloats(rng, cols), weights.AsSpan(r * rowBytes, rowBytes));
        }
        return (weights, CpuTestHelpers.RandomFloats(rng, batch * cols));
    }

    private static float[] Ours(GgmlType type, byte[] weights, int rows, int cols, float[] x, int batch, bool prepare = false)
    {
        var y = new float[batch * rows];
        y.AsSpan().Fill(float.NaN);
        using var pool = new WorkerPool(2);
        fixed (byte* pw = weights)
        {
            var w = new WeightMatrix(type, pw, rows, cols);
            if (prepare)
            {
                w = MatMul.Prepare(w);
                if (PackedWeights.IsSupportedFor(type)) Assert.That(w.Packed, Is.Not.Null, "packed");
            }
            MatMul.Multiply(w, x, y, batch, pool);
        }
        Assert.That(y, Has.None.NaN, "every output written");
        return y;
    }

    // batch 1 runs ggml's vec_dot, larger batches llamafile's tinyBLAS tiles (with row and column tails).
    [TestCase(128, 256, 1)]
    [TestCase(100, 1056, 1)]
    [TestCase(128, 256, 2)]
    [TestCase(36, 512, 7)]
    [TestCase(128, 256, 17)]
    public void Q8_0_is_bit_identical_to_ggml(int rows, int cols, int batch)
    {
        var (weights, x) = RandomProblem(GgmlType.Q8_0, rows, cols, batch, HashCode.Combine(rows, cols, batch));
        var expected = GgmlCpu.MatMul((int)GgmlType.Q8_0, weights, rows, cols, x, batch);
        var actual = Ours(GgmlType.Q8_0, weights, rows, cols, x, batch);
        for (int i = 0; i < expected.Length; i++)
            Assert.That(BitConverter.SingleToInt32Bits(actual[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected[i])),
                $"y[{i / rows}, {i % rows}]: {actual[i]} vs ggml {expected[i]}");
    }

    [TestCase(124, 256, 1)]
    [TestCase(128, 1056, 5)]
    public void Q4_0_matches_ggml_to_f32_roundoff(int rows, int cols, int batch)
    {
        // Same products and activation quantization; only the f32 summation order differs (see Q4_0Kernel).
        var (weights, x) = RandomProblem(GgmlType.Q4_0, rows, cols, batch, HashCode.Combine(rows, cols, batch));
        var expected = GgmlCpu.MatMul((int)GgmlType.Q4_0, weights, rows, cols, x, batch);
        var actual = Ours(GgmlType.Q4_0, weights, rows, cols, x, batch);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-6));
    }

    /// <summary>
    /// Random blocks of each type (random codes, high bits, sub-block scales and mins; small f16 scales) against ggml's
    /// mul_mat: the same activation quantization (Q8_0, Q8_1 or Q8_K) and exact integer block sums as ggml's vec_dot,
    /// the f32 order of the per-block scaling aside. Batch 1 runs vec_dot; larger batches with odd row counts take
    /// ggml's tiles and their tails where it has them.
    /// </summary>
    [TestCase(GgmlType.Q4_1, 64, 256, 1)]
    [TestCase(GgmlType.Q4_1, 37, 1056, 5)]
    [TestCase(GgmlType.Q5_0, 64, 256, 1)]
    [TestCase(GgmlType.Q5_0, 37, 1056, 5)]
    [TestCase(GgmlType.Q5_1, 64, 256, 1)]
    [TestCase(GgmlType.Q5_1, 37, 1056, 5)]
    [TestCase(GgmlType.IQ4_NL, 64, 256, 1)]
    [TestCase(GgmlType.IQ4_NL, 37, 1056, 5)]
    [TestCase(GgmlType.Q2_K, 64, 512, 1)]
    [TestCase(GgmlType.Q2_K, 37, 768, 5)]
    [TestCase(GgmlType.Q3_K, 64, 512, 1)]
    [TestCase(GgmlType.Q3_K, 37, 768, 5)]
    [TestCase(GgmlType.IQ4_XS, 64, 512, 1)]
    [TestCase(GgmlType.IQ4_XS, 37, 768, 5)]
    public void Types_match_ggml_to_f32_roundoff(GgmlType type, int rows, int cols, int batch)
    {
        var rng = new Random(HashCode.Combine((int)type, rows, cols, batch));
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var expected = GgmlCpu.MatMul((int)type, weights, rows, cols, x, batch);
        var actual = Ours(type, weights, rows, cols, x, batch);
        double err = ReferenceCompare.RelativeL2(actual, expected);
        TestContext.Out.WriteLine($"{type} {rows}x{cols} batch {batch}: relative L2 {err:E2} from ggml");
        Assert.That(err, Is.LessThan(1e-6));
    }

    /// <summary>
    /// The 32-value-block types, Q2_K, Q3_K and IQ4_XS as the model runs them, repacked eight rows per group where this machine packs them
    /// (43 rows: five groups and three tail rows of the GGUF layout), against ggml's mul_mat on the same bytes.
    /// </summary>
    [TestCase(GgmlType.Q4_0, 43, 1056, 1)]
    [TestCase(GgmlType.Q4_1, 43, 1056, 1)]
    [TestCase(GgmlType.Q4_1, 64, 256, 6)]
    [TestCase(GgmlType.Q5_0, 43, 1056, 1)]
    [TestCase(GgmlType.Q5_0, 64, 256, 6)]
    [TestCase(GgmlType.Q5_1, 43, 1056, 1)]
    [TestCase(GgmlType.Q5_1, 64, 256, 6)]
    [TestCase(GgmlType.IQ4_NL, 43, 1056, 1)]
    [TestCase(GgmlType.IQ4_NL, 64, 256, 6)]
    [TestCase(GgmlType.Q2_K, 64, 512, 1)]
    [TestCase(GgmlType.Q2_K, 37, 768, 5)]
    [TestCase(GgmlType.Q3_K, 64, 512, 1)]
    [TestCase(GgmlType.Q3_K, 37, 768, 5)]
    [TestCase(GgmlType.IQ4_XS, 64, 512, 1)]
    [TestCase(GgmlType.IQ4_XS, 61, 768, 1)]
    [TestCase(GgmlType.IQ4_XS, 37, 768, 5)]
    [TestCase(GgmlType.IQ4_XS, 96, 1024, 9)]
    public void Packed_types_match_ggml_to_f32_roundoff(GgmlType type, int rows, int cols, int batch)
    {
        var rng = new Random(HashCode.Combine((int)type, rows, cols, batch, 7));
        var weights = CpuTestHelpers.RandomWeights(rng, type, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var expected = GgmlCpu.MatMul((int)type, weights, rows, cols, x, batch);
        var actual = Ours(type, weights, rows, cols, x, batch, prepare: true);
        double err = ReferenceCompare.RelativeL2(actual, expected);
        TestContext.Out.WriteLine($"{type} {rows}x{cols} batch {batch}, packed: relative L2 {err:E2} from ggml");
        Assert.That(err, Is.LessThan(1e-6));
    }

    [TestCase(64, 256, 1)]
    [TestCase(100, 768, 1)]
    [TestCase(48, 512, 5)]
    public void Q5_K_matches_ggml_to_f32_roundoff(int rows, int cols, int batch)
    {
        // Random Q5_K blocks (random codes, high bits, scales and mins; small f16 super-block scales): the same exact
        // integer sums and Q8_K activations as vec_dot_q5_K_q8_K, the f32 order of the per-super-block scaling aside.
        var rng = new Random(HashCode.Combine(rows, cols, batch));
        var weights = CpuTestHelpers.RandomWeights(rng, GgmlType.Q5_K, rows, cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * cols);
        var expected = GgmlCpu.MatMul((int)GgmlType.Q5_K, weights, rows, cols, x, batch);
        var actual = Ours(GgmlType.Q5_K, weights, rows, cols, x, batch);
        Assert.That(ReferenceCompare.RelativeL2(actual, expected), Is.LessThan(1e-6));
    }
}
