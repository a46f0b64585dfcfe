namespace Inference.Cuda;

/// <summary>The outcome of looking for a CUDA device.</summary>
/// <param name="IsAvailable">Whether at least one CUDA device can be used.</param>
/// <param name="DeviceCount">CUDA devices found.</param>
/// <param name="DeviceName">Name of device 0, or null.</param>
/// <param name="ComputeCapability">Compute capability of device 0 (e.g. "9.0"), or null.</param>
/// <param name="Reason">Why no device is available, or null when one is.</param>
public sealed record CudaDeviceProbe(bool IsAvailable, int DeviceCount, string? DeviceName, string? ComputeCapability, string? Reason);
