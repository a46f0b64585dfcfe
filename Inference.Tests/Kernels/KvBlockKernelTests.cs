using ILGPU.Runtime;
using Inference.Kernels;
using Inference.Kernels.Layer;
using Inference.KvCache;

namespace Inference.Tests.Kernels;

/// <summary>
/// The device side of the Q8_0 and FP8 K/V blocks: the KV write kernel writes, bit for bit, the bytes the CPU's
/// <see cref="KvBlockFormat.Quantize"/> writes, and the integer conversions it uses agree with <see cref="Half"/> and
/// <see cref="KvBlockFormat.ToE4M3"/>/<see cref="KvBlockFormat.FromE4M3"/>.
/// </summary>
public class KvBlockKernelTests
{
    private static readonly Lazy<LayerKernels> Kernels = new(() => new LayerKernels(KernelTestAccelerator.Cpu, 1));

    [TestCase(KvCacheDataType.Q8_0)]
    [TestCase(KvCacheDataType.Fp8E4M3)]
    public void WriteKernel_WritesTheCpuBlocks(KvCacheDataType type)
    {
        const int tokens = 7, kvHeads = 2, headDim = 64, kvDim = kvHeads * headDim, slotCount = 12;
        var rng = new Random(5);
        var k = Values(rng, tokens * kvDim);
        var v = Values(rng, tokens * kvDim);
        var slots = Enumerable.Range(0, slotCount).OrderBy(_ => rng.Next()).Take(tokens).ToArray();
        slots[3] = -1;   // a padding row: written nowhere
        int rowBytes = (int)KvBlockFormat.ByteCount(type, kvDim);
        var poison = new byte[slotCount * rowBytes];
        Array.Fill(poison, (byte)0xCD);

        var acc = KernelTestAccelerator.Cpu;
        using var kBuf = acc.Allocate1D(k);
        using var vBuf = acc.Allocate1D(v);
        using var slotBuf = acc.Allocate1D(slots);
        using var kCache = acc.Allocate1D(poison);
        using var vCache = acc.Allocate1D(poison);
        Kernels.Value.WriteKv(kBuf.View, vBuf.View, slotBuf.View, kCache.View, vCache.View, tokens, kvDim, type);
        acc.Synchronize();
        var kBytes = kCache.GetAsArray1D();
        var vBytes = vCache.GetAsArray1D();

        var expected = new byte[rowBytes];
        for (int t = 0; t < tokens; t++)
        {
            if (slots[t] < 0) continue;
            KvBlockFormat.Quantize(type, k.AsSpan(t * kvDim, kvDim), expected);
            Assert.That(kBytes.AsSpan(slots[t] * rowBytes, rowBytes).ToArray(), Is.EqualTo(expected), $"K of token {t}");
            KvBlockFormat.Quantize(type, v.AsSpan(t * kvDim, kvDim), expected);
            Assert.That(vBytes.AsSpan(slots[t] * rowBytes, rowBytes).ToArray(), Is.EqualTo(expected), $"V of token {t}");
        }
        for (int slot = 0; slot < slotCount; slot++)
            if (Array.IndexOf(slots, slot) < 0)
                Assert.That(kBytes.AsSpan(slot * rowBytes, rowBytes).ToArray(), Has.All.EqualTo((byte)0xCD), $"slot {slot} untouched");
    }

    /// <summary>The device-check runner's block-format checks (run on CUDA by LayerKernelGpuTests) pass here too.</summary>
    [TestCase("kv-write-q8_0")]
    [TestCase("kv-write-fp8")]
    [TestCase("attention-decode-q8_0")]
    [TestCase("attention-prefill-fp8")]
    public void DeviceSelfChecks_PassOnTheCpuAccelerator(string name)
    {
        var r = Inference.Cuda.Diagnostics.LayerSelfCheck.Run(KernelTestAccelerator.Cpu, name);
        Assert.That(r.Passed, Is.True, $"{r.Case}: {r.Detail}");
    }

    [Test]
    public void WriteKernel_RefusesWhatIsNotABlockFormat()
    {
        var acc = KernelTestAccelerator.Cpu;
        using var f = acc.Allocate1D<float>(64);
        using var slots = acc.Allocate1D<int>(1);
        using var bytes = acc.Allocate1D<byte>(68);
        Assert.Throws<ArgumentException>(() => Kernels.Value.WriteKv(f.View, f.View, slots.View, bytes.View, bytes.View, 1, 64, KvCacheDataType.Float16));
        Assert.Throws<ArgumentException>(() => Kernels.Value.WriteKv(f.View, f.View, slots.View, bytes.View, bytes.View, 1, 48, KvCacheDataType.Q8_0));
    }

