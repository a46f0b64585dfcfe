using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Tests.Backends.Cpu;

public class DequantizeTests
{
    [Test]
    public void F16_and_BF16_widen_exactly()
    {
        float[] values = [0f, -0f, 1f, -2.5f, 65504f, 6.1035156e-05f, 5.9604645e-08f, float.PositiveInfinity, float.NegativeInfinity];
        var f16 = new byte[values.Length * 2];
        var bf16 = new byte[values.Length * 2];
        Quantize.Row(GgmlType.F16, values, f16);
        Quantize.Row(GgmlType.BF16, values, bf16);
        var outF16 = new float[values.Length];
        var outBf16 = new float[values.Length];
        Dequantize.Row(GgmlType.F16, f16, outF16);
        Dequantize.Row(GgmlType.BF16, bf16, outBf16);
        Assert.That(outF16, Is.EqualTo(values));
        Assert.That(outBf16[..6], Is.EqualTo(new[] { 0f, -0f, 1f, -2.5f, 65536f, 6.1035156e-05f }));
        Assert.That(BitConverter.SingleToInt32Bits(outF16[1]), Is.EqualTo(BitConverter.SingleToInt32Bits(-0f)));
    }

    [Test]
    public void BF16_rounds_to_nearest_even()
    {
        // 1 + 2^-8 lies halfway between two bf16 values (1 and 1 + 2^-7): ties go to the even one (1).
        Assert.That(Quantize.ToBFloat16(1f + 1f / 256), Is.EqualTo((ushort)0x3F80));
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        Assert.That(Quantize.ToBFloat16(1f + 3f / 256), Is.EqualTo((ushort)0x3F82));
        Assert.That(Quantize.ToBFloat16(1f + 1f / 256 + 1f / 65536), Is.EqualTo((ushort)0x3F81));
    }

    [Test]
    public void Q8_0_block_is_scale_times_signed_bytes()
    {
        var block = new byte[34];
        BinaryPrimitives.WriteUInt16LittleEndian(block, CpuTestHelpers.HalfBits(0.5f));
        for (int j = 0; j < 32; j++) block[2 + j] = (byte)(sbyte)(j * 8 - 128);
        var y = new float[32];
        Dequantize.Row(GgmlType.Q8_0, block, y);
        Assert.That(y[0], Is.EqualTo(-64f));
        Assert.That(y[16], Is.EqualTo(0f));
        Assert.That(y[31], Is.EqualTo(60f));
    }

    [Test]
    public void Q4_0_block_puts_low_nibbles_first()
    {
        var block = new byte[18];
        BinaryPrimitives.WriteUInt16LittleEndian(block, CpuTestHelpers.HalfBits(2f));
        for (int j = 0; j < 16; j++) block[2 + j] = (byte)(j | ((15 - j) << 4));
        var y = new float[32];
        Dequantize.Row(GgmlType.Q4_0, block, y);
        for (int j = 0; j < 16; j++)
        {
            Assert.That(y[j], Is.EqualTo(2f * (j - 8)), $"value {j}");
            Assert.That(y[j + 16], Is.EqualTo(2f * (15 - j - 8)), $"value {j + 16}");
        }
    }

    // Q4_K sub-block scales and mins chosen to exercise the high 2 bits of the 6-bit fields.
    private static readonly int[] Q4KScales = [1, 63, 5, 17, 33, 48, 60, 2];
    private static readonly int[] Q4KMins = [0, 7, 63, 20, 50, 16, 1, 40];

    /// <summary>Packs 8 six-bit scales and mins the way ggml does (the inverse of get_scale_min_k4).</summary>
    private static byte[] PackQ4KScales(int[] sc, int[] m)
    {
        var p = new byte[12];
        for (int j = 0; j < 4; j++)
        {
            p[j] = (byte)(sc[j] | ((sc[j + 4] >> 4) << 6));
            p[j + 4] = (byte)(m[j] | ((m[j + 4] >> 4) << 6));
            p[j + 8] = (byte)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
        }
        return p;
    }

    private static int Q4KCode(int e) => (e * 5 + 3) % 16;

