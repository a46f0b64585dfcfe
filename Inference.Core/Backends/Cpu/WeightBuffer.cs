using System.Runtime.InteropServices;

namespace Inference.Backends.Cpu;

/// <summary>
/// Native memory for repacked weights: from 2 MiB up aligned to 2 MiB and, on Linux, its whole 2 MiB pages advised for
/// transparent huge pages; freed when the buffer is no longer reachable.
/// </summary>
/// <remarks>
/// NOTE: a decode step streams every weight once; with 4 KiB pages that is one TLB miss per 4 KiB (47,000 per token for
/// 192 MB of Q8_0 weights). Where the kernel's transparent huge pages are in "madvise" mode (a common default), only
/// memory advised with <c>MADV_HUGEPAGE</c> gets 2 MiB pages; anywhere else the advice is skipped or ignored.
/// </remarks>
internal sealed unsafe partial class WeightBuffer : IDisposable
{
    private const nuint HugePage = 2 << 20;
    private const int MadvHugePage = 14;

    private byte* _data;

    /// <summary>Allocates <paramref name="bytes"/> bytes (uninitialized).</summary>
    /// <exception cref="OutOfMemoryException">The allocation failed.</exception>
    public WeightBuffer(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        Length = bytes;
        // NOTE: only the whole 2 MiB pages inside the buffer are advised, so a small matrix or a buffer's tail does not
        // take a whole huge page of memory for a few bytes.
        nuint whole = (nuint)bytes / HugePage * HugePage;
        _data = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, whole > 0 ? HugePage : 64);
        GC.AddMemoryPressure(bytes);
        if (whole > 0 && OperatingSystem.IsLinux())
        {
            try
            {
                _ = Madvise(_data, whole, MadvHugePage);   // advice only: failure leaves ordinary pages
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
            }
        }
    }

    /// <summary>Bytes usable from <see cref="Data"/>.</summary>
    public long Length { get; }

    /// <summary>The first byte; valid while this object is reachable.</summary>
    public byte* Data => _data;

    /// <summary>Frees the memory now (for a buffer no kernel can reach any more).</summary>
    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    ~WeightBuffer() => Free();

    private void Free()
    {
        // NOTE: also runs for an instance whose constructor threw (nothing allocated then).
        if (_data == null) return;
        NativeMemory.AlignedFree(_data);
        _data = null;
        GC.RemoveMemoryPressure(Length);
    }

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(void* address, nuint length, int advice);
}
