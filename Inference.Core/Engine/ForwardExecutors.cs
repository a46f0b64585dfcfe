using System.Reflection;

namespace Inference.Engine;

/// <summary>
/// Picks the executor factory for <see cref="EngineOptions.Device"/>: the CPU, or the CUDA backend found by assembly name
/// so that Inference.Core never references it — adding the <c>Inference.Cuda</c> package is all it takes.
/// </summary>
/// <remarks>
/// <code>
///  Device.Cpu   → CPU
///  Device.Cuda  → CUDA, else DeviceNotAvailableException (assembly absent, or no CUDA device)
///  Device.Auto  → CUDA when the assembly is present and a device exists, else CPU (silently)
/// </code>
/// </remarks>
internal static class ForwardExecutors
{
    /// <summary>The assembly that holds the CUDA backend.</summary>
    public const string CudaAssemblyName = "Inference.Cuda";

    /// <summary>Its factory type: public or internal, with a parameterless constructor, implementing <see cref="IForwardExecutorFactory"/>.</summary>
    public const string CudaFactoryTypeName = "Inference.Cuda.CudaForwardExecutorFactory";

    // NOTE: looked up once per process; the factory caches its own device probe.
    private static readonly Lazy<(IForwardExecutorFactory? Factory, string? Missing)> Cuda = new(FindCuda);

    /// <summary>The factory to create the executor with, or null for the CPU.</summary>
    /// <exception cref="DeviceNotAvailableException"><see cref="Device.Cuda"/> was asked for and cannot be used.</exception>
    public static IForwardExecutorFactory? Resolve(EngineOptions options)
    {
        if (options.Device == Device.Cpu) return null;
        IForwardExecutorFactory? factory;
        string? reason;
        if (options.ExecutorFactory is { } hook)
        {
            factory = hook;
            reason = null;
        }
        else
        {
            (factory, reason) = Cuda.Value;
        }
        reason ??= factory?.UnavailableReason;
        if (reason is null) return factory;
        if (options.Device == Device.Cuda) throw new DeviceNotAvailableException(Device.Cuda, reason);
        return null;
    }

    private static (IForwardExecutorFactory?, string?) FindCuda()
    {
        Assembly assembly;
        try
        {
            assembly = Assembly.Load(CudaAssemblyName);
        }
        catch (Exception e) when (e is FileNotFoundException or FileLoadException or BadImageFormatException)
        {
            return (null, $"the {CudaAssemblyName} assembly is not installed (add the {CudaAssemblyName} package)");
        }
        var type = assembly.GetType(CudaFactoryTypeName, throwOnError: false);
        if (type is null || !typeof(IForwardExecutorFactory).IsAssignableFrom(type))
            return (null, $"{CudaAssemblyName} {assembly.GetName().Version} has no {CudaFactoryTypeName}; use the same version as Inference.Core");
        return ((IForwardExecutorFactory)Activator.CreateInstance(type, nonPublic: true)!, null);
    }
}
