using System.Diagnostics;
using System.Runtime.Intrinsics;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// A quick, non-BenchmarkDotNet measurement: plain memory read bandwidth, then GB/s of weights streamed by
/// <c>MatMul.Multiply</c> per type at each thread count and batch size (weights cycled through a ring larger
/// than the last-level cache).
/// </summary>
/// <remarks>
/// NOTE: the ceiling follows the rule of <see cref="DecodeCeiling.ForModel"/>: the read bandwidth over the working set
/// the calls stream (here the ring they cycle through, read in matrix-sized slices) against the in-cache compute rate.
/// A ring no larger than the last-level cache measures the cache, kernels and read alike; the header says so.
/// </remarks>
public static unsafe class QuickKernelBench
{
    public static int Run(string[] args)
    {
        double seconds = 1.0;
        long ringBytes = 768L << 20;
        int[] threadCounts = [1, 2];
        int[] batches = [1, 8];
        int rows = MatMulBenchmarks.Rows, cols = MatMulBenchmarks.Cols;
        var types = new List<GgmlType> { GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K };
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--seconds": seconds = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--ring-mb": ringBytes = long.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture) << 20; break;
                case "--threads": threadCounts = Array.ConvertAll(args[++i].Split(','), int.Parse); break;
                case "--batch": batches = Array.ConvertAll(args[++i].Split(','), int.Parse); break;
                case "--shape":
                    var dims = args[++i].Split('x');
                    (rows, cols) = (int.Parse(dims[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(dims[1], System.Globalization.CultureInfo.InvariantCulture));
                    break;
                case "--types": types = [.. Array.ConvertAll(args[++i].Split(','), Enum.Parse<GgmlType>)]; break;
                default:
                    Console.Error.WriteLine("kernels-quick [--seconds S] [--ring-mb M] [--threads 1,2] [--batch 1,8] [--types F32,Q8_0,...] [--shape ROWSxCOLS]");
                    return 1;
            }
        }

        Console.WriteLine($"matrix {rows} x {cols}, ring {ringBytes >> 20} MiB, {seconds:F1} s per point, " +
                          $"Vector512 {Vector512.IsHardwareAccelerated}, path {KernelPaths.Best}, cpu {DecodeCeiling.CpuName} ({DecodeCeiling.CpuTag}, {DecodeCeiling.CacheTag})");
        if (DecodeCeiling.LastLevelCacheBytes is long llc && ringBytes <= llc)
            Console.WriteLine($"the {ringBytes >> 20} MiB ring fits the {DecodeCeiling.CacheTag}: every figure below is of the cache, not of DRAM");
        var readGbs = new Dictionary<int, double>();
        var bestRead = new Dictionary<int, double>();
        using (var ring = new WeightRing(GgmlType.F32, rows, cols, ringBytes))
        {
            foreach (int t in threadCounts)
            {
                using var pool = new WorkerPool(t);
                var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
                var sw = Stopwatch.StartNew();
                (readGbs[t], bestRead[t]) = MeasureRead(ring, pool, seconds);
                double cpuShare = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds / sw.Elapsed.TotalSeconds / t;
                Console.WriteLine($"memory read, {t} thread(s): {readGbs[t]:F1} GB/s ({100 * cpuShare:F0}% of {t} core(s) obtained), best matrix-sized slice {bestRead[t]:F1} GB/s");
            }
        }

