using ILGPU.Runtime;

namespace Inference.Kernels;

/// <summary>Picks the thread-group size of the explicitly grouped kernels for an accelerator.</summary>
internal static class KernelGroupSize
{
    /// <summary>
    /// The largest power of two that is at most <paramref name="preferred"/> and the accelerator's group limit.
    /// </summary>
    /// <remarks>
    /// NOTE: GPUs get the preferred 64 threads. ILGPU's CPU accelerator runs one OS thread per group thread and pays
    /// for every barrier with thread switches, so a small simulated CPU device (e.g. 16 threads) keeps the CPU tests fast.
    /// The kernels read <c>Group.DimX</c> and work with any power of two.
    /// </remarks>
    public static int For(Accelerator accelerator, int preferred)
    {
        int limit = Math.Min(preferred, accelerator.MaxNumThreadsPerGroup);
        int size = 1;
        while (size * 2 <= limit) size *= 2;
        return size;
    }
}
