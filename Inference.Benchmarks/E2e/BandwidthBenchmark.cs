using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Text.Json;

namespace Inference.Benchmarks.E2e;

/// <summary>
/// Memory read bandwidth with T threads: each streams its slice of a buffer with 256-bit loads, as one stream or as
/// four; the best of several passes. Over a 1 GiB ring (far above the caches) it is the DRAM bandwidth; over a buffer
/// the size of a model's weight bytes per token (its footprint) it is what a decode step can stream, from the
/// last-level cache where the weights fit it. The decode roofline is the footprint's figure divided by the weight
/// bytes read per token (<see cref="ReadBandwidth.RooflineGbs"/>).
/// </summary>
/// <remarks>
/// NOTE: the buffer is advised for 2 MiB pages as the engine's prepared weights are (<see cref="Inference.Backends.Cpu.WeightBuffer"/>):
/// the roofline should divide by what the weights' own kind of memory gives (on the AVX2 EPYC machine 22.2–23.1 GB/s
/// against 21.7–21.9 for the earlier pinned array of 512-bit loads, two threads). 256-bit loads: where 512-bit vectors
/// are not accelerated they are emulated, not a wider load.
/// </remarks>
public static class BandwidthBenchmark
{
    /// <summary>MiB of the large ring, the DRAM measurement.</summary>
    public const int RingMib = 1024;

