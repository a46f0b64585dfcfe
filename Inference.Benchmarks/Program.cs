namespace Inference.Benchmarks;

public static class Program
{
    public static int Main(string[] args)
    {
        Console.Error.WriteLine("usage: Inference.Benchmarks <mode> [options]");
        return args.Length == 0 ? 1 : 0;
    }
}
