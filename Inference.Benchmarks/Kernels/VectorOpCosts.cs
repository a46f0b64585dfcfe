using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// Issue cost of the 256-bit instructions the integer kernels lean on, in cycles per instruction, measured against a
/// chain of dependent <c>vpaddd</c> (one cycle each on every x86 core since Haswell and Zen): eight independent chains
/// of each instruction, so latency is hidden and the figure is the throughput the core sustains. On the AMD EPYC
/// (family 23) machine of the README's runs <c>vpmaddubsw</c>, <c>vpmaddwd</c> and <c>vpsrlw</c> take two cycles each
/// (one 128-bit pipe for each kind), <c>vpaddw</c> 0.67 (several pipes; the loop's own instructions take the rest).
/// </summary>
public static class VectorOpCosts
{
    public static int Run(string[] argv)
    {
        if (!Avx2.IsSupported)
        {
            Console.Error.WriteLine("vector-ops needs AVX2");
            return 1;
        }
        var a = new Args(argv);
        long n = a.Int("--millions", 50) * 1_000_000L;
        double cycle = Time(n, DependentAdds) / (8.0 * n);
        var result = new Dictionary<string, object>
        {
            ["mode"] = "vector-ops",
            ["ghz"] = Math.Round(1 / cycle, 2),
            ["vpmaddubsw"] = Cycles(n, cycle, MaddUbs),
            ["vpmaddwd"] = Cycles(n, cycle, MaddWd),
            ["vpsrlw"] = Cycles(n, cycle, ShiftWords),
            ["vpaddw"] = Cycles(n, cycle, AddWords),
        };
        Console.WriteLine(JsonSerializer.Serialize(result));
        return 0;
    }

    private static double Cycles(long n, double cycle, Func<long, int> op) => Math.Round(Time(n, op) / (8.0 * n) / cycle, 2);

    /// <summary>Nanoseconds of the best of three runs.</summary>
    private static double Time(long n, Func<long, int> op)
    {
        double best = double.MaxValue;
        int sink = 0;
        for (int i = 0; i < 3; i++)
        {
            var sw = Stopwatch.StartNew();
            sink += op(n);
            best = Math.Min(best, sw.Elapsed.TotalNanoseconds);
        }
        GC.KeepAlive(sink);
        return best;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int DependentAdds(long n)
    {
        var v = Vector256.Create(1);
        var w = Vector256.Create(Environment.ProcessorCount);
        for (long i = 0; i < n; i++)
        {
            v = Avx2.Add(v, w); v = Avx2.Add(v, w); v = Avx2.Add(v, w); v = Avx2.Add(v, w);
            v = Avx2.Add(v, w); v = Avx2.Add(v, w); v = Avx2.Add(v, w); v = Avx2.Add(v, w);
        }
        return v.ToScalar();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int MaddUbs(long n)
    {
        var b = Vector256.Create((sbyte)Environment.ProcessorCount);
        Vector256<byte> c0 = Vector256.Create((byte)1), c1 = c0 + c0, c2 = c1 + c0, c3 = c2 + c0, c4 = c3 + c0, c5 = c4 + c0, c6 = c5 + c0, c7 = c6 + c0;
        for (long i = 0; i < n; i++)
        {
            c0 = Avx2.MultiplyAddAdjacent(c0, b).AsByte(); c1 = Avx2.MultiplyAddAdjacent(c1, b).AsByte();
            c2 = Avx2.MultiplyAddAdjacent(c2, b).AsByte(); c3 = Avx2.MultiplyAddAdjacent(c3, b).AsByte();
            c4 = Avx2.MultiplyAddAdjacent(c4, b).AsByte(); c5 = Avx2.MultiplyAddAdjacent(c5, b).AsByte();
            c6 = Avx2.MultiplyAddAdjacent(c6, b).AsByte(); c7 = Avx2.MultiplyAddAdjacent(c7, b).AsByte();
        }
        return (c0 ^ c1 ^ c2 ^ c3 ^ c4 ^ c5 ^ c6 ^ c7).AsInt32().ToScalar();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int MaddWd(long n)
    {
        var b = Vector256.Create((short)Environment.ProcessorCount);
        Vector256<short> c0 = Vector256.Create((short)1), c1 = c0 + c0, c2 = c1 + c0, c3 = c2 + c0, c4 = c3 + c0, c5 = c4 + c0, c6 = c5 + c0, c7 = c6 + c0;
        for (long i = 0; i < n; i++)
        {
            c0 = Avx2.MultiplyAddAdjacent(c0, b).AsInt16(); c1 = Avx2.MultiplyAddAdjacent(c1, b).AsInt16();
            c2 = Avx2.MultiplyAddAdjacent(c2, b).AsInt16(); c3 = Avx2.MultiplyAddAdjacent(c3, b).AsInt16();
            c4 = Avx2.MultiplyAddAdjacent(c4, b).AsInt16(); c5 = Avx2.MultiplyAddAdjacent(c5, b).AsInt16();
            c6 = Avx2.MultiplyAddAdjacent(c6, b).AsInt16(); c7 = Avx2.MultiplyAddAdjacent(c7, b).AsInt16();
        }
        return (c0 ^ c1 ^ c2 ^ c3 ^ c4 ^ c5 ^ c6 ^ c7).AsInt32().ToScalar();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int ShiftWords(long n)
    {
        Vector256<ushort> c0 = Vector256.Create((ushort)Environment.ProcessorCount), c1 = c0 + c0, c2 = c1 + c0, c3 = c2 + c0, c4 = c3 + c0, c5 = c4 + c0, c6 = c5 + c0, c7 = c6 + c0;
        for (long i = 0; i < n; i++)
        {
            c0 = Avx2.ShiftRightLogical(c0, 1); c1 = Avx2.ShiftRightLogical(c1, 1); c2 = Avx2.ShiftRightLogical(c2, 1); c3 = Avx2.ShiftRightLogical(c3, 1);
            c4 = Avx2.ShiftRightLogical(c4, 1); c5 = Avx2.ShiftRightLogical(c5, 1); c6 = Avx2.ShiftRightLogical(c6, 1); c7 = Avx2.ShiftRightLogical(c7, 1);
        }
        return (c0 ^ c1 ^ c2 ^ c3 ^ c4 ^ c5 ^ c6 ^ c7).AsInt32().ToScalar();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int AddWords(long n)
    {
        var b = Vector256.Create((short)Environment.ProcessorCount);
        Vector256<short> c0 = Vector256.Create((short)1), c1 = c0 + c0, c2 = c1 + c0, c3 = c2 + c0, c4 = c3 + c0, c5 = c4 + c0, c6 = c5 + c0, c7 = c6 + c0;
        for (long i = 0; i < n; i++)
        {
            c0 = Avx2.Add(c0, b); c1 = Avx2.Add(c1, b); c2 = Avx2.Add(c2, b); c3 = Avx2.Add(c3, b);
            c4 = Avx2.Add(c4, b); c5 = Avx2.Add(c5, b); c6 = Avx2.Add(c6, b); c7 = Avx2.Add(c7, b);
        }
        return (c0 ^ c1 ^ c2 ^ c3 ^ c4 ^ c5 ^ c6 ^ c7).AsInt32().ToScalar();
    }
}
