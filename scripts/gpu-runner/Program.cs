namespace Inference.Benchmarks;

public static class GpuRunnerProgram
{
    public static int Main(string[] args)
    {
        var mode = args.Length > 0 ? args[0] : "";
        var rest = args.Length > 0 ? args[1..] : [];
        switch (mode)
        {
            case "gpu": return Gpu.GpuMode.Run(rest);
            case "dump-ptx": return Gpu.PtxDumpMode.Run(rest);
        }
        Console.Error.WriteLine("usage: inference-gpu-runner gpu OUTDIR [--quick] | dump-ptx DIR");
        return 2;
    }
}
