namespace Inference.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        Console.Error.WriteLine("usage: inference <generate|logits|tokenize> [options]");
        return 1;
    }
}
