using System.Globalization;

namespace Inference.Backends.Cpu;

/// <summary>
/// The last-level cache of this machine, as the operating system describes it, and what it means for a model's weights:
/// a model whose weights fit decodes from the cache; a larger one streams them from memory every token.
/// </summary>
internal static class CpuCaches
{
    private static readonly Lazy<long?> LastLevelCache = new(ReadLastLevelCache);

    /// <summary>
    /// Bytes of the last-level cache CPU 0 sees (<c>/sys/devices/system/cpu/cpu0/cache</c>: the data or unified cache of
    /// the highest level), or null where the operating system does not say.
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
        int bestLevel = 0;
        long? bestBytes = null;
        foreach (var (levelText, type, sizeText) in caches)
        {
            if (type?.Trim() is "Instruction") continue;
            if (!int.TryParse(levelText?.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int level)) continue;
            if (ParseCacheSize(sizeText) is not long bytes || bytes == 0) continue;
            if (level > bestLevel || level == bestLevel && bytes > bestBytes)
                (bestLevel, bestBytes) = (level, bytes);
        }
        return bestBytes;
    }

    private static long? ReadLastLevelCache()
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
