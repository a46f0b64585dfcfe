namespace Inference.Benchmarks;

public static class Program
{
    public static int Main(string[] args)
    {
        var mode = args.Length > 0 ? args[0] : "";
        var rest = args.Length > 0 ? args[1..] : [];
        switch (mode)
        {
            case "dump-ptx": return Gpu.PtxDumpMode.Run(rest);
            case "gpu": return Gpu.GpuMode.Run(rest);
        }
        Console.Error.WriteLine("usage: Inference.Benchmarks <mode> [options]");
        Console.Error.WriteLine("  dump-ptx DIR    write ILGPU-generated PTX of every kernel (sm_80, sm_90)");
        Console.Error.WriteLine("  gpu OUTDIR      GPU checks and decode-attention benchmark (needs a CUDA device)");
        return args.Length == 0 ? 1 : 0;
    }
}
