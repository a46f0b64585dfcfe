using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.Backends.Cpu;

namespace Inference.Tests.Backends.Cpu;

public class FloatWeightsTests
{
    [Test]
    public void Vector_half_widening_matches_Half_for_every_bit_pattern()
    {
        var bits = new ushort[16];
        for (int start = 0; start < 65536; start += 16)
        {
            for (int i = 0; i < 16; i++) bits[i] = (ushort)(start + i);
            var wide512 = F16Weights.ToSingle(Vector512.WidenLower(Vector512.Create(Vector256.Create(bits), Vector256<ushort>.Zero)));
            var (lo, hi) = Vector256.Widen(Vector256.Create(bits));
            var wide256Lo = F16Weights.ToSingle(lo);
            var wide256Hi = F16Weights.ToSingle(hi);
            for (int i = 0; i < 16; i++)
            {
                float expected = (float)BitConverter.UInt16BitsToHalf(bits[i]);
                float got512 = wide512[i], got256 = i < 8 ? wide256Lo[i] : wide256Hi[i - 8];
                if (float.IsNaN(expected))
                {
                    Assert.That(float.IsNaN(got512) && float.IsNaN(got256), $"0x{bits[i]:X4}");
                    continue;
                }
                Assert.That(BitConverter.SingleToInt32Bits(got512), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"512: 0x{bits[i]:X4}");
                Assert.That(BitConverter.SingleToInt32Bits(got256), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"256: 0x{bits[i]:X4}");
                Assert.That(Fp16.ToFloat(bits[i]), Is.EqualTo(expected));
            }
        }
    }

    [Test]
    public unsafe void Sixteen_value_loads_match_eight_value_loads_for_every_bit_pattern()
    {
        if (!Avx2.IsSupported) Assert.Ignore("AVX2 is not supported on this CPU.");
        // All 65,536 f16 and bf16 bit patterns through Load16 (the widening of the batch-1 AVX2 tile; for f16 also the
        // finite-halves one, every finite pattern), against Load8 and against Half / the bf16 definition: the same bits,
        // NaNs as NaNs.
        var bits = new ushort[65536];
        for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
        fixed (ushort* p = bits)
        {
            for (int start = 0; start < 65536; start += 16)
            {
                byte* row = (byte*)p;
                F16Weights.Load16(row, start, out var lo, out var hi);
                var lo8 = F16Weights.Load8(row, start);
                var hi8 = F16Weights.Load8(row, start + 8);
                BF16Weights.Load16(row, start, out var blo, out var bhi);
                var blo8 = BF16Weights.Load8(row, start);
                F16FiniteWeights.Load16(row, start, out var flo, out var fhi);
                for (int i = 0; i < 16; i++)
                {
                    ushort b = bits[start + i];
                    float got = i < 8 ? lo[i] : hi[i - 8], got8 = i < 8 ? lo8[i] : hi8[i - 8];
                    float expected = (float)BitConverter.UInt16BitsToHalf(b);
                    if (float.IsNaN(expected)) Assert.That(float.IsNaN(got) && float.IsNaN(got8), $"f16 0x{b:X4}");
                    else
                    {
                        Assert.That(BitConverter.SingleToInt32Bits(got), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"f16 0x{b:X4}");
                        Assert.That(BitConverter.SingleToInt32Bits(got8), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"f16 Load8 0x{b:X4}");
                    }
                    float bgot = i < 8 ? blo[i] : bhi[i - 8];
                    Assert.That(BitConverter.SingleToInt32Bits(bgot), Is.EqualTo(b << 16), $"bf16 0x{b:X4}");
                    if (i < 8) Assert.That(BitConverter.SingleToInt32Bits(blo8[i]), Is.EqualTo(b << 16), $"bf16 Load8 0x{b:X4}");
                    // The finite-halves widening: short of 2^112 (the activations carry it), exact for every finite half.
                    if (!float.IsFinite(expected)) continue;
                    float finite = (i < 8 ? flo[i] : fhi[i - 8]) * F16FiniteWeights.Load16Scale;
                    Assert.That(BitConverter.SingleToInt32Bits(finite), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"f16 finite 0x{b:X4}");
                }
            }
        }
    }
}
