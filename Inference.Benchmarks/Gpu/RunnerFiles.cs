using System.Globalization;
using System.Text;

namespace Inference.Benchmarks.Gpu;

/// <summary>What the GPU runner's steps share: the test data packed beside it by <c>scripts/device-check.sh --pack</c> (or in a
/// checkout), and one-line exception text for its tables.</summary>
public static class RunnerFiles
{
    /// <summary>A file packed beside the runner, or one under <c>../shared/testdata</c> above the working folder.</summary>
    public static string? Find(string packedName, string testDataPath)
    {
        string packed = Path.Combine(AppContext.BaseDirectory, packedName);
        if (File.Exists(packed)) return packed;
        string p = RepositoryPaths.TestData(testDataPath);
        return File.Exists(p) ? p : null;
    }

    /// <summary>An exception as one line for the check's tables: its type and message.</summary>
    public static string OneLine(Exception e) => $"{e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}";

    /// <summary>Records a failed step: an <c>exception</c> line in the TSV, a paragraph in the summary and the whole
    /// exception on the console, each under <paramref name="label"/>.</summary>
    public static void Failed(StringBuilder tsv, StringBuilder summary, string label, Exception e)
    {
        tsv.Append(CultureInfo.InvariantCulture, $"exception\t{label}\t\t\t{OneLine(e)}\n");
        summary.AppendLine(CultureInfo.InvariantCulture, $"{label}: **exception** {OneLine(e)}\n");
        Console.WriteLine($"{label}: {e}");
    }
}
