namespace Inference;

/// <summary>
/// Where the repository and its test data are: the folder holding <c>Inference.sln</c>, searched upwards from the working
/// folder and then from the program's folder, and <c>../shared/testdata</c> beside it.
/// </summary>
/// <remarks>
/// NOTE: the one copy of this search. Tests and benchmarks compile it through Inference.TestSupport; the command-line
/// sample links this file into its own build (it resolves its default model the same way and ships no test support).
/// </remarks>
internal static class RepositoryPaths
{
    private static readonly Lazy<string?> RootFolder = new(FindRoot);

    /// <summary>The repository root (the folder holding <c>Inference.sln</c>), or null outside a checkout.</summary>
    public static string? Root => RootFolder.Value;

    /// <summary>
    /// Absolute path of <paramref name="relative"/> under <c>../shared/testdata</c> beside the repository root (beside the
    /// working folder outside a checkout). The file may not exist.
    /// </summary>
    public static string TestData(string relative) =>
        Path.GetFullPath(Path.Combine(Root ?? Environment.CurrentDirectory, "..", "shared", "testdata", relative));

    private static string? FindRoot()
    {
        foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
        {
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "Inference.sln"))) return d.FullName;
        }
        return null;
    }
}
