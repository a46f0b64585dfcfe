using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Tests.Support;

namespace Inference.Tests.Backends.Cpu;

/// <summary>The matmul kernels on the weight matrices of real GGUF files (read in place from the mapped file).</summary>
public unsafe class MatMulModelTests
{
    private static IEnumerable<string> SupportedPaths() =>
        Enum.GetValues<KernelPath>().Where(KernelPaths.IsSupported).Select(p => p.ToString());

    [TestCaseSource(nameof(SupportedPaths))]
    public void Stories260K_F32_matrices_match_the_reference(string pathName)
    {
        var path = Enum.Parse<KernelPath>(pathName);
        using var file = GgufFile.Open(TestData.Stories260K);
        using var pool = new WorkerPool(2);
        int checkedCount = 0;
        foreach (var t in file.Tensors)
        {
            if (t.Dimensions.Length != 2) continue;
            Assert.That(t.Type, Is.EqualTo(GgmlType.F32), t.Name);
            var w = new WeightMatrix(t.Type, file.GetTensorPointer(t), checked((int)t.Dimensions[1]), checked((int)t.Dimensions[0]));
            CheckAgainstReference(w, batch: 3, path, pool, t.Name);
            checkedCount++;
        }
        Assert.That(checkedCount, Is.EqualTo(2 + 5 * 7));
    }

    [TestCaseSource(nameof(SupportedPaths))]
    public void Tiny_random_F16_matrices_match_the_reference(string pathName)
    {
        var path = Enum.Parse<KernelPath>(pathName);
        using var file = GgufFile.Open(TestData.Path("llama-2-tiny-random/llama-2-tiny-random.gguf"));
        using var pool = new WorkerPool(2);
        int f16Count = 0;
        foreach (var t in file.Tensors)
        {
            if (t.Dimensions.Length != 2) continue;
            var w = new WeightMatrix(t.Type, file.GetTensorPointer(t), checked((int)t.Dimensions[1]), checked((int)t.Dimensions[0]));
            CheckAgainstReference(w, batch: 5, path, pool, t.Name);
            if (t.Type == GgmlType.F16) f16Count++;
        }
        Assert.That(f16Count, Is.GreaterThanOrEqualTo(9));
    }

    [TestCase(GgmlType.Q8_0)]
    [TestCase(GgmlType.Q4_0)]
    [TestCase(GgmlType.BF16)]
    public void Stories260K_classifier_requantized(GgmlType type)
    {
        using var file = GgufFile.Open(TestData.Stories260K);
        var t = file.GetTensor("output.weight");
        int rows = (int)t.Dimensions[1], cols = (int)t.Dimensions[0];
        var src = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(file.GetTensorBytes(t));
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var bytes = new byte[rows * rowBytes];
        for (int r = 0; r < rows; r++) Quantize.Row(type, src.Slice(r * cols, cols), bytes.AsSpan((int)(r * rowBytes), (int)rowBytes));
        using var pool = new WorkerPool(2);
        fixed (byte* pw = bytes)
        {
            var w = new WeightMatrix(type, pw, rows, cols);
            foreach (var p in Enum.GetValues<KernelPath>().Where(KernelPaths.IsSupported))
                CheckAgainstReference(w, batch: 4, p, pool, $"{type} {p}");
        }
    }

    private static void CheckAgainstReference(in WeightMatrix w, int batch, KernelPath path, WorkerPool pool, string what)
    {
        var rng = new Random(w.Rows * 31 + w.Cols);
        var x = CpuTestHelpers.RandomFloats(rng, batch * w.Cols);
        var y = new float[batch * w.Rows];
        y.AsSpan().Fill(float.NaN);
        MatMul.Multiply(w, x, y, batch, pool, path);
        var exact = new double[batch * w.Rows];
        MatMulReference.Multiply(w, x, exact, batch);
        var wf = MatMulReference.DequantizedWeights(w);
        int block = MatMulReference.ActivationBlock(w.Type);
        for (int b = 0; b < batch; b++)
        for (int r = 0; r < w.Rows; r++)
        {
            double abs = 0, quant = 0;
            for (int c = 0; c < w.Cols; c++)
            {
                abs += Math.Abs(wf[r * w.Cols + c] * x[b * w.Cols + c]);
                if (block != 0)
                {
                    int start = b * w.Cols + c / block * block;
                    float amax = 0;
                    for (int j = start; j < start + block; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
                    quant += Math.Abs(wf[r * w.Cols + c]) * amax / 127 / 2;
                }
            }
            Assert.That(y[b * w.Rows + r], Is.EqualTo(exact[b * w.Rows + r]).Within(quant * 1.0001 + 2e-5 * abs + 1e-6),
                $"{what}: batch row {b}, output {r}");
        }
    }
}
