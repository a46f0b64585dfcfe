using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics.X86;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// What bounds a batch-1 decode step on this machine: the read bandwidth (every weight is read once per token) or the
/// arithmetic of the kernels (the rate at which one core multiplies weights that are already in its cache), whichever
/// is slower; and which CPU the figures come from.
/// </summary>
/// <remarks>
/// NOTE: machines of one kind differ. On a Zen 1 core (family 23) the packed integer kernels were bound by arithmetic
/// (one 128-bit multiply pipe); on a Zen 3 core (family 25) they are not, and llama.cpp runs much faster too. A fraction
/// of the bandwidth roofline alone hides which it is, so every result line says the CPU and the ceiling of both.
/// </remarks>
public static class DecodeCeiling
{
    private static readonly Lazy<(int Family, int Model, string Name)> Cpu = new(ReadCpu);

    /// <summary>The CPU's family (CPUID leaf 1, extended family added), or 0 off x86.</summary>
    public static int CpuFamily => Cpu.Value.Family;

    /// <summary>The CPU's model (CPUID leaf 1, extended model included), or 0 off x86.</summary>
    public static int CpuModel => Cpu.Value.Model;

    /// <summary>The CPU's name as the operating system gives it ("AMD EPYC"), or "unknown".</summary>
    public static string CpuName => Cpu.Value.Name;

    /// <summary>"family 25 model 1": the tag every result line carries.</summary>
    public static string CpuTag => string.Create(CultureInfo.InvariantCulture, $"family {CpuFamily} model {CpuModel}");

    /// <summary>
    /// Bytes of the last-level cache CPU 0 sees (<c>/sys/devices/system/cpu/cpu0/cache</c>: the data or unified cache of
    /// the highest level), or null where the operating system does not say.
    /// </summary>
    /// <remarks>
    /// NOTE: a model whose weights fit the last-level cache decodes from it, faster than the DRAM bandwidth allows (the
    /// 110 MB Q4_K_M benchmark model in the 260 MiB L3 of a Xeon, family 6 model 207); every result line says how large
    /// it is, beside the CPU.
    /// </remarks>
    public static long? LastLevelCacheBytes => CpuCaches.LastLevelCacheBytes;

    /// <summary><see cref="LastLevelCacheBytes"/> in MiB, as result lines carry it (<c>llc_mib</c>); null when unknown.</summary>
    public static double? LastLevelCacheMib => LastLevelCacheBytes is long bytes ? Math.Round(bytes / 1048576.0, 1) : null;

    /// <summary>"LLC 260 MiB" (or "LLC unknown"): the tag text result lines carry beside <see cref="CpuTag"/>.</summary>
    public static string CacheTag => LastLevelCacheMib is double mib
        ? string.Create(CultureInfo.InvariantCulture, $"LLC {mib:0.#} MiB")
        : "LLC unknown";

