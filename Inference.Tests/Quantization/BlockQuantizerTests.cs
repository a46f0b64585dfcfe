using Inference.Loading;
using Inference.Quantization;
using Inference.Tests.Support;

namespace Inference.Tests.Quantization;

/// <summary>Our block quantizers against ggml's own (<c>ggml_quantize_chunk</c>, no importance matrix), byte for byte.</summary>
[NonParallelizable]
public class BlockQuantizerTests
{
    private static readonly GgmlType[] Types =
        [GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K];

    /// <summary>
    /// Rows of 512 values, 64 per distribution: normal at several scales, uniform, all positive, all negative, zeros,
    /// constants, one outlier, tiny (below f16's range), halves (ties for the rounding), sparse and mixed-magnitude blocks.
    /// </summary>
    private static float[] Rows(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var x = new float[rows * cols];
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * cols, cols);
            int kind = r % 12;
            float scale = (float)Math.Pow(10, rng.Next(-3, 3));
            for (int c = 0; c < cols; c++)
            {
                float g = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
                row[c] = kind switch
                {
                    0 or 1 => g * scale,
                    2 => (float)(rng.NextDouble() * 2 - 1) * scale,
                    3 => MathF.Abs(g) * scale + 0.01f,
                    4 => -MathF.Abs(g) * scale,
                    5 => c % 64 < 32 ? 0f : g,              // zero blocks beside normal ones
                    6 => c % 256 < 128 ? 0.375f : -2.5f,    // constant blocks
                    7 => c == 37 || c == 300 ? 50f * g : g * 0.01f,
                    8 => g * 1e-9f,                         // scales underflow f16
                    9 => rng.Next(-8, 9) * 0.5f,            // many ties
                    10 => rng.Next(10) == 0 ? g : 0f,
                    _ => g * (float)Math.Pow(10, c / 64 - 3),
                };
            }
        }
        return x;
    }

    [Test]
    public void EveryTypeMatchesGgmlByteForByte([ValueSource(nameof(Types))] GgmlType type)
    {
        const int rows = 96, cols = 512;
        var x = Rows(rows, cols, seed: (int)type * 7 + 1);
        var expected = GgmlCpu.QuantizeChunk((int)type, x, rows, cols);
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var actual = new byte[rows * rowBytes];
        actual.AsSpan().Fill(0xA5); // poison
        for (int r = 0; r < rows; r++)
            BlockQuantizer.QuantizeRow(type, x.AsSpan(r * cols, cols), actual.AsSpan(r * rowBytes, rowBytes));
        for (int i = 0; i < actual.Length; i++)
        {
            if (actual[i] != expected[i])
            {
                int blockBytes = GgmlTypeInfo.BlockBytes(type);
                Assert.Fail($"{type}: first difference at byte {i} (row {i / rowBytes}, block {i % rowBytes / blockBytes}, offset {i % blockBytes} in the block): ours {actual[i]:X2}, ggml {expected[i]:X2}");
            }
        }
    }

    [Test]
    public void NearestIntRoundsHalvesToEven()
    {
        Assert.That(BlockQuantizer.NearestInt(2.5f), Is.EqualTo(2));
        Assert.That(BlockQuantizer.NearestInt(3.5f), Is.EqualTo(4));
        Assert.That(BlockQuantizer.NearestInt(-2.5f), Is.EqualTo(-2));
        Assert.That(BlockQuantizer.NearestInt(-0.49f), Is.EqualTo(0));
        Assert.That(BlockQuantizer.NearestInt(100.51f), Is.EqualTo(101));
    }

    [Test]
    public void BadLengthsAreRejected()
    {
        Assert.Throws<ArgumentException>(() => BlockQuantizer.QuantizeRow(GgmlType.Q4_K, new float[255], new byte[144]));
        Assert.Throws<ArgumentException>(() => BlockQuantizer.QuantizeRow(GgmlType.Q6_K, new float[256], new byte[209]));
        Assert.Throws<NotSupportedException>(() => BlockQuantizer.QuantizeRow(GgmlType.Q2_K, new float[256], new byte[84]));
    }
}
