using System.Runtime.InteropServices;
using ILGPU.Runtime.Cuda;

namespace Inference.Cuda;

/// <summary>
/// A CUDA graph captured from the launches enqueued on one stream and instantiated for replay: the driver API's stream
/// capture (<c>cuStreamBeginCapture_v2</c>, <c>cuStreamEndCapture</c>), <c>cuGraphInstantiateWithFlags</c> (what
/// <c>cuGraphInstantiate</c> names in CUDA 12's header), <c>cuGraphLaunch</c>, <c>cuGraphExecDestroy</c> and
/// <c>cuGraphDestroy</c>, called through the driver library because ILGPU's <see cref="CudaAPI"/> has no graph functions.
/// </summary>
/// <remarks>
/// Capture records launches instead of running them; the graph replays the same kernels with the same arguments (device
/// pointers, sizes), so whatever the kernels read is read again at each <see cref="Launch"/>. Capture needs a stream other
/// than the legacy default stream (<see cref="ILGPU.Runtime.Accelerator.CreateStream"/>), and nothing in
/// <c>enqueue</c> may synchronize or allocate on the device. Not thread-safe.
/// </remarks>
internal sealed unsafe class CudaGraph : IDisposable
{
    private const int CaptureModeThreadLocal = 1;   // CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
    private IntPtr _graph;
    private IntPtr _exec;

    private CudaGraph(IntPtr graph, IntPtr exec)
    {
        _graph = graph;
        _exec = exec;
    }

    /// <summary>Whether the driver library exports the graph functions; never throws.</summary>
    /// <param name="reason">Why not, or null.</param>
    public static bool IsSupported(out string? reason)
    {
        reason = Driver.Value.Reason;
        return reason is null;
    }

    /// <summary>Captures the launches <paramref name="enqueue"/> puts on <paramref name="stream"/> and instantiates them.</summary>
    /// <param name="stream">A stream created by the accelerator (not its default stream).</param>
    /// <param name="enqueue">Enqueues the work on <paramref name="stream"/>.</param>
    /// <returns>The instantiated graph.</returns>
    /// <exception cref="NotSupportedException">The driver lacks the graph functions.</exception>
    /// <exception cref="InvalidOperationException">A driver call failed (the message names it and the error).</exception>
    public static CudaGraph Capture(CudaStream stream, Action enqueue)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(enqueue);
        var d = Driver.Value;
        if (d.Reason is not null) throw new NotSupportedException($"CUDA graphs are unavailable: {d.Reason}");
        IntPtr s = stream.StreamPtr;
        if (s == IntPtr.Zero) throw new ArgumentException("stream capture needs a created stream, not the legacy default stream", nameof(stream));
        Check(d.BeginCapture(s, CaptureModeThreadLocal), "cuStreamBeginCapture_v2");
        IntPtr graph = IntPtr.Zero;
        try
        {
            enqueue();
        }
        catch
        {
            // end the capture so the stream is usable again; the partial graph is dropped
            if (d.EndCapture(s, &graph) == 0 && graph != IntPtr.Zero) d.GraphDestroy(graph);
            throw;
        }
        Check(d.EndCapture(s, &graph), "cuStreamEndCapture");
        IntPtr exec = IntPtr.Zero;
        int error = d.Instantiate(&exec, graph, 0);
        if (error != 0)
        {
            d.GraphDestroy(graph);
            Check(error, "cuGraphInstantiateWithFlags");
        }
        return new CudaGraph(graph, exec);
    }

    /// <summary>Enqueues one replay of the graph on <paramref name="stream"/>.</summary>
    /// <param name="stream">Where to run it (any stream of the same context).</param>
    public void Launch(CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ObjectDisposedException.ThrowIf(_exec == IntPtr.Zero, this);
        Check(Driver.Value.GraphLaunch(_exec, stream.StreamPtr), "cuGraphLaunch");
    }

    /// <summary>Destroys the executable graph and the graph.</summary>
    public void Dispose()
    {
        if (_exec != IntPtr.Zero) Driver.Value.ExecDestroy(_exec);
        if (_graph != IntPtr.Zero) Driver.Value.GraphDestroy(_graph);
        _exec = _graph = IntPtr.Zero;
    }

    private static void Check(int error, string what)
    {
        if (error != 0)
            throw new InvalidOperationException($"{what} failed: {(CudaError)error} ({CudaAPI.CurrentAPI.GetErrorString((CudaError)error)})");
    }

    private static readonly Lazy<Functions> Driver = new(Functions.Load);

    /// <summary>The driver's graph entry points, or why they are missing.</summary>
    private sealed class Functions
    {
        public delegate* unmanaged<IntPtr, int, int> BeginCapture;
        public delegate* unmanaged<IntPtr, IntPtr*, int> EndCapture;
        public delegate* unmanaged<IntPtr*, IntPtr, ulong, int> Instantiate;
        public delegate* unmanaged<IntPtr, IntPtr, int> GraphLaunch;
        public delegate* unmanaged<IntPtr, int> ExecDestroy;
        public delegate* unmanaged<IntPtr, int> GraphDestroy;
        public string? Reason;

        public static Functions Load()
        {
            var f = new Functions();
            IntPtr lib = IntPtr.Zero;
            foreach (var name in new[] { "libcuda.so.1", "libcuda.so", "nvcuda" })
                if (NativeLibrary.TryLoad(name, out lib)) break;
            if (lib == IntPtr.Zero)
            {
                f.Reason = "the CUDA driver library (libcuda.so.1 / nvcuda) was not found";
                return f;
            }
            IntPtr Get(string entry) => NativeLibrary.TryGetExport(lib, entry, out var p) ? p : IntPtr.Zero;
            IntPtr begin = Get("cuStreamBeginCapture_v2"), end = Get("cuStreamEndCapture"), inst = Get("cuGraphInstantiateWithFlags"),
                launch = Get("cuGraphLaunch"), execDestroy = Get("cuGraphExecDestroy"), destroy = Get("cuGraphDestroy");
            if (begin == IntPtr.Zero || end == IntPtr.Zero || inst == IntPtr.Zero || launch == IntPtr.Zero || execDestroy == IntPtr.Zero || destroy == IntPtr.Zero)
            {
                f.Reason = "the CUDA driver library lacks the graph functions (a driver for CUDA 11.4 or later is needed)";
                return f;
            }
            f.BeginCapture = (delegate* unmanaged<IntPtr, int, int>)begin;
            f.EndCapture = (delegate* unmanaged<IntPtr, IntPtr*, int>)end;
            f.Instantiate = (delegate* unmanaged<IntPtr*, IntPtr, ulong, int>)inst;
            f.GraphLaunch = (delegate* unmanaged<IntPtr, IntPtr, int>)launch;
            f.ExecDestroy = (delegate* unmanaged<IntPtr, int>)execDestroy;
            f.GraphDestroy = (delegate* unmanaged<IntPtr, int>)destroy;
            return f;
        }
    }
}