        // NOTE: on a shared machine wall time depends on what else runs; "GB/cpu-s" (weight bytes per CPU-second of
        // this process) shows whether a kernel could keep up with memory if it had its cores to itself.
        // "best" is the fastest single call: on a machine shared with other work it approximates an undisturbed run.
        // "cache GB/s": one core on a matrix in its own cache (DecodeCeiling.InCacheGbs), the compute roofline of one
        // thread; "ceiling" = min(best read, threads × cache GB/s), the most a batch-1 call can stream here, and
        // "best %c" the best call against it. The best read is over the calls' own footprint (the same ring, in
        // matrix-sized slices), the rule DecodeCeiling.ForModel follows for a model.
        Console.WriteLine($"ceiling = min(footprint read: best matrix-sized slice of the {ringBytes >> 20} MiB ring the calls cycle through, threads × cache GB/s)");
        Console.WriteLine($"{"type",-6} {"threads",7} {"batch",5} {"us/call",9} {"GB/s",7} {"% read",7} {"GB/cpu-s",9} {"best us",8} {"best GB/s",9} {"best %",7} {"cache GB/s",10} {"ceiling",7} {"best %c",7}  cpu");
        foreach (var type in types)
        {
            var inCacheAt = new Dictionary<int, double>();
            using var ring = new WeightRing(type, rows, cols, ringBytes);
            foreach (int t in threadCounts)
            {
                using var pool = new WorkerPool(t);
                foreach (int batch in batches)
                {
                    if (!inCacheAt.TryGetValue(batch, out double inCache))
                        inCacheAt[batch] = inCache = DecodeCeiling.InCacheGbs(type, Math.Min(seconds, 0.5), batch);
                    var x = new float[batch * cols];
                    var rng = new Random(3);
                    for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
                    var y = new float[batch * rows];
                    int next = 0;
                    var warm = Stopwatch.StartNew(); // warm-up: tiered JIT and pages
                    for (int i = 0; i < ring.Count || warm.Elapsed.TotalSeconds < 0.3; i++) MatMul.Multiply(ring[next++], x, y, batch, pool);
                    long calls = 0;
                    var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
                    var sw = Stopwatch.StartNew();
                    long best = long.MaxValue;
                    while (sw.Elapsed.TotalSeconds < seconds)
                    {
                        for (int i = 0; i < 8; i++)
                        {
                            long t0 = Stopwatch.GetTimestamp();
                            MatMul.Multiply(ring[next++], x, y, batch, pool);
                            best = Math.Min(best, Stopwatch.GetTimestamp() - t0);
                        }
                        calls += 8;
                    }
                    double bestCall = (double)best / Stopwatch.Frequency;
                    double bestGbs = ring.MatrixBytes / bestCall / 1e9;
                    double perCall = sw.Elapsed.TotalSeconds / calls;
                    double cpuPerCall = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds / calls;
                    double gbs = ring.MatrixBytes / perCall / 1e9;
                    Console.WriteLine($"{type,-6} {t,7} {batch,5} {perCall * 1e6,9:F1} {gbs,7:F1} {100 * gbs / readGbs[t],6:F0}% {ring.MatrixBytes / cpuPerCall / 1e9,9:F1} {bestCall * 1e6,8:F1} {bestGbs,9:F1} {100 * bestGbs / bestRead[t],6:F0}% " +
                                      $"{inCache,10:F1} {Math.Min(bestRead[t], t * inCache),7:F1} {100 * bestGbs / Math.Min(bestRead[t], t * inCache),6:F0}%  {DecodeCeiling.CpuTag}, {DecodeCeiling.CacheTag}");
                }
            }
        }
        return 0;
    }

    /// <summary>Average GB/s of summing the whole ring, and the best GB/s over single matrix-sized pieces.</summary>
    private static (double Average, double Best) MeasureRead(WeightRing ring, WorkerPool pool, double seconds)
    {
        var sink = new float[pool.ThreadCount * 16];
        fixed (float* ps = sink)
        {
            var whole = new ReadJob(ring.Base, ring.TotalBytes, pool.ThreadCount, ps);
            pool.Run(pool.ThreadCount, whole); // warm-up
            long passes = 0;
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed.TotalSeconds < seconds)
            {
                pool.Run(pool.ThreadCount, whole);
                passes++;
            }
            double average = passes * (double)ring.TotalBytes / sw.Elapsed.TotalSeconds / 1e9;
            long best = long.MaxValue;
            sw.Restart();
            for (int m = 0; sw.Elapsed.TotalSeconds < seconds; m = (m + 1) % ring.Count)
            {
                var piece = new ReadJob(ring.Base + m * ring.MatrixBytes, ring.MatrixBytes, pool.ThreadCount, ps);
                long t0 = Stopwatch.GetTimestamp();
                pool.Run(pool.ThreadCount, piece);
                best = Math.Min(best, Stopwatch.GetTimestamp() - t0);
            }
            return (average, ring.MatrixBytes / ((double)best / Stopwatch.Frequency) / 1e9);
        }
    }

    /// <summary>Sums the ring with 256-bit loads; item i of <paramref name="parts"/> reads the i-th contiguous slice.</summary>
    private readonly struct ReadJob(byte* data, long bytes, int parts, float* sink) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            for (int part = start; part < end; part++)
            {
                long from = bytes * part / parts & ~63L, to = bytes * (part + 1) / parts & ~63L;
                Vector256<float> a = default, b = default, c = default, d = default;
                for (long o = from; o + 128 <= to; o += 128)
                {
                    a += Vector256.Load((float*)(data + o));
                    b += Vector256.Load((float*)(data + o + 32));
                    c += Vector256.Load((float*)(data + o + 64));
                    d += Vector256.Load((float*)(data + o + 96));
                }
                sink[16 * part] = Vector256.Sum((a + b) + (c + d));
            }
        }
    }
}
