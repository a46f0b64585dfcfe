using ILGPU.Runtime;
using Inference.Cuda.Runner;
using Inference.Engine;
using Device = Inference.Engine.Device;

namespace Inference.Cuda;

/// <summary>
/// The executor factory Inference.Core finds by name (<c>Inference.Cuda.CudaForwardExecutorFactory</c>) when
/// <see cref="EngineOptions.Device"/> is <see cref="Device.Cuda"/> or <see cref="Device.Auto"/>: one CUDA backend per
/// engine, running <see cref="DeviceForwardExecutor"/>.
/// </summary>
internal sealed class CudaForwardExecutorFactory : IForwardExecutorFactory
{
    // NOTE: probed once per process: creating an ILGPU CUDA context per engine load would cost every Device.Auto user.
    private static readonly Lazy<CudaDeviceProbe> Probe = new(CudaBackend.Probe);
    private readonly CudaOptions _options;

    public CudaForwardExecutorFactory() : this(new CudaOptions())
    {
    }

    public CudaForwardExecutorFactory(CudaOptions options) => _options = options;

    public string? UnavailableReason
    {
        get
        {
            var probe = Probe.Value;
            if (!probe.IsAvailable) return $"no CUDA device ({probe.Reason})";
            if (_options.DeviceIndex >= probe.DeviceCount) return $"CUDA device {_options.DeviceIndex} asked for, {probe.DeviceCount} found";
            return null;
        }
    }

    /// <summary>Free and total memory of the device (cuMemGetInfo) in a context of its own, before anything is loaded.</summary>
    public (long Free, long Total)? GetDeviceMemory()
    {
        using var backend = CudaBackend.Create(_options.DeviceIndex);
        backend.Bind();
        return ILGPU.Runtime.Cuda.CudaAPI.CurrentAPI.GetMemoryInfo(out long free, out long total) == ILGPU.Runtime.Cuda.CudaError.CUDA_SUCCESS
            ? (free, total) : null;
    }

    public IForwardExecutor Create(ForwardExecutorContext context)
    {
        var backend = CudaBackend.Create(_options.DeviceIndex);
        try
        {
            return new DeviceForwardExecutor(backend.Accelerator, context, _options.Attention, owner: backend, _options.TensorCoreMatMul,
                _options.FlashPrefill, _options.DeviceSampling, _options.QuantizedTensorCoreMatMul,
                new DecodeGraphOptions(_options.EnforceEager, _options.MaxCaptureSize, _options.MaxSeqLenToCapture), _options.FusedKernels);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }
}

/// <summary>Runs the device executor on a given accelerator (ILGPU's CPU accelerator in tests); the caller owns it.</summary>
internal sealed class AcceleratorForwardExecutorFactory(Accelerator accelerator, CudaAttentionKernels attention, bool deviceSampling = true) : IForwardExecutorFactory
{
    public string? UnavailableReason => null;

    public IForwardExecutor Create(ForwardExecutorContext context) =>
        new DeviceForwardExecutor(accelerator, context, attention, owner: null, deviceSampling: deviceSampling);
}

/// <summary>Test hook: an engine whose forward pass runs on a given ILGPU accelerator.</summary>
internal static class AcceleratorEngineOptions
{
    /// <summary><paramref name="options"/> running the device executor on <paramref name="accelerator"/> (its context needs ILGPU.Algorithms).</summary>
    public static EngineOptions UseAccelerator(this EngineOptions options, Accelerator accelerator, CudaAttentionKernels attention = CudaAttentionKernels.Ptx,
        bool deviceSampling = true) =>
        options with { Device = Device.Auto, ExecutorFactory = new AcceleratorForwardExecutorFactory(accelerator, attention, deviceSampling) };
}
