using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Text.Json;

namespace Inference.Benchmarks.E2e;

/// <summary>
/// Memory read bandwidth with T threads: each streams its slice of a 1 GiB buffer (far above the caches) with 256-bit
/// loads, as one stream or as four; the best of several passes. The decode roofline is this divided by the weight bytes
/// read per token.
/// </summary>
/// <remarks>
/// NOTE: the buffer is advised for 2 MiB pages as the engine's prepared weights are (<see cref="Inference.Backends.Cpu.WeightBuffer"/>):
/// the roofline should divide by what the weights' own kind of memory gives (on the AVX2 EPYC machine 22.2–23.1 GB/s
/// against 21.7–21.9 for the earlier pinned array of 512-bit loads, two threads). 256-bit loads: where 512-bit vectors
/// are not accelerated they are emulated, not a wider load.
/// </remarks>
public static class BandwidthBenchmark
{
    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        int threads = a.Int("--threads", 2);
        double gbs = Measure(threads, a.Int("--mib", 1024));
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object> { ["mode"] = "bandwidth", ["threads"] = threads, ["read_gb_s"] = Math.Round(gbs, 2), ["cpu"] = Kernels.DecodeCeiling.CpuTag }));
        return Task.FromResult(0);
    }

    public static unsafe double Measure(int threads, int mib)
    {
        long bytes = (long)mib << 20;
        var buffer = new Inference.Backends.Cpu.WeightBuffer(bytes);
        new Random(1).NextBytes(new Span<byte>(buffer.Data, checked((int)Math.Min(bytes, int.MaxValue))));
        double best = 0;
        float sink = 0;
        float* basePtr = (float*)buffer.Data;
        long floats = bytes / 4;
        for (int pass = 0; pass < 8; pass++)
        {
            var sums = new float[threads];
            var sw = Stopwatch.StartNew();
            // NOTE: even passes read each thread's slice as one stream, odd passes as four interleaved streams (as
            // the float matmul reads several weight rows at once); a core keeps more loads in flight with several streams,
            // and the roofline should divide by the best this machine does, not by one access pattern's.
            bool fourStreams = pass % 2 == 1;
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                long n = floats / threads / 256 * 256;
                float* s = basePtr + t * n;
                var acc0 = Vector256<float>.Zero; var acc1 = Vector256<float>.Zero;
                var acc2 = Vector256<float>.Zero; var acc3 = Vector256<float>.Zero;
                if (fourStreams)
                {
                    long q = n / 4;
                    for (long i = 0; i < q; i += 16)
                    {
                        acc0 += Vector256.Load(s + i) + Vector256.Load(s + i + 8);
                        acc1 += Vector256.Load(s + q + i) + Vector256.Load(s + q + i + 8);
                        acc2 += Vector256.Load(s + 2 * q + i) + Vector256.Load(s + 2 * q + i + 8);
                        acc3 += Vector256.Load(s + 3 * q + i) + Vector256.Load(s + 3 * q + i + 8);
                    }
                }
                else
                {
                    for (long i = 0; i < n; i += 32)
                    {
                        acc0 += Vector256.Load(s + i);
                        acc1 += Vector256.Load(s + i + 8);
                        acc2 += Vector256.Load(s + i + 16);
                        acc3 += Vector256.Load(s + i + 24);
                    }
                }
                sums[t] = Vector256.Sum(acc0 + acc1 + acc2 + acc3);
            });
            double seconds = sw.Elapsed.TotalSeconds;
            sink += sums.Sum();
            best = Math.Max(best, bytes / seconds / 1e9);
        }
        GC.KeepAlive(buffer);
        GC.KeepAlive(sink);
        return best;
    }
}