    [Test]
    public void FloatToHalfBits_RoundsAsSystemHalf()
    {
        var rng = new Random(9);
        var edges = new List<float>
        {
            0f, -0f, 1f, 65504f, 65519.996f, 65520f, -65520f, float.MaxValue, float.PositiveInfinity, float.NegativeInfinity,
            MathF.ScaleB(1, -14), MathF.ScaleB(1, -24), MathF.ScaleB(1, -25), MathF.ScaleB(3, -26), MathF.ScaleB(1, -26),
            float.Epsilon, MathF.ScaleB(1023, -24), MathF.ScaleB(2047, -25), MathF.ScaleB(2049, -12),
        };
        // every f16 value and the midpoints to its neighbours, with the floats just either side of them
        for (int h = 0; h < 0x7C00; h++)
        {
            float a = (float)BitConverter.UInt16BitsToHalf((ushort)h), b = (float)BitConverter.UInt16BitsToHalf((ushort)(h + 1));
            float mid = (float)(((double)a + b) / 2);
            edges.AddRange([a, -a, mid, -mid, MathF.BitIncrement(mid), MathF.BitDecrement(mid)]);
        }
        for (int i = 0; i < 100_000; i++) edges.Add(BitConverter.Int32BitsToSingle(rng.Next()) * (rng.Next(2) == 0 ? 1 : -1));
        foreach (float x in edges)
        {
            if (float.IsNaN(x)) continue;
            Assert.That(KvRowGroups.FloatToHalfBits(x), Is.EqualTo(BitConverter.HalfToUInt16Bits((Half)x)), $"{x:R}");
        }
        Assert.That(Half.IsNaN(BitConverter.UInt16BitsToHalf((ushort)KvRowGroups.FloatToHalfBits(float.NaN))));
    }

    [Test]
    public void E4M3_MatchesTheCpuConversions()
    {
        for (int code = 0; code < 256; code++)
        {
            float expected = KvBlockFormat.FromE4M3((byte)code), actual = Fp8E4M3Kv.FromE4M3(code);
            if (float.IsNaN(expected)) Assert.That(actual, Is.NaN, $"code {code:X2}");
            else Assert.That(BitConverter.SingleToInt32Bits(actual), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"code {code:X2}");
        }
        var rng = new Random(4);
        var xs = new List<float> { 0f, -0f, 448f, 464f, 479.99f, 480f, 1e9f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, float.Epsilon };
        // every code's value, the midpoints between neighbours and the floats either side (ties go to the even code)
        for (int c = 0; c < 0x7E; c++)
        {
            float a = KvBlockFormat.FromE4M3((byte)c), b = KvBlockFormat.FromE4M3((byte)(c + 1)), mid = (a + b) / 2;
            xs.AddRange([a, -a, mid, -mid, MathF.BitIncrement(mid), MathF.BitDecrement(mid)]);
        }
        for (int i = 0; i < 50_000; i++) xs.Add((float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-14, 10))));
        foreach (float x in xs)
            Assert.That(Fp8E4M3Kv.ToE4M3(x), Is.EqualTo(KvBlockFormat.ToE4M3(x)), $"{x:R}");
    }

    /// <summary>
    /// Random values whose block magnitudes span 1e-8 … 1e6 (f16 scales from subnormal up), a zero block, a block of
    /// exact halves (Q8_0 rounds them away from zero) and one with a single outlier.
    /// </summary>
    private static float[] Values(Random rng, int count)
    {
        var x = new float[count];
        for (int b = 0; b < count / 32; b++)
        {
            float scale = MathF.Pow(10, (float)(rng.NextDouble() * 14 - 8));
            for (int i = 0; i < 32; i++) x[b * 32 + i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        }
        Array.Clear(x, 32, 32);
        for (int i = 0; i < 32; i++) x[64 + i] = i == 0 ? 127f : (i % 2 == 0 ? 1 : -1) * (i + 0.5f);
        for (int i = 0; i < 32; i++) x[96 + i] = i == 7 ? 5000f : (float)(rng.NextDouble() - 0.5);
        return x;
    }
}
