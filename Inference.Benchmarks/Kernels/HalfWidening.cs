using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using Inference.Backends.Cpu;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// What widening F16 weights costs on this core, and what subnormal halves add: one core, 128 KiB of halves (in L2),
/// sixteen halves widened and multiplied into an FMA at a time, GB/s of halves, best of <c>--passes</c>. Variants: the
/// engine's full widening (<see cref="F16Weights"/>: bits moved, then × 2^112) and light one (<see cref="F16FiniteWeights"/>:
/// the activations carry the 2^112), and three exact-or-not alternatives measured for their cost. Data: normal halves
/// only, one in 31 subnormal (uniform exponents 0..30), Gaussian of σ 0.02 as stored and after <see cref="HalfRescale"/>.
/// </summary>
/// <remarks>The figures behind docs/quantization.md's "On AVX-512 Intel cores" table: subnormal operands cost Intel
/// cores a microcode assist per multiply.</remarks>
public static unsafe class HalfWidening
{
    private const int Count = 1 << 16;

    public static int Run(string[] argv)
    {
        if (!Vector512.IsHardwareAccelerated || !Avx512F.IsSupported)
        {
            Console.Error.WriteLine("half-widening needs AVX-512");
            return 1;
        }
        var a = new Args(argv);
        int passes = a.Int("--passes", 30);
        var rng = new Random(1);
        var data = new Dictionary<string, ushort[]>
        {
            ["normal"] = Halves(i => (ushort)((rng.Next(2) << 15) | (rng.Next(1, 31) << 10) | rng.Next(1024))),
            ["exponents_0_to_30"] = Halves(i => (ushort)((rng.Next(2) << 15) | (rng.Next(0, 31) << 10) | rng.Next(1024))),
            ["gaussian"] = Halves(i => BitConverter.HalfToUInt16Bits((Half)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()) * 0.02))),
        };
        var rescaled = (ushort[])data["gaussian"].Clone();
        fixed (ushort* p = rescaled)
        {
            int shift = HalfRescale.Choose(p, rescaled.Length, out _);
            if (shift > 0) HalfRescale.Apply(p, rescaled.Length, shift);
        }
        data["gaussian_rescaled"] = rescaled;
        float* x = (float*)NativeMemory.AlignedAlloc(Count * sizeof(float), 64);
        ushort* w = (ushort*)NativeMemory.AlignedAlloc(Count * sizeof(ushort), 64);
        try
        {
            for (int i = 0; i < Count; i++) x[i] = (float)rng.NextDouble();
            foreach (var (name, halves) in data)
            {
                halves.AsSpan().CopyTo(new Span<ushort>(w, Count));
                int subnormal = halves.Count(h => (h & 0x7C00) == 0 && (h & 0x3FF) != 0);
                var line = new Dictionary<string, object> { ["mode"] = "half-widening", ["data"] = name, ["subnormal_halves"] = subnormal, ["cpu"] = DecodeCeiling.CpuTag };
                line["full_gb_s"] = Best(passes, () => Dot<Full>(w, x));
                line["finite_gb_s"] = Best(passes, () => Dot<Finite>(w, x));
                line["integer_rebias_inexact_gb_s"] = Best(passes, () => Dot<IntegerRebias>(w, x));
                line["masked_subtract_gb_s"] = Best(passes, () => Dot<MaskedSubtract>(w, x));
                Console.WriteLine(JsonSerializer.Serialize(line));
            }
        }
        finally
        {
            NativeMemory.AlignedFree(x);
            NativeMemory.AlignedFree(w);
        }
        return 0;
    }

    private static ushort[] Halves(Func<int, ushort> make)
    {
        var h = new ushort[Count];
        for (int i = 0; i < Count; i++) h[i] = make(i);
        return h;
    }

    private static double Best(int passes, Func<float> pass)
    {
        double best = 0;
        float sink = 0;
        for (int p = 0; p < passes; p++)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (int k = 0; k < 20; k++) sink += pass();
            double seconds = (double)(Stopwatch.GetTimestamp() - t0) / Stopwatch.Frequency;
            best = Math.Max(best, 20.0 * Count * sizeof(ushort) / seconds / 1e9);
        }
        GC.KeepAlive(sink);
        return Math.Round(best, 2);
    }

    private interface IWiden
    {
        static abstract Vector512<float> Widen(short* p);
    }

    /// <summary>The engine's full widening (<see cref="F16Weights.Load16x512"/>).</summary>
    private readonly struct Full : IWiden
    {
        public static Vector512<float> Widen(short* p) => F16Weights.Load16x512((byte*)p, 0);
    }

    /// <summary>The engine's light widening (<see cref="F16FiniteWeights.Load16x512"/>), short of 2^112.</summary>
    private readonly struct Finite : IWiden
    {
        public static Vector512<float> Widen(short* p) => F16FiniteWeights.Load16x512((byte*)p, 0);
    }

    /// <summary>The bits moved and the exponent re-biased by an integer add: exact for normal halves only (for the cost).</summary>
    private readonly struct IntegerRebias : IWiden
    {
        public static Vector512<float> Widen(short* p) =>
            (((Avx512F.ConvertToVector512Int32(Vector256.Load(p)) << 13) & Vector512.Create(unchecked((int)0x8FFFFFFF))) + Vector512.Create(112 << 23)).AsSingle();
    }

    /// <summary>Exact for every finite half: the integer re-bias, and lanes of exponent 0 fixed by a masked subtract of 2^-14.</summary>
    private readonly struct MaskedSubtract : IWiden
    {
        public static Vector512<float> Widen(short* p)
        {
            var sx = Avx512F.ConvertToVector512Int32(Vector256.Load(p));
            var magnitude = (sx << 13) & Vector512.Create(0x0FFFE000);
            var f = magnitude + Vector512.Create(112 << 23);
            var zero = Vector512.Equals(magnitude & Vector512.Create(0x0F800000), Vector512<int>.Zero);
            var fixedUp = (f + (zero & Vector512.Create(1 << 23))).AsSingle() - (zero & Vector512.Create(113 << 23)).AsSingle();
            return (fixedUp.AsInt32() | (sx & Vector512.Create(unchecked((int)0x80000000)))).AsSingle();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float Dot<TW>(ushort* w, float* x) where TW : IWiden
    {
        Vector512<float> a = default, b = default;
        for (int i = 0; i < Count; i += 32)
        {
            a = Vector512.FusedMultiplyAdd(TW.Widen((short*)w + i), Vector512.Load(x + i), a);
            b = Vector512.FusedMultiplyAdd(TW.Widen((short*)w + i + 16), Vector512.Load(x + i + 16), b);
        }
        return Vector512.Sum(a + b);
    }
}
