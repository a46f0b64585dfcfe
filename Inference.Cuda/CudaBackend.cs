using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace Inference.Cuda;

/// <summary>
/// An ILGPU context with one CUDA accelerator, the host of the hand-written PTX kernels and the ILGPU kernels.
/// </summary>
/// <remarks>
/// <see cref="Probe"/> never throws, so callers (and tests) can decide to skip GPU work.
/// The accelerator's CUDA context is bound to the creating thread; call <see cref="Bind"/> on other threads.
/// </remarks>
public sealed class CudaBackend : IDisposable
{
    private readonly Context _context;

    private CudaBackend(Context context, CudaAccelerator accelerator)
    {
        _context = context;
        Accelerator = accelerator;
    }

    /// <summary>The CUDA accelerator.</summary>
    public CudaAccelerator Accelerator { get; }

    /// <summary>Reports whether a CUDA device exists, without throwing.</summary>
    /// <returns>The probe result; <see cref="CudaDeviceProbe.Reason"/> says why no device is usable.</returns>
    public static CudaDeviceProbe Probe()
    {
        try
        {
            using var context = Context.Create(b => b.Cuda());
            var devices = context.GetCudaDevices();
            if (devices.Count == 0)
                return new CudaDeviceProbe(false, 0, null, null, "the CUDA driver reports no device (or no driver is installed)");
            var d = devices[0];
            var cc = d.Architecture is { } a ? $"{a.Major}.{a.Minor}" : null;
            return new CudaDeviceProbe(true, devices.Count, d.Name, cc, null);
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or InvalidOperationException
                                       or NotSupportedException or CudaException)
        {
            return new CudaDeviceProbe(false, 0, null, null, $"{e.GetType().Name}: {e.Message}");
        }
    }

    /// <summary>Creates a backend on CUDA device <paramref name="deviceIndex"/>.</summary>
    /// <param name="deviceIndex">Index among the CUDA devices.</param>
    /// <returns>The backend.</returns>
    /// <exception cref="InvalidOperationException">No such CUDA device.</exception>
    public static CudaBackend Create(int deviceIndex = 0)
    {
        var context = Context.Create(b => b.Cuda().EnableAlgorithms());
        try
        {
            var devices = context.GetCudaDevices();
            if (deviceIndex < 0 || deviceIndex >= devices.Count)
                throw new InvalidOperationException($"CUDA device {deviceIndex} not found ({devices.Count} device(s)).");
            var accelerator = context.CreateCudaAccelerator(deviceIndex);
            return new CudaBackend(context, accelerator);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>Makes this backend's CUDA context current on the calling thread.</summary>
    public void Bind() => Accelerator.Bind();

    /// <summary>Disposes the accelerator and the ILGPU context.</summary>
    public void Dispose()
    {
        Accelerator.Dispose();
        _context.Dispose();
    }
}
