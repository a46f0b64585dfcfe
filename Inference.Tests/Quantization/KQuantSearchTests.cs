using System.Runtime.Intrinsics;
using Inference.Quantization;

namespace Inference.Tests.Quantization;

/// <summary>The eight-lane K-quant scale searches against the plain ones they replace, bit for bit.</summary>
public class KQuantSearchTests
{
    /// <summary>
    /// Super-blocks of 256 values whose eight (or sixteen) sub-blocks each draw their own kind, so lanes of one vector
    /// take different branches: normal at scales 1e-6 to 1e3, all equal (positive, negative, zero), zeros, one huge
    /// outlier, negative only, positive only, subnormals, halves (rounding ties), sparse.
    /// </summary>
    private static float[] SuperBlocks(int count, int subBlock, int seed)
    {
        var rng = new Random(seed);
        var x = new float[count * 256];
        for (int s = 0; s < x.Length / subBlock; s++)
        {
            var sub = x.AsSpan(s * subBlock, subBlock);
            int kind = rng.Next(12);
            float scale = (float)Math.Pow(10, rng.Next(-6, 4));
            float constant = (float)(rng.NextDouble() * 4 - 2);
            int outlier = rng.Next(subBlock);
            for (int i = 0; i < subBlock; i++)
            {
                float g = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
                sub[i] = kind switch
                {
                    0 or 1 => g * scale,
                    2 => constant,
                    3 => -MathF.Abs(constant),
                    4 => 0f,
                    5 => i == outlier ? 1e6f * (rng.Next(2) * 2 - 1) : g * 0.01f,
                    6 => -MathF.Abs(g) * scale,
                    7 => MathF.Abs(g) * scale + 0.5f,
                    8 => BitConverter.Int32BitsToSingle(rng.Next(1, 0x007fffff)) * (rng.Next(2) * 2 - 1), // subnormals
                    9 => rng.Next(-8, 9) * 0.5f,
                    10 => rng.Next(6) == 0 ? g : 0f,
                    _ => i == outlier ? -3e4f : -MathF.Abs(g),
                };
            }
        }
        return x;
    }

    [TestCase(15, -1f, 20)] // Q4_K
    [TestCase(31, -0.5f, 15)] // Q5_K
    public void Qkx2SearchEqualsThePlainOne(int nmax, float rmin, int nstep)
    {
        Assume.That(KQuantSearch.IsAccelerated, "no 256-bit vectors on this machine");
        var x = SuperBlocks(400, 32, seed: nmax);
        Span<float> scales = stackalloc float[8], mins = stackalloc float[8], weights = stackalloc float[32];
        Span<byte> l = stackalloc byte[256], expected = stackalloc byte[32], laux = stackalloc byte[32];
        for (int b = 0; b < x.Length / 256; b++)
        {
            var block = x.AsSpan(b * 256, 256);
            scales.Fill(float.NaN);
            mins.Fill(float.NaN);
            l.Fill(0xA5);
            KQuantSearch.Qkx2x8(block, nmax, rmin, 0.1f, nstep, scales, mins, l);
            for (int j = 0; j < 8; j++)
            {
                var xs = block.Slice(32 * j, 32);
                BlockQuantizer.Qkx2Weights(xs, weights);
                expected.Fill(0x5A);
                float scale = BlockQuantizer.MakeQkx2Quants(xs, nmax, weights, expected, out float min, laux, rmin, 0.1f, nstep);
                string where = $"super-block {b}, sub-block {j}";
                Assert.That(BitConverter.SingleToInt32Bits(scales[j]), Is.EqualTo(BitConverter.SingleToInt32Bits(scale)), $"scale, {where}");
                Assert.That(BitConverter.SingleToInt32Bits(mins[j]), Is.EqualTo(BitConverter.SingleToInt32Bits(min)), $"min, {where}");
                Assert.That(l.Slice(32 * j, 32).ToArray(), Is.EqualTo(expected.ToArray()), $"codes, {where}");
            }
        }
    }

    [Test]
    public void QxSearchEqualsThePlainOne()
    {
        Assume.That(KQuantSearch.IsAccelerated, "no 256-bit vectors on this machine");
        var x = SuperBlocks(400, 16, seed: 6);
        Span<float> scales = stackalloc float[8];
        Span<sbyte> l = stackalloc sbyte[128], expected = stackalloc sbyte[16];
        for (int h = 0; h < x.Length / 128; h++)
        {
            var half = x.AsSpan(h * 128, 128);
            scales.Fill(float.NaN);
            l.Fill(-91);
            KQuantSearch.Qx8(half, scales, l);
            for (int j = 0; j < 8; j++)
            {
                expected.Fill(77);
                float scale = BlockQuantizer.MakeQxQuants(half.Slice(16 * j, 16), 32, expected);
                string where = $"half super-block {h}, sub-block {j}";
                Assert.That(BitConverter.SingleToInt32Bits(scales[j]), Is.EqualTo(BitConverter.SingleToInt32Bits(scale)), $"scale, {where}");
                Assert.That(l.Slice(16 * j, 16).ToArray(), Is.EqualTo(expected.ToArray()), $"codes, {where}");
            }
        }
    }

    [Test]
    public void NearestIntMatchesThePlainOneEverywhere()
    {
        var rng = new Random(3);
        Span<int> lanes = stackalloc int[8];
        Span<float> v = stackalloc float[8];
        for (int t = 0; t < 20000; t++)
        {
            for (int k = 0; k < 8; k++)
                v[k] = t % 3 == 0 ? rng.Next(-200, 200) * 0.5f : (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-30, 30)));
            KQuantSearch.NearestInt(Vector256.Create((ReadOnlySpan<float>)v)).CopyTo(lanes);
            for (int k = 0; k < 8; k++) Assert.That(lanes[k], Is.EqualTo(BlockQuantizer.NearestInt(v[k])), $"{v[k]:R}");
        }
    }
}
