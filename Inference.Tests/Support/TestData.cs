namespace Inference.Tests.Support;

/// <summary>Paths into ../shared/testdata, resolved from the repository root. Missing files fail loudly.</summary>
public static class TestData
{
    /// <summary>The repository root (the folder holding Inference.sln).</summary>
    public static string RepoRoot => RepositoryPaths.Root ?? throw new InvalidOperationException("Inference.sln not found above " + AppContext.BaseDirectory);

    /// <summary>Absolute path of <paramref name="relative"/> under ../shared/testdata; fails the test when missing.</summary>
    public static string Path(string relative)
    {
        _ = RepoRoot;
        var p = RepositoryPaths.TestData(relative);
        if (!File.Exists(p)) Assert.Fail($"test data file missing: {p} (expected ../shared/testdata beside the repository)");
        return p;
    }

    /// <summary>stories260K.gguf.</summary>
    public static string Stories260K => Path("stories260K.gguf");

    /// <summary>A fresh temporary folder for one test, deleted by the caller.</summary>
    public static string TempDir()
    {
        var d = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "inference-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }
}
