using BenchmarkDotNet.Running;
using Inference.Benchmarks.Kernels;

namespace Inference.Benchmarks;

public static class Program
{
    public static int Main(string[] args)
    {
        switch (args.Length == 0 ? "" : args[0])
        {
            case "kernels":
                BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args[1..]);
                return 0;
            case "kernels-quick":
                return QuickKernelBench.Run(args[1..]);
            default:
                Console.Error.WriteLine("usage: Inference.Benchmarks <mode> [options]");
                Console.Error.WriteLine("  kernels [BenchmarkDotNet args]   CPU kernel micro-benchmarks");
                Console.Error.WriteLine("  kernels-quick [--seconds S] ...  GB/s of weights per type at 1 and 2 threads");
                return args.Length == 0 ? 1 : 0;
        }
    }
}
