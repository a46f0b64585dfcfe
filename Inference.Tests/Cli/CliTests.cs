using System.Diagnostics;
using System.Text.Json;
using Inference.Kernels.Reference;
using Inference.Tests.Support;

namespace Inference.Tests.Cli;

/// <summary>The CLI as other tools drive it: a real process, exact stdout, one-line errors with exit code 1.</summary>
public class CliTests
{
    private static (int Code, string Out, string Err) Run(params string[] args) => RunWithInput(null, args);

    private static (int Code, string Out, string Err) RunWithInput(string? input, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, WorkingDirectory = TestData.RepoRoot };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "inference.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        if (input is not null) p.StandardInput.Write(input);
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("the CLI did not exit within 120 s");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Test]
    public void Generate_DefaultModel_Greedy_PrintsOnlyTheContinuation()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestData.Path("expected/stories260K-greedy-256.json")));
        var expected = doc.RootElement.GetProperty("expected_text").GetString()!;
        var (code, stdout, stderr) = Run("generate", "--prompt", "Once upon a time", "--max-tokens", "100", "--temperature", "0", "--threads", "2");
        Assert.That(code, Is.EqualTo(0), stderr);
        var text = stdout.TrimEnd('\n');
        Assert.That(text, Is.Not.Empty);
        Assert.That(expected, Does.StartWith("Once upon a time" + text));
        Assert.That(stderr, Does.Contain("TTFT").And.Contain("TPOT").And.Contain("tokens/s"));
    }

    [Test]
    public void Generate_WithNgramSpeculation_SameTextAndAcceptanceOnStderr()
    {
        var (code, plain, stderr) = Run("generate", "--prompt", "Once upon a time", "--max-tokens", "80", "--temperature", "0", "--threads", "1");
        Assert.That(code, Is.EqualTo(0), stderr);
        var (code2, speculative, stderr2) = Run("generate", "--prompt", "Once upon a time", "--max-tokens", "80", "--temperature", "0", "--threads", "1",
            "--ngram-speculation", "--num-speculative-tokens", "3");
        Assert.That(code2, Is.EqualTo(0), stderr2);
        Assert.That(speculative, Is.EqualTo(plain));
        Assert.That(stderr2, Does.Contain("speculative acceptance"));
    }

    [Test]
    public void Generate_WithKvEviction_RunsPastTheContext()
    {
        var (code, stdout, stderr) = Run("generate", "--prompt", "Once upon a time", "--max-tokens", "300", "--temperature", "0", "--threads", "1",
            "--max-model-len", "64", "--kv-eviction", "sinks", "--kv-recent-tokens", "40");
        Assert.That(code, Is.EqualTo(0), stderr);
        var generated = System.Text.RegularExpressions.Regex.Match(stderr, "generated ([0-9]+) tokens");
        Assert.That(int.Parse(generated.Groups[1].Value), Is.GreaterThan(64), "more tokens than the context holds");
    }

    [Test]
    public void Tokenize_PrintsIdsWithBos()
    {
        var (code, stdout, _) = Run("tokenize", "--text", "Once upon a time");
        Assert.That(code, Is.EqualTo(0));
        Assert.That(stdout.Trim(), Is.EqualTo("1,403,407,261,378"));
    }

    [TestCase("ggml-vocab-llama-spm.gguf", "Äpfel", "1,11585,7810,295")]
    [TestCase("ggml-vocab-gpt-2.gguf", "Hello world", "15496,995")]
    public void Tokenize_VocabOnlyGguf(string file, string text, string? expected)
    {
        // Vocab-only files have no tensors: the tokenizer alone is read. Expected ids from llama.cpp's test data (.out).
        var (code, stdout, stderr) = Run("tokenize", "--model", TestData.Path("vocab/" + file), "--text", text);
        Assert.That(code, Is.EqualTo(0), stderr);
        if (expected is not null) Assert.That(stdout.Trim(), Is.EqualTo(expected));
        else Assert.That(stdout.Trim(), Does.Match("^[0-9]+(,[0-9]+)+$"));
    }

    [Test]
    public void Logits_PrintsOneJsonLine()
    {
        var (code, stdout, _) = Run("logits", "--prompt", "Once upon a time");
        Assert.That(code, Is.EqualTo(0));
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1));
        using var doc = JsonDocument.Parse(lines[0]);
        Assert.That(doc.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()), Is.EqualTo(new[] { 1, 403, 407, 261, 378 }));
        var logits = doc.RootElement.GetProperty("logits").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        Assert.That(logits, Has.Length.EqualTo(512));
        Assert.That(Array.IndexOf(logits, logits.Max()), Is.EqualTo(432), "greedy continues with ','");
    }

    [TestCase("f32")]
    [TestCase("f16")]
    public void Logits_TakeTheEngineOptions_AsTheServerDoes(string type)
    {
        var (code, stdout, stderr) = Run("logits", "--prompt", "Once upon a time", "--kv-cache-dtype", type, "--block-size", "4",
            "--max-model-len", "64", "--no-enable-prefix-caching", "--max-num-batched-tokens", "3");
        Assert.That(code, Is.EqualTo(0), stderr);
        using var doc = JsonDocument.Parse(stdout);
        var logits = doc.RootElement.GetProperty("logits").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        Assert.That(Array.IndexOf(logits, logits.Max()), Is.EqualTo(432));
    }

    [TestCase("--tensor-parallel-size", "2")]
    [TestCase("--tensor-parallel-size", "4")]
    [TestCase("--pipeline-parallel-size", "2")]
    [TestCase("--pipeline-parallel-size", "2", "--tensor-parallel-size", "2")]
    [TestCase("--context-parallel-size", "2")]
    [TestCase("--context-parallel-size", "2", "--tensor-parallel-size", "2")]
    public void Logits_OnParallelRanks_EqualOneRank(params string[] layout)
    {
        static float[] Logits(string stdout) =>
            JsonDocument.Parse(stdout).RootElement.GetProperty("logits").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        // f32 K/V: with f16 a K value that the split sums in another order can round to the other neighbouring half
        // (3e-5 relative L2 on stories260K at 2 tensor ranks).
        var (code, single, stderr) = Run("logits", "--prompt", "Once upon a time there was", "--threads", "2", "--kv-cache-dtype", "f32");
        Assert.That(code, Is.EqualTo(0), stderr);
        var (code2, parallel, stderr2) = Run(["logits", "--prompt", "Once upon a time there was", "--threads", "2", "--kv-cache-dtype", "f32", .. layout]);
        Assert.That(code2, Is.EqualTo(0), stderr2);
        Assert.That(ReferenceCompare.RelativeL2(Logits(parallel), Logits(single)), Is.LessThan(1e-5));
    }

    [Test]
    public void Logits_AndInfo_WithBlockFormatKvCache()
    {
        // A model with head size 64 (stories260K's is 8, which the block formats refuse).
        string dir = TestData.TempDir();
        try
        {
            string model = Path.Combine(dir, "hd64.gguf");
            Inference.Loading.SyntheticModel.Write(model, new Inference.Loading.SyntheticModelOptions
            {
                Dimension = 128, HeadDimension = 64, LayerCount = 2, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 256,
                TensorType = Inference.Loading.GgmlType.F32, WeightScale = 0.08f, TokenizerDonorPath = TestData.Stories260K,
            });
            var argmax = new Dictionary<string, int>();
            foreach (var type in new[] { "f32", "f16", "q8_0", "fp8", "fp8_e4m3" })
            {
                var (code, stdout, stderr) = Run("logits", "--model", model, "--prompt", "Once upon a time there was", "--kv-cache-dtype", type, "--block-size", "4");
                Assert.That(code, Is.EqualTo(0), $"{type}: {stderr}");
                using var doc = JsonDocument.Parse(stdout);
                var logits = doc.RootElement.GetProperty("logits").EnumerateArray().Select(e => e.GetSingle()).ToArray();
                argmax[type] = Array.IndexOf(logits, logits.Max());
            }
            Assert.That(argmax.Values.Distinct().Count(), Is.EqualTo(1), string.Join(", ", argmax));

            var (infoCode, info, infoErr) = Run("info", "--model", model, "--kv-cache-dtype", "q8_0");
            Assert.That(infoCode, Is.EqualTo(0), infoErr);
            Assert.That(info, Does.Contain("KV per token     544 bytes (2 · 2 layers · 2 KV heads · 64 / 32 blocks · 34 bytes, q8_0)"));
            (infoCode, info, infoErr) = Run("info", "--model", model, "--kv-cache-dtype", "f16");
            Assert.That(info, Does.Contain("KV per token     1,024 bytes (2 · 2 layers · 2 KV heads · 64 · 2 bytes, f16)"), infoErr);

            var (refused, _, why) = Run("logits", "--prompt", "Once upon a time", "--kv-cache-dtype", "q8_0");
            Assert.That(refused, Is.Not.EqualTo(0));
            Assert.That(why, Does.Contain("multiple of 32"));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void Info_ReportsShapeParametersAndKvCost()
    {
        var (code, stdout, stderr) = Run("info", "--memory-gb", "1");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("5 layers, dim 64, 8 heads, 4 KV heads (GQA)"));
        Assert.That(stdout, Does.Contain("292,800"));
        Assert.That(stdout, Does.Contain("KV per token     640 bytes"));
        Assert.That(stdout, Does.Contain("1,677,721 tokens in 1 GiB"));
        Assert.That(stdout, Does.Contain("device           "));
    }

    [Test]
    public void Info_PrintsTheKvPoolFormula_AndWhatFits()
    {
        var (code, stdout, stderr) = Run("info", "--gpu-memory-utilization", "0.5", "--max-model-len", "256", "--max-num-seqs", "4");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Match(@"KV pool +0\.5 × [0-9.]+ GiB − [0-9.]+ (KiB|MiB) weights − [0-9.]+ (KiB|MiB) activations = [0-9.]+ GiB; capped at [0-9.]+ MiB \(2 · 4 max-num-seqs · 256 tokens\)"));
        // 2 · 4 · 256 tokens of 640 bytes (f16) = 128 blocks of 16.
        Assert.That(stdout, Does.Contain("KV pool fits     128 blocks × 16 tokens = 2,048 tokens: 8 sequences of 256 tokens"));
    }

    [Test]
    public void Chat_AnswersEachLine_AndReusesTheConversationPrefix()
    {
        var (code, stdout, stderr) = RunWithInput("Hello there\nTell me a story\n", "chat", "--max-tokens", "20", "--temperature", "0");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length, Is.GreaterThanOrEqualTo(2));
        var turns = stderr.Split('\n').Where(l => l.StartsWith('[')).ToArray();
        Assert.That(turns, Has.Length.EqualTo(2));
        Assert.That(turns[1], Does.Match(@"[1-9]\d* prompt tokens from the prefix cache"), "the second turn reuses the first turn's KV");
    }

    private static readonly object[] ErrorCases =
    [
        new object[] { new[] { "generate", "--model", "/no/such/file.gguf", "--prompt", "x" }, "not found" },
        new object[] { new[] { "generate", "--model", "/tmp", "--prompt", "x" }, "directory" },
        new object[] { new[] { "generate", "--prompt", "x", "--temperature", "-1" }, "Temperature" },
        new object[] { new[] { "generate", "--prompt", "x", "--top-p", "2" }, "TopP" },
        new object[] { new[] { "generate", "--prompt", "x", "--max-tokens", "0" }, "MaxTokens" },
        new object[] { new[] { "generate", "--prompt", "x", "--threads", "0" }, "Threads" },
        new object[] { new[] { "generate", "--bogus" }, "bogus" },
        new object[] { new[] { "frobnicate" }, "frobnicate" },
        new object[] { new[] { "generate", "--prompt", "x", "--device", "tpu" }, "tpu" },
        new object[] { new[] { "generate", "--prompt", "x", "--max-tokens", "abc" }, "abc" },
        new object[] { new[] { "logits", "--prompt", "x", "--kv-cache-dtype", "q9" }, "q9" },
        new object[] { new[] { "logits", "--prompt", "x", "--block-size", "0" }, "0" },
        new object[] { new[] { "logits", "--prompt", "x", "--quantization", "q3_k" }, "q3_k" },
        new object[] { new[] { "quantize", "--out", "/tmp/never-written.gguf", "--type", "Q3_K_M" }, "Q3_K_M" },
    ];

    [Test]
    public void Quantize_WritesAModelThatLoadsAndRuns()
    {
        string dir = TestData.TempDir();
        try
        {
            // NOTE: stories260K's rows of 64 and 172 values fit no K-quant: Q6_K falls back to Q8_0, and to F16 for 172.
            string output = Path.Combine(dir, "stories-q6_k.gguf");
            var (code, stdout, stderr) = Run("quantize", "--out", output, "--type", "q6_k");
            Assert.That(code, Is.EqualTo(0), stderr);
            Assert.That(stdout, Does.Contain("Q8_0").And.Contain("F16"));
            using (var gguf = Inference.Loading.GgufFile.Open(output))
                Assert.That(gguf.GetInteger("general.file_type"), Is.EqualTo(18));
            var (runCode, text, runErr) = Run("generate", "--model", output, "--prompt", "Once upon a time", "--max-tokens", "8", "--temperature", "0");
            Assert.That(runCode, Is.EqualTo(0), runErr);
            Assert.That(text.Trim(), Is.Not.Empty);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestCase("generate", "--prompt", "x", "--device", "cuda")]
    [TestCase("info", "--device", "cuda")]
    public void DeviceCuda_WithoutAGpu_IsOneLineAndExitCode1(params string[] args)
    {
        if (Inference.Cuda.CudaBackend.Probe().IsAvailable) Assert.Ignore("a CUDA device exists here");
        Errors_AreOneLineOnStderr_ExitCode1(args, "Device.Cuda is not available: no CUDA device");
    }

    [TestCaseSource(nameof(ErrorCases))]
    public void Errors_AreOneLineOnStderr_ExitCode1(string[] args, string mention)
    {
        var (code, stdout, stderr) = Run(args);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stdout, Is.Empty);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1), stderr);
        Assert.That(lines[0], Does.Contain(mention).IgnoreCase);
        Assert.That(stderr, Does.Not.Contain("   at "), "no stack trace");
    }

    /// <summary>A one-tensor GGUF with a known layout, patched at a field: the CLI reports each kind of damage in one line.</summary>
    [TestCase("version", 4, 4L, 9L, "version")]
    [TestCase("tensor-count", 8, 8L, long.MaxValue, "tensor count")]
    [TestCase("metadata-count", 16, 8L, 1L << 40, "metadata count")]
    [TestCase("name-length", 24, 8L, 1L << 50, "length")]
    [TestCase("dimension-overflow", 37, 8L, 1L << 62, "")]
    [TestCase("tensor-offset", 49, 8L, 1L << 40, "outside the file")]
    [TestCase("tensor-type", 45, 4L, 77L, "type")]
    public void DamagedHeaderField_OneLine_ExitCode1(string name, int offset, long width, long value, string mention)
    {
        var dir = TestData.TempDir();
        try
        {
            string file = Path.Combine(dir, name + ".gguf");
            // Layout: magic 0, version 4, tensor count 8, metadata count 16, then the tensor info: name length 24,
            // name 32 ("t"), dimension count 33, ne0 37, type 45, offset 49.
            using (var w = Inference.Loading.GgufWriter.Create(file))
            {
                w.AddTensorInfo("t", [64], Inference.Loading.GgmlType.F32);
                w.WriteHeader();
                w.WriteTensorData("t", new float[64]);
                w.Complete();
            }
            var bytes = File.ReadAllBytes(file);
            Assert.That(bytes[32], Is.EqualTo((byte)'t'), "the layout the offsets assume");
            if (width == 4) BitConverter.GetBytes((int)value).CopyTo(bytes, offset);
            else BitConverter.GetBytes(value).CopyTo(bytes, offset);
            File.WriteAllBytes(file, bytes);

            var (code, stdout, stderr) = Run("generate", "--model", file, "--prompt", "x");
            Assert.That(code, Is.EqualTo(1));
            Assert.That(stdout, Is.Empty);
            Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1), stderr);
            Assert.That(stderr, Does.Contain(file).And.Contain("offset").And.Contain(mention));
            Assert.That(stderr, Does.Not.Contain("   at "));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void CorruptModel_OneLine_NamesFileAndOffset()
    {
        var dir = TestData.TempDir();
        try
        {
            var bytes = File.ReadAllBytes(TestData.Stories260K);
            string truncated = Path.Combine(dir, "truncated.gguf");
            File.WriteAllBytes(truncated, bytes[..5000]);
            string badMagic = Path.Combine(dir, "magic.gguf");
            var copy = (byte[])bytes.Clone();
            copy[0] = (byte)'X';
            File.WriteAllBytes(badMagic, copy);
            foreach (var (file, what) in new[] { (truncated, "offset"), (badMagic, "magic") })
            {
                var (code, _, stderr) = Run("generate", "--model", file, "--prompt", "x");
                Assert.That(code, Is.EqualTo(1));
                Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1), stderr);
                Assert.That(stderr, Does.Contain(file).And.Contain(what));
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
