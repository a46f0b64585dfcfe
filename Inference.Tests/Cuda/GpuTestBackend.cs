using Inference.Cuda;

namespace Inference.Tests.Cuda;

/// <summary>One CUDA backend for the GPU tests, or the reason there is none.</summary>
internal static class GpuTestBackend
{
    private static readonly Lazy<(CudaBackend? Backend, string? Reason)> Instance = new(() =>
    {
        var probe = CudaBackend.Probe();
        if (!probe.IsAvailable) return (null, probe.Reason);
        return (CudaBackend.Create(), null);
    });

    /// <summary>The backend; ignores the calling test when no CUDA device exists.</summary>
    public static CudaBackend RequireDevice()
    {
        var (backend, reason) = Instance.Value;
        if (backend is null) Assert.Ignore($"no CUDA device: {reason}");
        backend!.Bind();
        return backend;
    }
}
