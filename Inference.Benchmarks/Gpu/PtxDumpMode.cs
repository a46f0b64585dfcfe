using Inference.Kernels.Ptx;

namespace Inference.Benchmarks.Gpu;

/// <summary><c>dump-ptx DIR</c>: writes the PTX ILGPU generates for every kernel, for sm_80 and sm_90.</summary>
public static class PtxDumpMode
{
    public static int Run(string[] args)
    {
        if (args.Length < 1)
        {
            Console.Error.WriteLine("usage: Inference.Benchmarks dump-ptx DIR");
            return 2;
        }
        using var compiler = new IlgpuPtxCompiler();
        foreach (var (major, minor) in new[] { (8, 0), (9, 0) })
            foreach (var path in compiler.DumpAll(args[0], major, minor))
                Console.WriteLine(path);
        return 0;
    }
}
