using Inference.Loading;
using SharpFuzz;

// Fuzz harness for untrusted input: GGUF headers, chat templates, tokenizers (text and GGUF vocabularies), the
// server's request JSON and the constraints (regex, GBNF, JSON schema) a request may carry.
//   Inference.Fuzz [--target T]                     run target T under afl-fuzz (gguf when omitted)
//   Inference.Fuzz [--target T] --replay DIR|FILE   run every file once outside the fuzzer and report contract breaks
//   Inference.Fuzz [--target T] --make-seeds TESTDATA OUTDIR   write T's seed corpus
// Targets: gguf, template, tokenizer, vocab, request, constraint.
// NOTE: every outcome other than success or the target's documented exception escapes the harness and counts as a crash.

string target = "gguf";
if (args.Length >= 2 && args[0] == "--target")
{
    target = args[1];
    args = args[2..];
}
Action<byte[]> one = target switch
{
    "gguf" => Harness.ParseOne,
    "template" => Targets.Template,
    "tokenizer" => Targets.Tokenize,
    "vocab" => Targets.Vocabulary,
    "request" => Targets.Request,
    "constraint" => Targets.Constraint,
    _ => throw new ArgumentException($"unknown target '{target}' (gguf, template, tokenizer, vocab, request, constraint)"),
};
if (args.Length >= 2 && args[0] == "--make-seeds")
{
    if (target == "gguf") Seeds.Make(args[1], args[2]);
    else Targets.MakeSeeds(target, args[1], args[2]);
    return 0;
}
if (args.Length >= 2 && args[^2] == "--replay")
{
    return Harness.Replay(args[^1], one);
}

Action<Stream> run = stream =>
{
    using var ms = new MemoryStream();
    stream.CopyTo(ms);
    one(ms.ToArray());
};
// NOTE: out of process by default: the fork server runs the inputs in a child process and starts a new one when it
// dies, so an input that overflows the stack or runs past afl-fuzz's timeout is saved as a crash or a hang. In process
// (SharpFuzz's plain fork server, which reports its own process as the child) such an input ends the whole campaign
// with "unable to communicate with fork server" and is lost.
if (Environment.GetEnvironmentVariable("INFERENCE_FUZZ_IN_PROCESS") == "1") Fuzzer.Run(run);
else Fuzzer.OutOfProcess.Run(run);
return 0;

internal static class Harness
{
    private const string Name = "fuzz-input.gguf";

    // Set to make every input "crash": proves that the afl-fuzz + SharpFuzz pipeline reports escaping exceptions.
    private static readonly bool SelfTest = Environment.GetEnvironmentVariable("INFERENCE_FUZZ_SELFTEST") == "1";

    public static void ParseOne(byte[] bytes)
    {
        if (SelfTest) throw new InvalidOperationException("fuzz self-test crash");
        long before = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            using var file = GgufFile.OpenBuffer(bytes, Name);
            // Touch what a loader reads right after opening, so lazily wrong values surface here too.
            foreach (var t in file.Tensors) _ = t.ElementCount + t.RowCount;
            foreach (var key in file.MetadataKeys) _ = file.Metadata[key].ToString();
        }
        catch (ModelFormatException e)
        {
            // The error contract: one line, naming the input and an offset inside it.
            if (e.Message.Contains('\n') || e.Message.Contains('\r') || e.Message.Length > 400)
                throw new InvalidOperationException("malformed error message: " + e.Message);
            if (!e.Message.StartsWith(Name + ": at offset ", StringComparison.Ordinal) || e.Offset < 0 || e.Offset > bytes.Length)
                throw new InvalidOperationException("error without a valid offset: " + e.Message);
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        if (allocated > 256 * 1024 + 16L * bytes.Length)
            throw new InvalidOperationException($"allocated {allocated} bytes for a {bytes.Length}-byte input");
    }

