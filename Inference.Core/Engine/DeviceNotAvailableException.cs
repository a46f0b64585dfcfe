namespace Inference.Engine;

/// <summary>
/// <see cref="EngineOptions.Device"/> asked for hardware this process cannot use: the backend assembly is not installed
/// (for <see cref="Device.Cuda"/>: the <c>Inference.Cuda</c> package) or no such device exists. The message is one line.
/// </summary>
public sealed class DeviceNotAvailableException : NotSupportedException
{
    /// <summary>Creates the exception for <paramref name="device"/>, saying why in <paramref name="reason"/>.</summary>
    public DeviceNotAvailableException(Device device, string reason)
        : base($"Device.{device} is not available: {reason.ReplaceLineEndings(" ").Trim()}")
    {
        Device = device;
    }

    /// <summary>The device that was asked for.</summary>
    public Device Device { get; }
}