    private static byte[] HandBuiltQ4K()
    {
        var block = new byte[144];
        BinaryPrimitives.WriteUInt16LittleEndian(block, CpuTestHelpers.HalfBits(0.5f));
        BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(2), CpuTestHelpers.HalfBits(0.25f));
        PackQ4KScales(Q4KScales, Q4KMins).CopyTo(block, 4);
        // Value e sits in chunk k = e / 64 of 32 bytes: the low nibble for e % 64 < 32, else the high nibble.
        for (int e = 0; e < 256; e++)
        {
            int k = e / 64, i = e % 64;
            ref byte b = ref block[16 + 32 * k + i % 32];
            b |= (byte)(i < 32 ? Q4KCode(e) : Q4KCode(e) << 4);
        }
        return block;
    }

    [Test]
    public void Q4_K_hand_built_block()
    {
        var y = new float[256];
        Dequantize.Row(GgmlType.Q4_K, HandBuiltQ4K(), y);
        for (int e = 0; e < 256; e++)
        {
            int j = e / 32;
            Assert.That(y[e], Is.EqualTo(0.5f * Q4KScales[j] * Q4KCode(e) - 0.25f * Q4KMins[j]), $"value {e}");
        }
        // Spelled out: value 0 has code 3, scale 1, min 0 → 1.5; value 40 (sub-block 1) code (203 % 16) = 11,
        // scale 63, min 7 → 0.5·63·11 − 1.75 = 344.75; value 255 (sub-block 7) code (1278 % 16) = 14, scale 2,
        // min 40 → 14 − 10 = 4.
        Assert.That(y[0], Is.EqualTo(1.5f));
        Assert.That(y[40], Is.EqualTo(344.75f));
        Assert.That(y[255], Is.EqualTo(4f));
        // Sub-block 4 scale 33 = 0b10_0001 and min 50 = 0b11_0010 take both high-bit paths: value 130, code 13.
        Assert.That(y[130], Is.EqualTo(0.5f * 33 * 13 - 0.25f * 50));
    }

    private static readonly sbyte[] Q6KScales = [3, -5, 7, -9, 11, -13, 15, -17, 19, -21, 23, -25, 27, -29, 31, -128];

    private static int Q6KCode(int e) => (e * 7 + 3) % 64;

    private static byte[] HandBuiltQ6K()
    {
        var block = new byte[210];
        // Value e: half n = e / 128; within it quarter t = (e % 128) / 32 and lane l = e % 32. The low 4 bits go to
        // ql[64n + l + 32·(t & 1)] (low nibble for t < 2, high for t ≥ 2), the high 2 bits to qh[32n + l] at bit 2t.
        for (int e = 0; e < 256; e++)
        {
            int n = e / 128, t = e % 128 / 32, l = e % 32, code = Q6KCode(e);
            block[64 * n + l + 32 * (t & 1)] |= (byte)(t < 2 ? code & 0xF : (code & 0xF) << 4);
            block[128 + 32 * n + l] |= (byte)((code >> 4) << (2 * t));
        }
        for (int j = 0; j < 16; j++) block[192 + j] = (byte)Q6KScales[j];
        BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(208), CpuTestHelpers.HalfBits(0.125f));
        return block;
    }

    [Test]
    public void Q6_K_hand_built_block()
    {
        var y = new float[256];
        Dequantize.Row(GgmlType.Q6_K, HandBuiltQ6K(), y);
        for (int e = 0; e < 256; e++)
            Assert.That(y[e], Is.EqualTo(0.125f * Q6KScales[e / 16] * (Q6KCode(e) - 32)), $"value {e}");
        // Spelled out: value 0 code 3, scale 3 → 0.125·3·(−29) = −10.875; value 100 code (703 % 64) = 63, scale 15
        // (sub-block 6) → 0.125·15·31 = 58.125; value 255 code (1788 % 64) = 60, scale −128 → −448.
        Assert.That(y[0], Is.EqualTo(-10.875f));
        Assert.That(y[100], Is.EqualTo(58.125f));
        Assert.That(y[255], Is.EqualTo(-448f));
    }

    /// <summary>Random blocks (random codes, high bits and sub-block scales, small f16 scales) against ggml's dequantizers.</summary>
    [TestCase(GgmlType.Q4_0, "q4_0")]
    [TestCase(GgmlType.Q4_1, "q4_1")]
    [TestCase(GgmlType.Q5_0, "q5_0")]
    [TestCase(GgmlType.Q5_1, "q5_1")]
    [TestCase(GgmlType.IQ4_NL, "iq4_nl")]
    [TestCase(GgmlType.Q2_K, "q2_K")]
    [TestCase(GgmlType.Q3_K, "q3_K")]
    [TestCase(GgmlType.Q4_K, "q4_K")]
    [TestCase(GgmlType.Q5_K, "q5_K")]
    [TestCase(GgmlType.Q6_K, "q6_K")]
    [TestCase(GgmlType.IQ4_XS, "iq4_xs")]
    public void Matches_ggml_dequantization(GgmlType type, string ggmlName)
    {
        const int cols = 2048;
        var bytes = CpuTestHelpers.RandomWeights(new Random(3 + (int)type), type, 1, cols);
        var expected = Inference.Tests.Support.GgmlCpu.Dequantize(ggmlName, bytes, cols);
        var actual = new float[cols];
        Dequantize.Row(type, bytes, actual);
        // Same products of the same exactly widened scales; ggml's compiler may fuse a multiply and an add (one rounding
        // instead of two), so values agree to a few ulps of the largest term.
        float scale = 0;
        foreach (var v in expected) scale = MathF.Max(scale, MathF.Abs(v));
        for (int i = 0; i < cols; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(scale * 1e-6f), $"value {i}");
        Assert.That(expected.Count(v => v != 0), Is.GreaterThan(cols / 2), "random blocks give mostly non-zero values");
    }

    [Test]
    public void Rejects_lengths_that_are_not_whole_blocks()
    {
        Assert.Throws<ArgumentException>(() => Dequantize.Row(GgmlType.Q8_0, new byte[34], new float[31]));
        Assert.Throws<ArgumentException>(() => Dequantize.Row(GgmlType.Q4_K, new byte[143], new float[256]));
        Assert.Throws<NotSupportedException>(() => Dequantize.Row(GgmlType.Q8_1, new byte[36], new float[32]));
    }

    [Test]
    public void IQ4_shuffle_tables_hold_the_IQ4_values_in_both_lanes()
    {
        var both = IQ4Table.Both.AsSByte();
        var magnitudes = IQ4Table.Magnitudes;
        var offset = IQ4Table.Offset;
        for (int i = 0; i < 32; i++)
        {
            int v = Dequantize.IQ4Values[i % 16];
            Assert.That(both[i], Is.EqualTo(v), $"value {i}");
            Assert.That(magnitudes[i], Is.EqualTo(Math.Abs(v)), $"magnitude {i}");
            Assert.That(offset[i], Is.EqualTo(v + 128), $"offset value {i}");
        }
    }
}