    /// <summary>Bytes each thread's slice is a whole number of (the read loop's step).</summary>
    private const int SliceGrain = 1024;

    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        int threads = a.Int("--threads", 2);
        int mib = a.Int("--mib", RingMib);
        double? footprintMb = a.Optional("--footprint-mb") is { } f ? double.Parse(f, System.Globalization.CultureInfo.InvariantCulture) : null;
        if (threads < 1 || mib < 1 || footprintMb is <= 0) throw new ArgumentException("--threads ≥ 1, --mib ≥ 1 and --footprint-mb > 0 are required");
        // NOTE: no last-level cache size here: this mode maps the read rate against the working set, so it
        // measures a footprint above the cache too, where the e2e benchmark takes the ring's figure for it.
        var read = footprintMb is double mb
            ? MeasureForFootprint(threads, (long)(mb * 1e6), lastLevelCacheBytes: null, mib)
            : ReadBandwidth.RingOnly(Measure(threads, mib), mib);
        Console.WriteLine(JsonSerializer.Serialize(ResultLine(threads, read, withFootprint: footprintMb is not null)));
        return Task.FromResult(0);
    }

    /// <summary>
    /// The fields of the mode's JSON line: <c>read_gb_s</c> and <c>dram_read_gb_s</c> always,
    /// <c>footprint_mb</c> and <c>footprint_read_gb_s</c> where a footprint was asked for, and the CPU and its cache.
    /// </summary>
    internal static Dictionary<string, object?> ResultLine(int threads, ReadBandwidth read, bool withFootprint)
    {
        var line = new Dictionary<string, object?> { ["mode"] = "bandwidth", ["threads"] = threads, ["read_gb_s"] = Math.Round(read.RooflineGbs, 2) };
        if (withFootprint)
        {
            line["footprint_mb"] = Math.Round(read.FootprintBytes / 1e6, 1);
            line["footprint_read_gb_s"] = Math.Round(read.FootprintGbs, 2);
        }
        line["dram_read_gb_s"] = Math.Round(read.DramGbs, 2);
        line["cpu"] = Kernels.DecodeCeiling.CpuTag;
        line["llc_mib"] = Kernels.DecodeCeiling.LastLevelCacheMib;
        return line;
    }

    /// <summary>
    /// The read bandwidth over the <paramref name="ringMib"/> ring (DRAM) and over a working set of
    /// <paramref name="footprintBytes"/> (<see cref="FootprintBytes"/>), the ring first, same threads and method; where
    /// <see cref="FootprintBytes"/> finds the second measurement would repeat the first, the ring's figure for both.
    /// </summary>
    /// <param name="threads">Threads that read.</param>
    /// <param name="footprintBytes">Bytes a decode step streams: the model's weight bytes per token.</param>
    /// <param name="lastLevelCacheBytes">The last-level cache (<see cref="Kernels.DecodeCeiling.LastLevelCacheBytes"/>);
    /// null where unknown, and then a footprint smaller than the ring is always measured.</param>
    /// <param name="ringMib">MiB of the large ring.</param>
    public static ReadBandwidth MeasureForFootprint(int threads, long footprintBytes, long? lastLevelCacheBytes, int ringMib = RingMib)
    {
        double dram = Measure(threads, ringMib);
        long? footprint = FootprintBytes(footprintBytes, threads, (long)ringMib << 20, lastLevelCacheBytes);
        return footprint is long bytes ? new ReadBandwidth(dram, MeasureBytes(threads, bytes), bytes) : ReadBandwidth.RingOnly(dram, ringMib);
    }

    /// <summary>
    /// Bytes the footprint measurement reads for a decode that streams <paramref name="weightBytesPerToken"/>: that,
    /// rounded up to a whole number of the read loop's 1 KiB steps per thread (a larger working set is never faster, so
    /// the rounding cannot raise the figure); null where a second measurement is not needed and the large ring's figure
    /// serves: when that is at least the ring, or larger than the last-level cache of <paramref name="lastLevelCacheBytes"/>
    /// (null: unknown).
    /// </summary>
    /// <remarks>
    /// NOTE: a set larger than the last-level cache is read from DRAM, as the ring is: each pass streams it in order,
    /// so a line is evicted before the pass comes round to it again (on the Xeon's 260 MiB L3, 362 and 700 MB read at
    /// the DRAM rate; docs/cpu-ceilings.md). Measuring it as well doubled the measuring time of the F32, F16 and BF16
    /// benchmark models for the same figure; the ring's figure is reported for both. Where the cache size is unknown,
    /// every footprint below the ring is measured, since it may fit.
    /// </remarks>
    internal static long? FootprintBytes(long weightBytesPerToken, int threads, long ringBytes, long? lastLevelCacheBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(weightBytesPerToken);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        long grain = (long)threads * SliceGrain;
        long bytes = (weightBytesPerToken + grain - 1) / grain * grain;
        bool aboveCache = lastLevelCacheBytes is long cache && bytes > cache;
        return bytes >= ringBytes || aboveCache ? null : bytes;
    }

    /// <summary>
    /// Passes over a buffer of <paramref name="bytes"/>: eight, or as many as read the large ring's eight passes' bytes
    /// when the buffer is smaller (its passes are shorter and more easily disturbed), at most 4,096.
    /// </summary>
    internal static int Passes(long bytes) =>
        (int)Math.Clamp((8L * RingMib << 20) / Math.Max(1, bytes), 8, 4096);

    /// <summary>The read bandwidth over a <paramref name="mib"/> MiB buffer, GB/s (<see cref="MeasureBytes"/>).</summary>
    public static double Measure(int threads, int mib) => MeasureBytes(threads, (long)mib << 20);

    /// <summary>
    /// The read bandwidth over a buffer of <paramref name="bytes"/> (advised for 2 MiB pages), GB/s: each of
    /// <paramref name="threads"/> threads sums its contiguous slice, the best of <see cref="Passes"/> passes.
    /// </summary>
    public static unsafe double MeasureBytes(int threads, long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        // Floats each thread reads: a whole number of 1 KiB steps; the rate divides the bytes actually read.
        long n = bytes / 4 / threads / 256 * 256;
        if (n == 0) throw new ArgumentOutOfRangeException(nameof(bytes), $"{bytes} bytes is less than {SliceGrain} per thread");
        double readBytes = 4.0 * n * threads;
        using var buffer = new Inference.Backends.Cpu.WeightBuffer(bytes);
        new Random(1).NextBytes(new Span<byte>(buffer.Data, checked((int)Math.Min(bytes, int.MaxValue))));
        double best = 0;
        float sink = 0;
        float* basePtr = (float*)buffer.Data;
        int passes = Passes(bytes);
        for (int pass = 0; pass < passes; pass++)
        {
            var sums = new float[threads];
            var sw = Stopwatch.StartNew();
            // NOTE: even passes read each thread's slice as one stream, odd passes as four interleaved streams (as
            // the float matmul reads several weight rows at once); a core keeps more loads in flight with several streams,
            // and the roofline should divide by the best this machine does, not by one access pattern's.
            bool fourStreams = pass % 2 == 1;
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
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
            best = Math.Max(best, readBytes / seconds / 1e9);
        }
        GC.KeepAlive(sink);
        return best;
    }
}

/// <summary>One read-bandwidth measurement for a decode (<see cref="BandwidthBenchmark.MeasureForFootprint"/>).</summary>
/// <param name="DramGbs">Over the large ring, far above the caches: the DRAM bandwidth, GB/s.</param>
/// <param name="FootprintGbs">Over a working set the size of the decode's weight bytes per token, GB/s (the ring's
/// figure when the weights are at least as large, or larger than the last-level cache).</param>
/// <param name="FootprintBytes">Bytes of that working set (the ring's when its figure serves).</param>
public readonly record struct ReadBandwidth(double DramGbs, double FootprintGbs, long FootprintBytes)
{
    /// <summary>
    /// What the bandwidth roofline divides by: the footprint's figure, never less than the large ring's.
    /// </summary>
    /// <remarks>
    /// NOTE: a working set no larger than the ring is never served by slower memory than the ring is; a footprint figure
    /// below the ring's is noise of its shorter passes, and a roofline built on it would be too low.
    /// </remarks>
    public double RooflineGbs => Math.Max(DramGbs, FootprintGbs);

    /// <summary>One measurement over the ring of <paramref name="ringMib"/> MiB, whose figure serves as the footprint's.</summary>
    internal static ReadBandwidth RingOnly(double gbs, int ringMib) => new(gbs, gbs, (long)ringMib << 20);
}
