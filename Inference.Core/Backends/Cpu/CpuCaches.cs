using System.Globalization;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// The last-level cache of this machine, as the operating system describes it (or else the processor, through CPUID), and
/// what it means for a model's weights:
/// a model whose weights fit decodes from the cache; a larger one streams them from memory every token.
/// </summary>
internal static class CpuCaches
{
    private static readonly Lazy<long?> LastLevelCache = new(ReadLastLevelCache);

    /// <summary>
    /// Bytes of the last-level cache CPU 0 sees (<c>/sys/devices/system/cpu/cpu0/cache</c>: the data or unified cache of
    /// the highest level); where the operating system does not say (Windows, macOS, a container without sysfs), the cache
    /// the processor describes through CPUID (<see cref="LastLevelCacheOfCpuId"/>); null where neither does.
    /// </summary>
    public static long? LastLevelCacheBytes => LastLevelCache.Value;

    /// <summary>
    /// True when <paramref name="weightBytes"/> of weights, read once per decoded token, come from memory rather than the
    /// last-level cache: they exceed half of it, or its size is unknown.
    /// </summary>
    /// <remarks>
    /// NOTE: half, not all of it. The 192 MB Q8_0 benchmark model in the 260 MiB L3 of a Xeon (family 6, model 207, a
    /// cache shared with other work) decoded at its DRAM rate, not at the rate reading it back measured; the 110 MB
    /// Q4_K_M model decoded from the cache.
    /// </remarks>
    public static bool StreamsFromMemory(long weightBytes, long? lastLevelCacheBytes) =>
        lastLevelCacheBytes is not long llc || weightBytes > llc / 2;

    /// <summary><see cref="StreamsFromMemory(long, long?)"/> with this machine's last-level cache.</summary>
    public static bool StreamsFromMemory(long weightBytes) => StreamsFromMemory(weightBytes, LastLevelCacheBytes);

    /// <summary>
    /// A cache size as sysfs writes it (<c>index*/size</c>: <c>266240K</c> and a newline), in bytes: a whole number and
    /// K, M or G (binary multiples), whitespace around it ignored; null for anything else.
    /// </summary>
    public static long? ParseCacheSize(string? text)
    {
        if (text is null) return null;
        var s = text.AsSpan().Trim();
        int shift = s.IsEmpty ? -1 : s[^1] switch { 'K' => 10, 'M' => 20, 'G' => 30, _ => -1 };
        // NumberStyles.None: ASCII digits only, no sign, point or inner space.
        if (shift < 0 || !long.TryParse(s[..^1], NumberStyles.None, CultureInfo.InvariantCulture, out long value) || value > long.MaxValue >> shift)
            return null;
        return value << shift;
    }

    /// <summary>
    /// The last-level cache among <paramref name="caches"/> (one entry per sysfs <c>index*</c> directory: its
    /// <c>level</c>, <c>type</c> and <c>size</c> files' text, null where a file is missing): the size of the data or
    /// unified cache of the highest level, the largest if that level lists several; null when none parses.
    /// </summary>
    public static long? LastLevelCacheOf(IEnumerable<(string? Level, string? Type, string? Size)> caches)
    {
        var parsed = new List<(int, bool, long)>();
        foreach (var (levelText, type, sizeText) in caches)
            if (int.TryParse(levelText?.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int level) && ParseCacheSize(sizeText) is long bytes)
                parsed.Add((level, type?.Trim() is "Instruction", bytes));
        return LastLevelOf(parsed);
    }

    /// <summary>One cache of a deterministic cache parameters leaf (CPUID 4 on Intel, 0x8000001D on AMD and Hygon) from its
    /// EAX, EBX and ECX: its level, whether it holds instructions only, and its bytes (ways × partitions × line × sets);
    /// null for the type 0 that ends the list.</summary>
    public static (int Level, bool Instruction, long Bytes)? CacheOfCpuIdLeaf(uint eax, uint ebx, uint ecx)
    {
        uint type = eax & 0x1F;
        if (type == 0) return null;
        long ways = (ebx >> 22) + 1, partitions = ((ebx >> 12) & 0x3FF) + 1, line = (ebx & 0xFFF) + 1, sets = (long)ecx + 1;
        return ((int)((eax >> 5) & 0x7), type == 2, ways * partitions * line * sets);
    }

    /// <summary>
    /// The last-level cache the processor describes: the data or unified cache of the highest level among the subleaves of
    /// CPUID 4 (Intel) or 0x8000001D (AMD and Hygon, where the topology extensions are there); null on other processors,
    /// off x86, or where the leaf is missing.
    /// </summary>
    public static long? LastLevelCacheOfCpuId()
    {
        if (!X86Base.IsSupported) return null;
        var (maxLeaf, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        string vendor = string.Create(12, (ebx, edx, ecx), static (span, r) =>
        {
            for (int i = 0; i < 4; i++)
            {
                span[i] = (char)((r.ebx >> (8 * i)) & 0xFF);
                span[4 + i] = (char)((r.edx >> (8 * i)) & 0xFF);
                span[8 + i] = (char)((r.ecx >> (8 * i)) & 0xFF);
            }
        });
        int leaf;
        if (vendor == "GenuineIntel" && maxLeaf >= 4) leaf = 4;
        else if (vendor is "AuthenticAMD" or "HygonGenuine" && (uint)X86Base.CpuId(unchecked((int)0x80000000), 0).Eax >= 0x8000001D
                 && (X86Base.CpuId(unchecked((int)0x80000001), 0).Ecx & (1 << 22)) != 0)
            leaf = unchecked((int)0x8000001D);
        else return null;
        var caches = new List<(int, bool, long)>();
        // NOTE: the list ends with a type 0 entry; 64 bounds a leaf that never says so.
        for (int sub = 0; sub < 64; sub++)
        {
            var (a, b, c, _) = X86Base.CpuId(leaf, sub);
            if (CacheOfCpuIdLeaf((uint)a, (uint)b, (uint)c) is not { } cache) break;
            caches.Add(cache);
        }
        return LastLevelOf(caches);
    }

    /// <summary>The size of the data or unified cache of the highest level among <paramref name="caches"/>, the largest if that
    /// level lists several; null when there is none.</summary>
    private static long? LastLevelOf(IEnumerable<(int Level, bool Instruction, long Bytes)> caches)
    {
        int bestLevel = 0;
        long? bestBytes = null;
        foreach (var (level, instruction, bytes) in caches)
        {
            if (instruction || level <= 0 || bytes <= 0) continue;
            if (level > bestLevel || level == bestLevel && bytes > bestBytes)
                (bestLevel, bestBytes) = (level, bytes);
        }
        return bestBytes;
    }

    private static long? ReadLastLevelCache() => ReadSysfsLastLevelCache() ?? LastLevelCacheOfCpuId();

    private static long? ReadSysfsLastLevelCache()
    {
        const string root = "/sys/devices/system/cpu/cpu0/cache";
        try
        {
            if (!Directory.Exists(root)) return null;
            var caches = new List<(string?, string?, string?)>();
            foreach (var dir in Directory.GetDirectories(root, "index*"))
                caches.Add((ReadOrNull(Path.Combine(dir, "level")), ReadOrNull(Path.Combine(dir, "type")), ReadOrNull(Path.Combine(dir, "size"))));
            return LastLevelCacheOf(caches);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }

        static string? ReadOrNull(string path) => File.Exists(path) ? File.ReadAllText(path) : null;
    }
}
