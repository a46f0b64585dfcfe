using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using System.Xml.Linq;
using Inference.Engine;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Packaging;

/// <summary>
/// Packs the libraries with <c>dotnet pack</c> into a temporary feed, checks what the packages carry, then builds and
/// runs a small console app that installs them from that feed and generates text with stories260K.
/// </summary>
[Category("Pack")]
public class PackTests
{
    private static readonly string[] Packages = ["Inference.Core", "Inference.Kernels", "Inference.Cuda", "Inference.Extensions.AI", "Inference.Cluster"];

    [Test]
    [CancelAfter(900_000)]
    public async Task PackagesInstallFromAFeedAndGenerate(CancellationToken cancellationToken)
    {
        string root = TestData.TempDir();
        try
        {
            string feed = Directory.CreateDirectory(Path.Combine(root, "feed")).FullName;
            // A fresh version each run, so no stale copy in the global packages folder can stand in for this build.
            string version = "0.0.0-packtest." + DateTime.UtcNow.ToString("yyyyMMddHHmmss") + "." + Environment.ProcessId;

            // One pack over a solution filter of the libraries: one build, in parallel where it can be.
            string filter = Path.Combine(root, "pack.slnf");
            await File.WriteAllTextAsync(filter, $$"""
                { "solution": { "path": "{{Path.Combine(TestData.RepoRoot, "Inference.sln").Replace("\\", "\\\\")}}",
                  "projects": [ {{string.Join(", ", Packages.Select(p => $"\"{p}\\\\{p}.csproj\""))}} ] } }
                """, cancellationToken);
            await RunDotnetAsync(root, cancellationToken, "pack", filter, "-c", "Release", "-o", feed, $"-p:Version={version}",
                "-p:ContinuousIntegrationBuild=true", "-nodeReuse:false", "--disable-build-servers");

            foreach (string id in Packages)
            {
                string nupkg = Path.Combine(feed, $"{id}.{version}.nupkg");
                Assert.That(File.Exists(nupkg), Is.True, nupkg);
                using var zip = ZipFile.OpenRead(nupkg);
                var names = zip.Entries.Select(e => e.FullName).ToArray();
                Assert.That(names, Does.Contain("README.md"), id);
                Assert.That(names, Does.Contain($"lib/net10.0/{id}.dll"), id);
                Assert.That(names, Does.Contain($"lib/net10.0/{id}.xml"), id + ": XML documentation");
                using var nuspecStream = zip.GetEntry($"{id}.nuspec")!.Open();
                var nuspec = XDocument.Load(nuspecStream);
                XNamespace ns = nuspec.Root!.Name.Namespace;
                var metadata = nuspec.Root.Element(ns + "metadata")!;
                Assert.That(metadata.Element(ns + "license")?.Value, Is.EqualTo("MIT"), id);
                Assert.That(metadata.Element(ns + "readme")?.Value, Is.EqualTo("README.md"), id);
                Assert.That(metadata.Element(ns + "description")?.Value, Is.Not.Empty, id);
            }

            // The consumer lives outside the repository, so none of its build settings apply.
            string app = Directory.CreateDirectory(Path.Combine(root, "consumer")).FullName;
            await File.WriteAllTextAsync(Path.Combine(app, "nuget.config"), $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources>
                    <clear />
                    <add key="local" value="{feed}" />
                    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
                  </packageSources>
                </configuration>
                """, cancellationToken);
            await File.WriteAllTextAsync(Path.Combine(app, "Consumer.csproj"), $"""
                <Project Sdk="Microsoft.NET.Sdk">
                  <PropertyGroup>
                    <OutputType>Exe</OutputType>
                    <TargetFramework>net10.0</TargetFramework>
                    <Nullable>enable</Nullable>
                    <ImplicitUsings>enable</ImplicitUsings>
                  </PropertyGroup>
                  <ItemGroup>
                {string.Concat(Packages.Select(p => $"    <PackageReference Include=\"{p}\" Version=\"{version}\" />\n"))}  </ItemGroup>
                </Project>
                """, cancellationToken);
            await File.WriteAllTextAsync(Path.Combine(app, "Program.cs"), """
                using Inference.Chat;
                using Inference.Engine;
                using Inference.Extensions.AI;
                using Inference.Sampling;
                using Microsoft.Extensions.AI;

                await using var engine = await InferenceEngine.LoadAsync(args[0]);
                var completion = await engine.CompleteAsync("Once upon a time", SamplingOptions.Greedy with { MaxTokens = 8 });
                Console.WriteLine("GENERATED:" + completion.Text);
                IChatClient client = new InferenceChatClient(engine, new InferenceChatClientOptions
                {
                    Template = ChatTemplate.Parse("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"),
                });
                var response = await client.GetResponseAsync("Once upon a time", new ChatOptions { Temperature = 0, MaxOutputTokens = 8 });
                Console.WriteLine("CHAT:" + response.Text);
                foreach (var name in new[] { "Inference.Kernels", "Inference.Cuda" })
                    Console.WriteLine("LOADED:" + System.Reflection.Assembly.Load(name).GetName().Name);
                """, cancellationToken);
            // The README's IChatClient block compiles as shown against the packages: its using directives head a file of
            // their own, the rest becomes a method given the engine the README's earlier blocks made.
            var block = ReadmeCSharpBlock("### Microsoft.Extensions.AI").Split('\n');
            await File.WriteAllTextAsync(Path.Combine(app, "ReadmeChatClient.cs"),
                string.Join('\n', block.Where(l => l.StartsWith("using ", StringComparison.Ordinal)))
                + "\ninternal static class ReadmeChatClient\n{\n    public static async Task RunAsync(Inference.Engine.InferenceEngine engine)\n    {\n"
                + string.Join('\n', block.Where(l => !l.StartsWith("using ", StringComparison.Ordinal))) + "\n    }\n}\n", cancellationToken);
            await RunDotnetAsync(app, cancellationToken, "build", app, "-nodeReuse:false", "--disable-build-servers");
            string output = await RunDotnetAsync(app, cancellationToken, "run", "--project", app, "--no-build", "--", TestData.Stories260K);

            await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 }, cancellationToken: cancellationToken);
            var expected = await engine.CompleteAsync("Once upon a time", SamplingOptions.Greedy with { MaxTokens = 8 }, cancellationToken);
            Assert.That(output, Does.Contain("GENERATED:" + expected.Text + "\n"));
            Assert.That(output, Does.Contain("CHAT:" + expected.Text + "\n"));
            Assert.That(output, Does.Contain("LOADED:Inference.Kernels").And.Contain("LOADED:Inference.Cuda"));
            // The consumer really used the feed's packages: they were extracted at this run's version.
            Assert.That(await File.ReadAllTextAsync(Path.Combine(app, "obj", "project.assets.json"), cancellationToken), Does.Contain($"Inference.Core/{version}"));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>The first C# block of the README after the line <paramref name="heading"/>.</summary>
    private static string ReadmeCSharpBlock(string heading)
    {
        string readme = File.ReadAllText(Path.Combine(TestData.RepoRoot, "README.md")).ReplaceLineEndings("\n");
        int at = readme.IndexOf("\n" + heading + "\n", StringComparison.Ordinal);
        Assert.That(at, Is.GreaterThanOrEqualTo(0), $"README has no '{heading}'");
        int start = readme.IndexOf("```csharp\n", at, StringComparison.Ordinal) + "```csharp\n".Length;
        return readme[start..readme.IndexOf("\n```", start, StringComparison.Ordinal)];
    }

    private static async Task<string> RunDotnetAsync(string workingDirectory, CancellationToken cancellationToken, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        using var process = Process.Start(start)!;
        var output = new StringBuilder();
        var stdout = Task.Run(async () => output.Append(await process.StandardOutput.ReadToEndAsync(cancellationToken)), cancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
        try
        {
            await process.WaitForExitAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }
        await stdout;
        string errors = await stderr;
        Assert.That(process.ExitCode, Is.EqualTo(0), $"dotnet {string.Join(' ', args)} failed:\n{output}\n{errors}");
        return output.ToString().Replace("\r\n", "\n");
    }
}