    /// <summary>
    /// GB/s of <paramref name="type"/> weights one core multiplies at batch <paramref name="batch"/> (1: decode) with the
    /// matrix in its own cache: the marginal rate between two prepared (repacked) matrices of about 96 and 320 KiB (1,024
    /// columns), (bytes₂ − bytes₁) / (t₂ − t₁) over the best call of each of
    /// <see cref="MatMul.Multiply(in WeightMatrix, ReadOnlySpan{float}, Span{float}, int, WorkerPool)"/> on the calling
    /// thread, the two sizes called alternately.
    /// </summary>
    /// <remarks>
    /// NOTE: the core's own L2 (512 KiB on the EPYC machines) holds both matrices, where other processes cannot evict
    /// them (a 2 MiB matrix in the shared last-level cache measured Q4_K at 11–22 GB/s from one run to the next). Calls
    /// that short carry fixed costs (quantizing the activations, the call itself: about a fifth of a 192 KiB Q4_0 call,
    /// whose rate then came out below the rate the same kernel streams from memory); the difference of two sizes leaves
    /// the arithmetic per weight byte, which is what a model's large matrices pay.
    /// </remarks>
    /// <param name="type">The weight type.</param>
    /// <param name="seconds">How long to call them.</param>
    /// <param name="batch">Activation rows per call.</param>
    public static double InCacheGbs(GgmlType type, double seconds = 0.3, int batch = 1)
    {
        const int cols = 1024;
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        int small = (int)Math.Max(8, (96 << 10) / rowBytes / 8 * 8), large = (int)Math.Max(16, (320 << 10) / rowBytes / 8 * 8);
        using var ringSmall = new WeightRing(type, small, cols, 0);
        using var ringLarge = new WeightRing(type, large, cols, 0);
        using var pool = new WorkerPool(1);
        WeightMatrix ws = ringSmall[0], wl = ringLarge[0];
        var x = new float[batch * cols];
        var rng = new Random(3);
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        var y = new float[batch * large];
        for (int i = 0; i < 100; i++)
        {
            MatMul.Multiply(ws, x, y, batch, pool); // warm-up
            MatMul.Multiply(wl, x, y, batch, pool);
        }
        long bestSmall = long.MaxValue, bestLarge = long.MaxValue;
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed.TotalSeconds < seconds)
        {
            for (int i = 0; i < 8; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                MatMul.Multiply(ws, x, y, batch, pool);
                long t1 = Stopwatch.GetTimestamp();
                MatMul.Multiply(wl, x, y, batch, pool);
                long t2 = Stopwatch.GetTimestamp();
                bestSmall = Math.Min(bestSmall, t1 - t0);
                bestLarge = Math.Min(bestLarge, t2 - t1);
            }
        }
        double bytes = ringLarge.MatrixBytes - ringSmall.MatrixBytes, ticks = bestLarge - bestSmall;
        // A disturbed run can leave the large matrix's best no slower than the small one's: then the plain rate.
        return ticks > 0 ? bytes / (ticks / Stopwatch.Frequency) / 1e9 : ringLarge.MatrixBytes / ((double)bestLarge / Stopwatch.Frequency) / 1e9;
    }

    /// <summary>
    /// The batch-1 decode ceiling of a model on <paramref name="threads"/> cores, tokens/s: the bandwidth roofline (weight
    /// bytes per token over <paramref name="readGbs"/>) and the compute roofline (each weight type's bytes per token over
    /// <paramref name="threads"/> times its <see cref="InCacheGbs"/>), and the smaller of the two.
    /// </summary>
    /// <param name="model">A GGUF file.</param>
    /// <param name="threads">Cores the decode runs on.</param>
    /// <param name="readGbs">Read bandwidth measured in the same process over the decode's footprint
    /// (<see cref="E2e.ReadBandwidth.RooflineGbs"/>): the weights of a model that fits the last-level cache are read
    /// from it, faster than from DRAM.</param>
    /// <param name="seconds">Time per weight type and round for <see cref="InCacheGbs"/>.</param>
    /// <param name="rounds">Rounds over the weight types; each type's rate is its best round (<see cref="BestOfRounds"/>).</param>
    public static ModelCeiling ForModel(string model, int threads, double readGbs, double seconds = 0.3, int rounds = 3)
    {
        var bytesByType = new Dictionary<GgmlType, long>();
        long total = 0;
        using (var gguf = GgufFile.Open(model))
        {
            foreach (var t in gguf.Tensors)
            {
                // NOTE: the embedding table gives one row per token and no product; vectors (norms) are read, not multiplied.
                long bytes = t.Name == "token_embd.weight" ? t.ByteCount / t.RowCount : t.ByteCount;
                total += bytes;
                if (t.Dimensions.Length >= 2 && t.Name != "token_embd.weight")
                    bytesByType[t.Type] = bytesByType.GetValueOrDefault(t.Type) + bytes;
            }
        }
        var rates = BestOfRounds(bytesByType.Keys, rounds, type => InCacheGbs(type, seconds));
        double computeSeconds = 0;
        foreach (var (type, bytes) in bytesByType) computeSeconds += bytes / (rates[type] * 1e9 * threads);
        double bandwidthTokS = readGbs > 0 ? readGbs * 1e9 / total : 0;
        double computeTokS = computeSeconds > 0 ? 1 / computeSeconds : 0;
        return new ModelCeiling(bandwidthTokS, computeTokS, rates);
    }

    /// <summary>
    /// Each type's highest <paramref name="measure"/> over <paramref name="rounds"/> rounds, the types interleaved within
    /// each round (A, B, A, B, …), so that one disturbed stretch of time lowers no type's rate: as the read bandwidth
    /// takes its best pass, the in-cache rate takes its best round. (A single 0.3 s window measured Q4_K at 23 GB/s
    /// instead of 33 once, which made the compute roofline the lower ceiling.)
    /// </summary>
    internal static Dictionary<GgmlType, double> BestOfRounds(IEnumerable<GgmlType> types, int rounds, Func<GgmlType, double> measure)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1);
        var list = types.ToList();
        var best = new Dictionary<GgmlType, double>();
        for (int round = 0; round < rounds; round++)
            foreach (var type in list)
                best[type] = Math.Max(best.GetValueOrDefault(type), measure(type));
        return best;
    }

    private static (int, int, string) ReadCpu()
    {
        string name = "unknown";
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal))
                    {
                        name = line[(line.IndexOf(':') + 1)..].Trim();
                        break;
                    }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        if (!X86Base.IsSupported) return (0, 0, name);
        uint eax = (uint)X86Base.CpuId(1, 0).Eax;
        int baseFamily = (int)(eax >> 8) & 0xF;
        int family = baseFamily == 0xF ? baseFamily + (int)((eax >> 20) & 0xFF) : baseFamily;
        int model = (int)(eax >> 4) & 0xF;
        if (baseFamily is 0xF or 0x6) model |= (int)((eax >> 16) & 0xF) << 4;
        return (family, model, name);
    }
}

/// <summary>A model's batch-1 decode ceiling on one machine (<see cref="DecodeCeiling.ForModel"/>).</summary>
/// <param name="BandwidthTokS">Tokens/s if reading the weights were all a step did.</param>
/// <param name="ComputeTokS">Tokens/s if the kernels' in-cache arithmetic were all a step did.</param>
/// <param name="InCacheGbs">Each weight type's in-cache rate on one core, GB/s of weights.</param>
public sealed record ModelCeiling(double BandwidthTokS, double ComputeTokS, IReadOnlyDictionary<GgmlType, double> InCacheGbs)
{
    /// <summary>min(bandwidth roofline, compute roofline), tokens/s.</summary>
    public double TokS => ComputeTokS > 0 && BandwidthTokS > 0 ? Math.Min(BandwidthTokS, ComputeTokS) : Math.Max(BandwidthTokS, ComputeTokS);

    /// <summary>Which roofline is lower: "bandwidth" or "compute".</summary>
    public string BoundBy => ComputeTokS > 0 && ComputeTokS < BandwidthTokS ? "compute" : "bandwidth";
}
