namespace Inference.Benchmarks.Gpu;

/// <summary>Test data the GPU runner needs: packed beside it by <c>scripts/device-check.sh --pack</c>, or in a checkout.</summary>
public static class RunnerFiles
{
    /// <summary>A file packed beside the runner, or one under <c>../shared/testdata</c> above the working folder.</summary>
    public static string? Find(string packedName, string testDataPath)
    {
        string packed = Path.Combine(AppContext.BaseDirectory, packedName);
        if (File.Exists(packed)) return packed;
        for (var d = new DirectoryInfo(Environment.CurrentDirectory); d is not null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "..", "shared", "testdata", testDataPath);
            if (File.Exists(p)) return Path.GetFullPath(p);
        }
        return null;
    }
}
