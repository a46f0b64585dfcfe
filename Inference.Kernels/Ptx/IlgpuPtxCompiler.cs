using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace Inference.Kernels.Ptx;

/// <summary>
/// Compiles the ILGPU kernels of <see cref="KernelCatalog"/> to PTX text without a GPU (ILGPU's PTX backend), so the
/// generated code can be assembled and inspected with <c>ptxas</c> in CI.
/// </summary>
public sealed class IlgpuPtxCompiler : IDisposable
{
    private readonly Context _context;

    /// <summary>Creates an ILGPU context with the algorithms library (fast math intrinsics) enabled.</summary>
    public IlgpuPtxCompiler() => _context = Context.Create(b => b.CPU().Cuda().EnableAlgorithms());

    /// <summary>Compiles one kernel.</summary>
    /// <param name="entry">The kernel.</param>
    /// <param name="smMajor">Compute capability major (8 for sm_80, 9 for sm_90).</param>
    /// <param name="smMinor">Compute capability minor.</param>
    /// <returns>The PTX module text.</returns>
    /// <exception cref="ArgumentException">ILGPU knows no such architecture.</exception>
    public string Compile(KernelEntry entry, int smMajor, int smMinor)
    {
        ArgumentNullException.ThrowIfNull(entry);
        if (!CudaDevice.TryGetArchitecture(smMajor, smMinor, out var arch))
            throw new ArgumentException($"unknown architecture sm_{smMajor}{smMinor}", nameof(smMajor));
        // NOTE: PTX ISA 7.8 is the newest the ptxas of CUDA 11.8 (our CI assembler) accepts; it covers sm_90.
        var backend = new PTXBackend(_context, new CudaCapabilityContext(arch), arch, CudaInstructionSet.ISA_78, null);
        var description = entry.Grouping == KernelGrouping.Explicit
            ? EntryPointDescription.FromExplicitlyGroupedKernel(entry.Method)
            : EntryPointDescription.FromImplicitlyGroupedKernel(entry.Method);
        var compiled = (PTXCompiledKernel)backend.Compile(description, default(KernelSpecialization));
        return compiled.PTXAssembly;
    }

    /// <summary>Writes <c>NAME.sm_XY.ptx</c> for every catalog kernel into <paramref name="directory"/>.</summary>
    /// <param name="directory">Output folder (created when missing).</param>
    /// <param name="smMajor">Compute capability major.</param>
    /// <param name="smMinor">Compute capability minor.</param>
    /// <returns>The written paths.</returns>
    public IReadOnlyList<string> DumpAll(string directory, int smMajor, int smMinor)
    {
        Directory.CreateDirectory(directory);
        var paths = new List<string>();
        foreach (var entry in KernelCatalog.All)
        {
            var path = Path.Combine(directory, $"{entry.Name}.sm_{smMajor}{smMinor}.ptx");
            File.WriteAllText(path, Compile(entry, smMajor, smMinor));
            paths.Add(path);
        }
        return paths;
    }

    /// <summary>Disposes the ILGPU context.</summary>
    public void Dispose() => _context.Dispose();
}
