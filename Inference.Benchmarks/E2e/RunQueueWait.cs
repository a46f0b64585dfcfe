using System.Globalization;

namespace Inference.Benchmarks.E2e;

/// <summary>
/// How long the engine's compute threads (those named "Inference …": the engine loop, the pool's workers, parallel ranks)
/// have been runnable but waiting for a core: the second field of <c>/proc/self/task/*/schedstat</c>, summed. A decode
/// step that took long while this grew was preempted (another process, or another thread of this one, held the core);
/// one that took long without it lost its time to memory or to waiting inside the step.
/// </summary>
internal static class RunQueueWait
{
    /// <summary>Nanoseconds, summed over the compute threads (and the calling thread when <paramref name="callingThread"/>);
    /// 0 where the kernel does not say (not Linux, no schedstat).</summary>
    public static long Ns(bool callingThread = false)
    {
        long total = 0;
        try
        {
            if (!Directory.Exists("/proc/self/task")) return 0;
            foreach (var dir in Directory.EnumerateDirectories("/proc/self/task"))
            {
                if (File.ReadAllText(dir + "/comm").StartsWith("Inference", StringComparison.Ordinal)) total += Read(dir);
            }
            if (callingThread) total += Read("/proc/thread-self");
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return total;
    }

    private static long Read(string task)
    {
        string text = File.ReadAllText(task + "/schedstat");
        int a = text.IndexOf(' '), b = text.IndexOf(' ', a + 1);
        return a > 0 && b > a && long.TryParse(text.AsSpan(a + 1, b - a - 1), NumberStyles.Integer, CultureInfo.InvariantCulture, out long ns) ? ns : 0;
    }
}
