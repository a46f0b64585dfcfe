namespace Inference.Benchmarks.Gpu;

/// <summary><c>gpu OUTDIR</c>: placeholder until the GPU runner lands.</summary>
public static class GpuMode
{
    public static int Run(string[] args)
    {
        Console.Error.WriteLine("gpu mode not implemented yet");
        return 3;
    }
}
