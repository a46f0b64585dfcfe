using System.Runtime.Intrinsics;
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
}
