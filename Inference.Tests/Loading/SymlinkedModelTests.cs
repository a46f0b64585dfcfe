using Inference.Engine;
using Inference.Loading;
using Inference.Tests.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Loading;

/// <summary>
/// Model files reached through symbolic links: a link to a GGUF, and a Hugging Face folder laid out as the hub's cache
/// keeps it (each snapshot file a relative link to a blob). A link's own length is that of its target's path, so a
/// loader that sizes the file from the link refuses the model as truncated.
/// </summary>
public class SymlinkedModelTests
{
    private string _dir = "";

    [SetUp]
    public void Setup() => _dir = TestData.TempDir();

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static EngineOptions Options => new() { ContextLength = 64 };

    [Test]
    public async Task GgufThroughALink_LoadsAndGivesTheSameLogits()
    {
        string link = Path.Combine(_dir, "model.gguf");
        File.CreateSymbolicLink(link, Path.GetFullPath(TestData.Stories260K));
        Assert.That(new FileInfo(link).Length, Is.LessThan(new FileInfo(TestData.Stories260K).Length), "the link's own length is its target path's");

        int[] prompt = [1, 403, 407, 261, 378, 17, 300];
        await using var direct = await InferenceEngine.LoadAsync(TestData.Stories260K, Options);
        await using var linked = await InferenceEngine.LoadAsync(link, Options);
        Assert.That(await linked.GetLogitsAsync(prompt), Is.EqualTo(await direct.GetLogitsAsync(prompt)));
    }

    [Test]
    public async Task HfFolderAsTheHubCacheKeepsIt_LoadsAndGivesTheSameLogits()
    {
        string plain = Path.Combine(_dir, "plain");
        HfTestCheckpoint.Write(plain, new HfTestCheckpointOptions { Layers = 1, Hidden = 64, Heads = 4, KvHeads = 2, Intermediate = 96, Shards = 2 });
        string blobs = Path.Combine(_dir, "hub", "blobs"), snapshot = Path.Combine(_dir, "hub", "snapshots", "0123abcd");
        Directory.CreateDirectory(blobs);
        Directory.CreateDirectory(snapshot);
        int n = 0;
        foreach (string file in Directory.GetFiles(plain))
        {
            string blob = $"blob{n++:D2}";
            File.Copy(file, Path.Combine(blobs, blob));
            File.CreateSymbolicLink(Path.Combine(snapshot, Path.GetFileName(file)), Path.Combine("..", "..", "blobs", blob));
        }
        Assert.That(n, Is.GreaterThanOrEqualTo(5), "config, shards, index, tokenizer files");

        using (var checkpoint = HfCheckpoint.Open(snapshot))
            Assert.That(checkpoint.Shards, Has.Count.EqualTo(2));
        int[] prompt = [1, 17, 300, 45, 99, 310];
        await using var direct = await InferenceEngine.LoadAsync(plain, Options);
        await using var linked = await InferenceEngine.LoadAsync(snapshot, Options);
        Assert.That(await linked.GetLogitsAsync(prompt), Is.EqualTo(await direct.GetLogitsAsync(prompt)));
    }
}
