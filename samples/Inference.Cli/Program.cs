using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Inference.Chat;
using Inference.CommandLine;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Quantization;
using Inference.Sampling;

namespace Inference.Cli;

/// <summary>
/// The command-line front end. Other tools drive it, so its output is kept exact: generated text alone on stdout,
/// metrics on stderr, and on any error one line on stderr and exit code 1.
/// </summary>
public static class Program
{
    public static async Task<int> Main(string[] args)
    {
        // The engine's options (--model, --device, --threads, --max-model-len, --kv-cache-dtype, ...) as the server has them.
        var engineOptions = new EngineCommandLine();
        engineOptions.Model.Description = "Path of a GGUF model or a Hugging Face checkpoint folder (default: ../shared/testdata/stories260K.gguf from the repository root)";
        var promptOption = new Option<string>("--prompt", "-p") { Description = "Prompt text", Required = true };
        var maxTokensOption = new Option<int>("--max-tokens", "-n") { Description = "Most tokens to generate", DefaultValueFactory = _ => 256 };
        var temperatureOption = new Option<float>("--temperature") { Description = "Sampling temperature; 0 is greedy", DefaultValueFactory = _ => 0.8f };
        var topKOption = new Option<int>("--top-k") { Description = "Top-k (0 keeps all)", DefaultValueFactory = _ => 40 };
        var topPOption = new Option<float>("--top-p") { Description = "Top-p nucleus mass", DefaultValueFactory = _ => 0.95f };
        var minPOption = new Option<float>("--min-p") { Description = "Min-p relative threshold", DefaultValueFactory = _ => 0.05f };
        var repeatOption = new Option<float>("--repeat-penalty") { Description = "Repetition penalty over the last --repeat-last-n tokens, prompt included (1 disables)", DefaultValueFactory = _ => 1f };
        var repeatLastNOption = new Option<int>("--repeat-last-n") { Description = "Tokens the repetition penalty looks at (0 disables it)", DefaultValueFactory = _ => 64 };
        var frequencyOption = new Option<float>("--frequency-penalty") { Description = "Subtracted once per occurrence among the generated tokens", DefaultValueFactory = _ => 0f };
        var presenceOption = new Option<float>("--presence-penalty") { Description = "Subtracted from tokens present among the generated tokens", DefaultValueFactory = _ => 0f };
        var seedOption = new Option<ulong?>("--seed", "-s") { Description = "Sampling seed" };
        var stopOption = new Option<string[]>("--stop") { Description = "Stop string (repeatable)", AllowMultipleArgumentsPerToken = false };
        var textOption = new Option<string>("--text") { Description = "Text to tokenize", Required = true };
        var jsonSchemaOption = new Option<FileInfo?>("--json-schema") { Description = "Constrain the output to JSON valid against this JSON Schema file" };
        var grammarOption = new Option<FileInfo?>("--grammar") { Description = "Constrain the output to this GBNF grammar file (llama.cpp's format)" };

        var generate = new Command("generate", "Generate a continuation of a prompt")
        {
            promptOption, maxTokensOption, temperatureOption, topKOption, topPOption, minPOption, repeatOption, repeatLastNOption, frequencyOption, presenceOption,
            seedOption, stopOption, jsonSchemaOption, grammarOption,
        };
        engineOptions.AddTo(generate);
        SamplingOptions Sampling(ParseResult result) => new()
        {
            MaxTokens = result.GetValue(maxTokensOption),
            Temperature = result.GetValue(temperatureOption),
            TopK = result.GetValue(topKOption),
            TopP = result.GetValue(topPOption),
            MinP = result.GetValue(minPOption),
            RepetitionPenalty = result.GetValue(repeatOption),
            PenaltyLastN = result.GetValue(repeatLastNOption),
            FrequencyPenalty = result.GetValue(frequencyOption),
            PresencePenalty = result.GetValue(presenceOption),
            Seed = result.GetValue(seedOption),
            StopStrings = result.GetValue(stopOption) ?? [],
            Constraint = OutputConstraint(result.GetValue(jsonSchemaOption), result.GetValue(grammarOption)),
        };

        // NOTE: generate streams tokens as they come; the completion's metrics are printed at the end.
        generate.SetAction(async (result, ct) => await Generate(result, ct));

        async Task<int> Generate(ParseResult result, CancellationToken ct)
        {
            var sampling = Sampling(result);
            await using var engine = await Load(result, engineOptions, ct);
            var stream = engine.GenerateAsync(result.GetValue(promptOption)!, sampling, ct);
            await foreach (var token in stream)
            {
                Console.Out.Write(token.Text);
                Console.Out.Flush();
            }
            var completion = await stream.Completion;
            Console.Out.WriteLine();
            var m = completion.Metrics;
            string speculation = m.Speculation is { } spec
                ? string.Create(CultureInfo.InvariantCulture, $"; speculative acceptance {spec.AcceptanceRate:F2}, {spec.MeanAcceptedTokens:F2} accepted tokens per step")
                : "";
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"prompt {m.PromptTokens} tokens, generated {m.GeneratedTokens} tokens ({completion.FinishReason}); TTFT {m.TimeToFirstToken.TotalMilliseconds:F2} ms, TPOT {m.TimePerOutputToken.TotalMilliseconds:F2} ms, {m.TokensPerSecond:F1} tokens/s, seed {completion.Seed}; {engine.DeviceName}{speculation}"));
            return 0;
        }

        var logits = new Command("logits", "Print the prompt's token ids and the logits at its last position as one JSON line")
        {
            promptOption,
        };
        engineOptions.AddTo(logits);
        logits.SetAction(async (result, ct) =>
        {
            await using var engine = await Load(result, engineOptions, ct);
            var tokens = engine.Tokenize(result.GetValue(promptOption)!);
            var values = await engine.GetLogitsAsync(tokens, ct);
            using var stream = Console.OpenStandardOutput();
            using (var json = new Utf8JsonWriter(stream))
            {
                json.WriteStartObject();
                json.WriteStartArray("tokens");
                foreach (var t in tokens) json.WriteNumberValue(t);
                json.WriteEndArray();
                json.WriteStartArray("logits");
                foreach (var v in values) json.WriteNumberValue(v);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            stream.Write("\n"u8);
            return 0;
        });

        var tokenize = new Command("tokenize", "Print the token ids of a text, comma separated (BOS as the model says)")
        {
            engineOptions.Model, textOption,
        };
        // NOTE: only the tokenizer is read, so vocab-only GGUF files (no tensors) work, as with llama.cpp's llama-tokenize.
        tokenize.SetAction(result =>
        {
            string path = result.GetValue(engineOptions.Model) ?? DefaultModelPath();
            Console.Out.WriteLine(string.Join(",", OpenTokenizer(path).Encode(result.GetValue(textOption)!, addSpecial: true)));
            return 0;
        });

        var memoryOption = new Option<double>("--memory-gb") { Description = "KV cache memory budget to report capacity for", DefaultValueFactory = _ => 4 };
        var info = new Command("info", "Print the model's architecture, size, KV cache cost and the device it runs on") { memoryOption };
        engineOptions.AddTo(info);
        info.SetAction(async (result, ct) =>
        {
            await using var engine = await Load(result, engineOptions, ct, new EngineOptions { Threads = 1 });
            var c = engine.Config;
            double budget = result.GetValue(memoryOption) * (1L << 30);
            Console.Out.WriteLine($"model            {engine.ModelName}");
            Console.Out.WriteLine($"architecture     {c.Architecture}: {c.LayerCount} layers, dim {c.Dim}, {c.HeadCount} heads, {c.KvHeadCount} KV heads ({AttentionKind(c)}), head dim {c.HeadDim}, ffn {c.FfnDim}, vocab {c.VocabSize}");
            Console.Out.WriteLine($"rope             {c.RopeLayout}, base {c.RopeBase}, {c.RopeDim} dims, scaling {c.RopeScaling}");
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"parameters       {engine.ParameterCount:N0} ({engine.ParameterCount / 1e6:F2} M)"));
            Console.Out.WriteLine($"context          {c.ContextLength} trained, {engine.ContextLength} used");
            var kvType = engine.Options.KvCache.DataType;
            string row = KvBlockFormat.IsBlockFormat(kvType)
                ? $"{c.HeadDim} / {KvBlockFormat.BlockValues} blocks · {KvBlockFormat.BlockBytes} bytes"
                : $"{c.HeadDim} · {KvBlockFormat.ByteCount(kvType, 1)} bytes";
            Console.Out.WriteLine($"KV per token     {engine.KvBytesPerToken:N0} bytes (2 · {c.LayerCount} layers · {c.KvHeadCount} KV heads · {row}, {KvBlockFormat.Name(kvType)})");
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"KV capacity      {(long)(budget / engine.KvBytesPerToken):N0} tokens in {result.GetValue(memoryOption):G} GiB"));
            // NOTE: the pool this engine sized: --gpu-memory-utilization × total − weights − activations, capped at what
            // max-num-seqs full contexts can use (twice over, for cached prefixes).
            var plan = engine.KvMemory;
            Console.Out.WriteLine($"KV pool          {plan.Formula()}; capped at {KvMemoryPlan.Gib(plan.CapBytes)} (2 · {engine.Options.MaxNumSeqs} max-num-seqs · {engine.ContextLength} tokens) → {KvMemoryPlan.Gib(plan.PoolBytes)}");
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"KV pool fits     {plan.BlockCount:N0} blocks × {plan.BlockSize} tokens = {plan.TokenCapacity:N0} tokens: {plan.SequencesOf(engine.ContextLength):N0} sequences of {engine.ContextLength} tokens ({engine.Options.MaxNumSeqs} run at once at most)"));
            Console.Out.WriteLine($"chat template    {(engine.ChatTemplate is null ? "none" : "yes")}");
            Console.Out.WriteLine($"device           {engine.DeviceName}");
            return 0;
        });

        var systemOption = new Option<string?>("--system") { Description = "System message" };
        var chat = new Command("chat", "Chat interactively (one line per turn; an empty line or end of input quits)")
        {
            systemOption, maxTokensOption, temperatureOption, topKOption, topPOption, minPOption, repeatOption, repeatLastNOption, frequencyOption, presenceOption, seedOption,
            jsonSchemaOption, grammarOption,
        };
        engineOptions.AddTo(chat);
        chat.SetAction(async (result, ct) =>
        {
            var sampling = Sampling(result);
            await using var engine = await Load(result, engineOptions, ct);
            // NOTE: a model without a chat template gets a plain "role: text" transcript, so base models can be tried too.
            var prompt = engine.ChatTemplate is null ? new ChatPromptOptions { Template = ChatTemplate.Parse(PlainTranscript) } : null;
            var history = new List<ChatMessage>();
            if (result.GetValue(systemOption) is { Length: > 0 } system) history.Add(ChatMessage.System(system));
            while (!ct.IsCancellationRequested)
            {
                if (!Console.IsInputRedirected) Console.Error.Write("> ");
                var line = Console.In.ReadLine();
                if (string.IsNullOrWhiteSpace(line)) break;
                history.Add(ChatMessage.User(line));
                var stream = engine.ChatAsync(history, sampling, prompt, ct);
                var reply = new System.Text.StringBuilder();
                await foreach (var token in stream)
                {
                    reply.Append(token.Text);
                    Console.Out.Write(token.Text);
                    Console.Out.Flush();
                }
                Console.Out.WriteLine();
                var done = await stream.Completion;
                history.Add(ChatMessage.Assistant(reply.ToString().Trim()));
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"[{done.Metrics.GeneratedTokens} tokens, TTFT {done.Metrics.TimeToFirstToken.TotalMilliseconds:F0} ms, {done.Metrics.TokensPerSecond:F1} tokens/s, {done.Metrics.PrefixHitTokens} prompt tokens from the prefix cache]"));
            }
            return 0;
        });

        var outOption = new Option<string>("--out", "-o") { Description = "The GGUF file to write", Required = true };
        var typeOption = new Option<string>("--type")
        {
            Description = "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K_S, Q4_K_M (Q4_K), Q5_K_S, Q5_K_M (Q5_K) or Q6_K: llama-quantize's recipes, byte for byte",
            Required = true,
        };
        var quantize = new Command("quantize", "Quantize an F32/F16/BF16 model (GGUF file or Hugging Face folder) into a GGUF file")
        {
            engineOptions.Model, outOption, typeOption,
        };
        quantize.SetAction(async (result, ct) =>
        {
            var preset = QuantizationPresets.Parse(result.GetValue(typeOption)!);
            string input = result.GetValue(engineOptions.Model) ?? DefaultModelPath(), output = result.GetValue(outOption)!;
            var started = System.Diagnostics.Stopwatch.StartNew();
            var plan = await ModelQuantizer.QuantizeAsync(input, output, preset, ProgressBar("quantizing"), ct);
            var counts = plan.GroupBy(t => t.TargetType).OrderBy(g => g.Key).Select(g => $"{g.Count()} {g.Key}");
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{output}: {preset}, {plan.Count} tensors ({string.Join(", ", counts)}), {new FileInfo(output).Length / 1048576.0:F1} MiB in {started.Elapsed.TotalSeconds:F1} s"));
            return 0;
        });


        var beamWidthOption = new Option<int>("--beam-width") { Description = "Beams kept at each step and printed", DefaultValueFactory = _ => 4 };
        var lengthPenaltyOption = new Option<float>("--length-penalty") { Description = "Beams rank by cumulative log-probability / length^penalty", DefaultValueFactory = _ => 1f };
        var beam = new Command("beam", "Beam search: print the best beams, one per line, with their cumulative log-probability and score")
        {
            promptOption, maxTokensOption, beamWidthOption, lengthPenaltyOption,
        };
        engineOptions.AddTo(beam);
        beam.SetAction(async (result, ct) =>
        {
            var options = new Inference.Search.BeamSearchOptions
            {
                BeamWidth = result.GetValue(beamWidthOption),
                MaxTokens = result.GetValue(maxTokensOption),
                LengthPenalty = result.GetValue(lengthPenaltyOption),
            };
            await using var engine = await Load(result, engineOptions, ct);
            var found = await engine.BeamSearchAsync(result.GetValue(promptOption)!, options, ct);
            foreach (var b in found.Beams)
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{b.CumulativeLogprob:F4}\t{b.Score:F4}\t{JsonSerializer.Serialize(b.Text)}"));
            Console.Error.WriteLine($"peak KV blocks in use {found.PeakUsedBlockCount}; {engine.DeviceName}");
            return 0;
        });

        var root = new RootCommand("Inference: run GGUF language models in pure .NET") { generate, logits, tokenize, info, chat, quantize, beam };
        try
        {
            var parsed = root.Parse(args);
            if (parsed.Errors.Count > 0)
            {
                // The most specific error first: an unknown word says more than "command missing".
                var error = parsed.Errors.FirstOrDefault(e => e.Message.Contains("Unrecognized", StringComparison.Ordinal)) ?? parsed.Errors[0];
                Console.Error.WriteLine("error: " + OneLine(error.Message));
                return 1;
            }
            return await parsed.InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e)
        {
            Console.Error.WriteLine("error: " + OneLine(Describe(e)));
            return 1;
        }
    }

    /// <summary>The constraint of --json-schema or --grammar (not both); null without either.</summary>
    private static Inference.Constraints.Constraint? OutputConstraint(FileInfo? jsonSchema, FileInfo? grammar)
    {
        if (jsonSchema is not null && grammar is not null) throw new ArgumentException("--json-schema and --grammar cannot be combined");
        if (jsonSchema is not null) return new Inference.Constraints.JsonSchemaConstraint(File.ReadAllText(jsonSchema.FullName));
        if (grammar is not null) return new Inference.Constraints.GrammarConstraint(File.ReadAllText(grammar.FullName));
        return null;
    }

    private const string PlainTranscript =
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

    private static string AttentionKind(Inference.Models.ModelConfig c) =>
        c.KvHeadCount == c.HeadCount ? "MHA" : c.KvHeadCount == 1 ? "MQA" : "GQA";

    private static async Task<InferenceEngine> Load(ParseResult result, EngineCommandLine engineOptions, CancellationToken ct, EngineOptions? defaults = null)
    {
        string path = result.GetValue(engineOptions.Model) ?? DefaultModelPath();
        var options = engineOptions.ToEngineOptions(result, defaults);
        var engine = await InferenceEngine.LoadAsync(path, options, ProgressBar("loading"), ct);
        if (engine.ModelNotice is { } notice) Console.Error.WriteLine($"note: {notice}");
        return engine;
    }

    /// <summary>A progress bar on an interactive terminal only: redirected stderr stays one line per message.</summary>
    private static IProgress<float>? ProgressBar(string label) => Console.IsErrorRedirected ? null : new Progress<float>(p =>
    {
        int filled = (int)(p * 30);
        Console.Error.Write($"\r{label} [{new string('#', filled)}{new string('.', 30 - filled)}] {p:P0}");
        if (p >= 1) Console.Error.Write("\r" + new string(' ', 50) + "\r");
    });

    /// <summary>The tokenizer of a GGUF file (weights not needed) or of a checkpoint folder.</summary>
    private static Inference.Tokenization.ModelTokenizer OpenTokenizer(string path)
    {
        if (Directory.Exists(path))
        {
            using var checkpoint = HfCheckpoint.Open(path);
            return checkpoint.CreateTokenizer();
        }
        using var gguf = GgufFile.Open(path);
        return Inference.Tokenization.ModelTokenizer.FromGguf(gguf);
    }

    /// <summary>../shared/testdata/stories260K.gguf relative to the repository root (found above the working directory or the program).</summary>
    private static string DefaultModelPath() => RepositoryPaths.TestData("stories260K.gguf");

    private static string Describe(Exception e) => e switch
    {
        FileNotFoundException f => $"{f.FileName ?? f.Message}: file not found",
        AggregateException { InnerException: not null } a => Describe(a.InnerException!),
        _ => e.Message,
    };

    private static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();
}
