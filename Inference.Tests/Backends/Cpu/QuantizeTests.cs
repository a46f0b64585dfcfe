using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Tests.Backends.Cpu;

public class QuantizeTests
{
    [Test]
    public void Q8_0_matches_ggml_rounding()
    {
        // Values j − 16: amax 16, d = 16/127, q = round(x·127/16), halves away from zero.
        var x = new float[32];
        for (int j = 0; j < 32; j++) x[j] = j - 16;
        var block = new byte[34];
        Quantize.RowQ8_0(x, block);
        Assert.That(BinaryPrimitives.ReadHalfLittleEndian(block), Is.EqualTo((Half)(16f / 127)));
        var q = MemoryMarshal.Cast<byte, sbyte>(block.AsSpan(2));
        Assert.That(q[0], Is.EqualTo(-127));
        Assert.That(q[1], Is.EqualTo(-119)); // −15·127/16 = −119.06
        Assert.That(q[8], Is.EqualTo(-64)); // −8·127/16 = −63.5 → −64
        Assert.That(q[16], Is.EqualTo(0));
        Assert.That(q[24], Is.EqualTo(64)); // 63.5 → 64
        Assert.That(q[31], Is.EqualTo(119));
    }

    [Test]
    public void Q4_0_uses_the_signed_extreme_as_minus_eight()
    {
        var x = new float[32];
        for (int j = 0; j < 32; j++) x[j] = j * 0.25f - 2f; // −2 … 5.75; the extreme is +5.75
        var block = new byte[18];
        Quantize.RowQ4_0(x, block);
        float d = (float)BinaryPrimitives.ReadHalfLittleEndian(block);
        Assert.That(d, Is.EqualTo((float)(Half)(5.75f / -8)));
        var y = new float[32];
        Dequantize.Row(GgmlType.Q4_0, block, y);
        Assert.That(y[31], Is.EqualTo(-8 * d)); // the extreme maps to code 0 exactly (up to the f16 scale)
        Assert.That(block[2 + 15] >> 4, Is.EqualTo(0));
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void Q8_0_round_trip_error_is_within_half_a_step(int seed)
    {
        var rng = new Random(seed);
        var x = CpuTestHelpers.RandomFloats(rng, 32 * 64, 3f);
        var bytes = new byte[34 * 64];
        Quantize.RowQ8_0(x, bytes);
        var y = new float[x.Length];
        Dequantize.Row(GgmlType.Q8_0, bytes, y);
        for (int b = 0; b < 64; b++)
        {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[32 * b + j]));
            // Half a step, plus the f16 rounding of the scale (relative 2^-11 of a value up to amax).
            float bound = amax / 127 / 2 + amax / 1024;
            for (int j = 0; j < 32; j++)
                Assert.That(MathF.Abs(y[32 * b + j] - x[32 * b + j]), Is.LessThanOrEqualTo(bound), $"block {b} value {j}");
        }
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void Q4_0_round_trip_error_is_within_half_a_step(int seed)
    {
        var rng = new Random(seed);
        var x = CpuTestHelpers.RandomFloats(rng, 32 * 64, 3f);
        var bytes = new byte[18 * 64];
        Quantize.RowQ4_0(x, bytes);
        var y = new float[x.Length];
        Dequantize.Row(GgmlType.Q4_0, bytes, y);
        double sumSq = 0, stepSq = 0;
        for (int b = 0; b < 64; b++)
        {
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++)
                if (MathF.Abs(x[32 * b + j]) > amax) (amax, max) = (MathF.Abs(x[32 * b + j]), x[32 * b + j]);
            float step = amax / 8;
            for (int j = 0; j < 32; j++)
            {
                float v = x[32 * b + j];
                // Codes reach −8 on the extreme's side but only +7 on the other: values beyond 7.5 steps there clamp.
                float t = v * (-8 / max);
                float bound = (t > 7.5f ? step : step / 2) + amax / 1024;
                float err = MathF.Abs(y[32 * b + j] - v);
                Assert.That(err, Is.LessThanOrEqualTo(bound), $"block {b} value {j}");
                sumSq += err * err;
                stepSq += step * step;
            }
        }
        // Uniform rounding error has RMS step/√12 ≈ 0.29 step; clamping adds a little.
        Assert.That(Math.Sqrt(sumSq / stepSq), Is.LessThan(0.35));
    }

    [Test]
    public void Q8_K_scale_quants_and_block_sums_agree()
    {
        var rng = new Random(7);
        var x = CpuTestHelpers.RandomFloats(rng, 512, 2f);
        x[300] = -9f; // the extreme of the second block is negative
        var bytes = new byte[2 * 292];
        Quantize.RowQ8_K(x, bytes);
        for (int b = 0; b < 2; b++)
        {
            var block = bytes.AsSpan(292 * b, 292);
            float d = BinaryPrimitives.ReadSingleLittleEndian(block);
            var q = MemoryMarshal.Cast<byte, sbyte>(block.Slice(4, 256));
            float max = 0;
            for (int j = 0; j < 256; j++)
                if (MathF.Abs(x[256 * b + j]) > MathF.Abs(max)) max = x[256 * b + j];
            Assert.That(d, Is.EqualTo(max / -127).Within(1e-6).Percent);
            for (int j = 0; j < 256; j++)
            {
                Assert.That(q[j], Is.InRange(-127, 127));
                Assert.That(MathF.Abs(d * q[j] - x[256 * b + j]), Is.LessThanOrEqualTo(MathF.Abs(d) * 0.5001f), $"block {b} value {j}");
            }
            var back = new float[256];
            Dequantize.Row(GgmlType.Q8_K, block, back);
            for (int j = 0; j < 256; j++) Assert.That(back[j], Is.EqualTo(d * q[j]));
            for (int g = 0; g < 16; g++)
            {
                int sum = 0;
                for (int j = 0; j < 16; j++) sum += q[16 * g + j];
                Assert.That(BinaryPrimitives.ReadInt16LittleEndian(block[(260 + 2 * g)..]), Is.EqualTo(sum), $"bsum {g}");
            }
        }
    }

    [Test]
    public void All_zero_blocks_quantize_to_zero()
    {
        var zeros = new float[256];
        var q8k = new byte[292];
        q8k.AsSpan().Fill(0xAA);
        Quantize.RowQ8_K(zeros, q8k);
        Assert.That(q8k, Is.All.EqualTo((byte)0));
        var q80 = new byte[34 * 8];
        Quantize.RowQ8_0(zeros, q80);
        var y = new float[256];
        Dequantize.Row(GgmlType.Q8_0, q80, y);
        Assert.That(y, Is.All.EqualTo(0f));
    }

    [Test]
    public void Rejects_partial_blocks_and_short_destinations()
    {
        Assert.Throws<ArgumentException>(() => Quantize.RowQ8_0(new float[33], new byte[68]));
        Assert.Throws<ArgumentException>(() => Quantize.RowQ4_0(new float[32], new byte[17]));
        Assert.Throws<ArgumentException>(() => Quantize.RowQ8_K(new float[128], new byte[292]));
        Assert.Throws<NotSupportedException>(() => Quantize.Row(GgmlType.Q2_K, new float[256], new byte[84]));
    }
}