    /// <summary>
    /// Runs every file once, uninstrumented, and reports each contract break and the slowest input. With
    /// INFERENCE_FUZZ_VERBOSE=1 each file's name is printed before it runs, so that an input that ends the process
    /// (a stack overflow) is named.
    /// </summary>
    public static int Replay(string path, Action<byte[]> one)
    {
        bool verbose = Environment.GetEnvironmentVariable("INFERENCE_FUZZ_VERBOSE") == "1";
        var files = Directory.Exists(path) ? Directory.GetFiles(path, "*", SearchOption.TopDirectoryOnly) : [path];
        Array.Sort(files, StringComparer.Ordinal);
        int failures = 0;
        string slowest = "";
        var slowestTime = TimeSpan.Zero;
        var total = System.Diagnostics.Stopwatch.StartNew();
        foreach (var f in files)
        {
            if (verbose) Console.WriteLine($"{f} ...");
            var started = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                one(File.ReadAllBytes(f));
            }
            catch (Exception e)
            {
                failures++;
                Console.WriteLine($"{f}: {e.GetType().Name}: {e.Message}");
            }
            if (started.Elapsed > slowestTime) (slowest, slowestTime) = (f, started.Elapsed);
        }
        Console.WriteLine($"{files.Length} inputs replayed in {total.Elapsed.TotalSeconds:0.0} s, {failures} failure(s); slowest {slowestTime.TotalMilliseconds:0} ms ({Path.GetFileName(slowest)})");
        return failures == 0 ? 0 : 1;
    }
}

internal static class Seeds
{
    /// <summary>Writes small seeds: real headers (truncated) from the test data plus small valid files from GgufWriter.</summary>
    public static void Make(string testData, string outDir)
    {
        Directory.CreateDirectory(outDir);
        // NOTE: the header of stories260K is 14 KB; vocab-only files are hundreds of KB of token strings, so only their
        // first 4 KB go in (AFL works best with small inputs, and the prefix still holds every structure of the format).
        Copy(Path.Combine(testData, "stories260K.gguf"), Path.Combine(outDir, "stories260K-header.gguf"), 14176);
        Copy(Path.Combine(testData, "llama-2-tiny-random", "llama-2-tiny-random.gguf"), Path.Combine(outDir, "tiny-random-prefix.gguf"), 4096);
        foreach (var v in new[] { "llama-spm", "gpt-2", "phi-3", "deepseek-llm" })
            Copy(Path.Combine(testData, "vocab", $"ggml-vocab-{v}.gguf"), Path.Combine(outDir, $"vocab-{v}-prefix.gguf"), 4096);

        WriteSmall(Path.Combine(outDir, "small-all-types.gguf"), 32, allTypes: true);
        WriteSmall(Path.Combine(outDir, "small-align64.gguf"), 64, allTypes: false);
    }

    private static void Copy(string src, string dst, int maxBytes)
    {
        using var s = File.OpenRead(src);
        var buf = new byte[Math.Min(maxBytes, s.Length)];
        s.ReadExactly(buf);
        File.WriteAllBytes(dst, buf);
    }

    private static void WriteSmall(string path, uint alignment, bool allTypes)
    {
        using var w = GgufWriter.Create(path, new GgufWriterOptions { Alignment = alignment });
        w.AddString("general.architecture", "llama");
        w.AddUInt32("llama.block_count", 1);
        if (allTypes)
        {
            w.AddUInt8("u8", 1); w.AddInt8("i8", -1); w.AddUInt16("u16", 2); w.AddInt16("i16", -2);
            w.AddInt32("i32", -3); w.AddUInt64("u64", 4); w.AddInt64("i64", -4); w.AddFloat32("f32", 0.5f);
            w.AddFloat64("f64", 0.25); w.AddBool("b", true);
            w.AddStringArray("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "a"]);
            w.AddArray<float>("tokenizer.ggml.scores", [0f, 0f, 0f, -1f]);
            w.AddArray<int>("tokenizer.ggml.token_type", [2, 3, 3, 1]);
        }
        var rng = new Random(1);
        var tensors = new (string Name, long[] Dims, GgmlType Type)[]
        {
            ("token_embd.weight", [32, 4], GgmlType.F16),
            ("output_norm.weight", [32], GgmlType.F32),
            ("output.weight", [32, 4], GgmlType.Q8_0),
        };
        var sizes = new long[tensors.Length];
        for (int i = 0; i < tensors.Length; i++) sizes[i] = w.AddTensorInfo(tensors[i].Name, tensors[i].Dims, tensors[i].Type);
        w.WriteHeader();
        for (int i = 0; i < tensors.Length; i++)
        {
            var data = new byte[sizes[i]];
            rng.NextBytes(data);
            w.WriteTensorData(tensors[i].Name, data);
        }
        w.Complete();
    }
}
