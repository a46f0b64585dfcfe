using System.Reflection;
using ILGPU.Runtime.Cuda;

namespace Inference.Cuda;

/// <summary>A hand-written PTX module (an embedded <c>Ptx/*.ptx</c> resource) loaded into a CUDA context.</summary>
/// <remarks>The driver JIT-compiles the PTX for the device at load time.</remarks>
internal sealed class PtxModule : IDisposable
{
    private IntPtr _module;

    private PtxModule(string name, IntPtr module)
    {
        Name = name;
        _module = module;
    }

    /// <summary>Resource name without extension, e.g. <c>paged_attention_f16</c>.</summary>
    public string Name { get; }

    /// <summary>The PTX text of an embedded module.</summary>
    public static string ReadSource(string name)
    {
        var resource = $"Inference.Cuda.Ptx.{name}.ptx";
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"embedded PTX resource {resource} is missing");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>Loads an embedded module into the current CUDA context (bind the accelerator first).</summary>
    public static PtxModule Load(CudaAccelerator accelerator, string name)
    {
        accelerator.Bind();
        var source = ReadSource(name);
        var error = CudaAPI.CurrentAPI.LoadModule(out var module, source, out var log);
        if (error != CudaError.CUDA_SUCCESS)
            throw new InvalidOperationException($"loading PTX module {name} failed: {error} {log?.Split('\0')[0].Trim()}");
        return new PtxModule(name, module);
    }

    /// <summary>Looks up an entry point.</summary>
    public IntPtr GetFunction(string entry)
    {
        ObjectDisposedException.ThrowIf(_module == IntPtr.Zero, this);
        var error = CudaAPI.CurrentAPI.GetModuleFunction(out var function, _module, entry);
        if (error != CudaError.CUDA_SUCCESS)
            throw new InvalidOperationException($"PTX module {Name} has no entry {entry}: {error}");
        return function;
    }

    /// <summary>Unloads the module.</summary>
    public void Dispose()
    {
        if (_module == IntPtr.Zero) return;
        CudaAPI.CurrentAPI.DestroyModule(_module);
        _module = IntPtr.Zero;
    }
}
