using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Text.Json;

namespace Inference.Benchmarks.E2e;

/// <summary>
/// Memory read bandwidth with T threads: each streams its slice of a 1 GiB buffer (far above the caches) with 512-bit
/// loads, as one stream or as four; the best of several passes. The decode roofline is this divided by the weight bytes
/// read per token.
/// </summary>
public static class BandwidthBenchmark
{
    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        int threads = a.Int("--threads", 2);
        double gbs = Measure(threads, a.Int("--mib", 1024));
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object> { ["mode"] = "bandwidth", ["threads"] = threads, ["read_gb_s"] = Math.Round(gbs, 2) }));
        return Task.FromResult(0);
    }

    public static unsafe double Measure(int threads, int mib)
    {
        long bytes = (long)mib << 20;
        var buffer = GC.AllocateUninitializedArray<float>((int)(bytes / 4), pinned: true);
        new Random(1).NextBytes(System.Runtime.InteropServices.MemoryMarshal.AsBytes(buffer.AsSpan()));
        double best = 0;
        float sink = 0;
        fixed (float* p = buffer)
        {
            float* basePtr = p;
            for (int pass = 0; pass < 8; pass++)
            {
                var sums = new float[threads];
                var sw = Stopwatch.StartNew();
                // NOTE: even passes read each thread's slice as one stream, odd passes as four interleaved streams (as
                // the float matmul reads four weight rows at once); a core keeps more loads in flight with several streams,
                // and the roofline should divide by the best this machine does, not by one access pattern's.
                bool fourStreams = pass % 2 == 1;
                Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                {
                    long n = buffer.LongLength / threads / 256 * 256;
                    float* s = basePtr + t * n;
                    var acc0 = Vector512<float>.Zero; var acc1 = Vector512<float>.Zero;
                    var acc2 = Vector512<float>.Zero; var acc3 = Vector512<float>.Zero;
                    if (fourStreams)
                    {
                        long q = n / 4;
                        for (long i = 0; i < q; i += 16)
                        {
                            acc0 += Vector512.Load(s + i);
                            acc1 += Vector512.Load(s + q + i);
                            acc2 += Vector512.Load(s + 2 * q + i);
                            acc3 += Vector512.Load(s + 3 * q + i);
                        }
                    }
                    else
                    {
                        for (long i = 0; i < n; i += 64)
                        {
                            acc0 += Vector512.Load(s + i);
                            acc1 += Vector512.Load(s + i + 16);
                            acc2 += Vector512.Load(s + i + 32);
                            acc3 += Vector512.Load(s + i + 48);
                        }
                    }
                    sums[t] = Vector512.Sum(acc0 + acc1 + acc2 + acc3);
                });
                double seconds = sw.Elapsed.TotalSeconds;
                sink += sums.Sum();
                best = Math.Max(best, bytes / seconds / 1e9);
            }
        }
        GC.KeepAlive(sink);
        return best;
    }
}
