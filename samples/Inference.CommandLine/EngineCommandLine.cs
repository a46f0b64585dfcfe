using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Text.Json;
using Inference.Engine;
using Inference.KvCache;
using Inference.Quantization;
using Inference.Speculative;

namespace Inference.CommandLine;

/// <summary>
/// The engine's command-line options, shared by the CLI and the server so both accept the same names: vLLM's
/// (<c>--max-model-len</c>, <c>--kv-cache-dtype</c>, <c>--block-size</c>, ...) with the older names kept as aliases
/// (<c>--ctx-size</c>). Each front end creates one instance, adds <see cref="All"/> to its commands and turns a parse
/// result into <see cref="EngineOptions"/> with <see cref="ToEngineOptions"/>.
/// </summary>
/// <remarks>
/// A new engine setting gets its option here (one property, one line in <see cref="All"/>, one line in
/// <see cref="ToEngineOptions"/>). Values are only parsed here; their ranges are checked by <see cref="EngineOptions"/>
/// and <see cref="KvCacheOptions"/>, whose one-line messages name the setting.
/// </remarks>
public sealed class EngineCommandLine
{
    /// <summary><c>--model</c>, <c>-m</c>: a GGUF file or a Hugging Face checkpoint folder.</summary>
    public Option<string?> Model { get; } = new("--model", "-m") { Description = "Path of a GGUF model or a Hugging Face checkpoint folder" };

    /// <summary><c>--device</c>: auto, cpu or cuda.</summary>
    public Option<Device> Device { get; } = new("--device") { Description = "auto (a CUDA GPU when usable, else the CPU), cpu or cuda", DefaultValueFactory = _ => Engine.Device.Auto };

    /// <summary><c>--threads</c>, <c>-t</c>: CPU threads.</summary>
    public Option<int?> Threads { get; } = new("--threads", "-t") { Description = "CPU threads (default: all cores)" };

    /// <summary><c>--max-model-len</c> (alias <c>--ctx-size</c>, <c>-c</c>): most tokens of one sequence.</summary>
    public Option<int?> MaxModelLen { get; } = new("--max-model-len", "--ctx-size", "-c") { Description = "Most tokens (prompt and output) of one sequence (default: the model's context, at most 4096)" };

    /// <summary><c>--max-num-seqs</c>: most sequences in one forward pass.</summary>
    public Option<int?> MaxNumSeqs { get; } = new("--max-num-seqs") { Description = "Most sequences in one forward pass" };

    /// <summary><c>--max-num-batched-tokens</c>: most tokens in one forward pass.</summary>
    public Option<int?> MaxNumBatchedTokens { get; } = new("--max-num-batched-tokens") { Description = "Most tokens in one forward pass; longer prompts are chunked" };

    /// <summary><c>--block-size</c>: tokens per KV cache block.</summary>
    public Option<int?> BlockSize { get; } = new("--block-size") { Description = "Tokens per KV cache block" };

    /// <summary><c>--kv-cache-dtype</c>: the element type of stored keys and values.</summary>
    public Option<KvCacheDataType?> KvCacheDtype { get; } = new("--kv-cache-dtype")
    {
        Description = "Element type of the KV cache: auto (f16), f32, f16, q8_0 (ggml blocks) or fp8 (E4M3 with a scale per 32 values)",
        HelpName = "auto|f32|f16|q8_0|fp8",
        CustomParser = ParseKvCacheDataType,
    };

    /// <summary><c>--enable-prefix-caching</c>: share KV blocks between requests with equal prefixes (the default).</summary>
    public Option<bool> EnablePrefixCaching { get; } = new("--enable-prefix-caching") { Description = "Reuse the KV blocks of equal prompt prefixes (default)" };

    /// <summary><c>--no-enable-prefix-caching</c>: compute every prompt in full.</summary>
    public Option<bool> NoEnablePrefixCaching { get; } = new("--no-enable-prefix-caching") { Description = "Compute every prompt in full" };

    /// <summary><c>--gpu-memory-utilization</c>: fraction (0, 1] of memory the KV cache pool may take.</summary>
    public Option<double?> GpuMemoryUtilization { get; } = new("--gpu-memory-utilization") { Description = "Fraction (0, 1] of memory the KV cache may use" };

    /// <summary><c>--quantization</c>, <c>-q</c>: quantize float weights while loading (vLLM's name).</summary>
    public Option<QuantizationPreset?> Quantization { get; } = new("--quantization", "-q")
    {
        Description = "Quantize F32/F16/BF16 weights while loading, as llama-quantize's recipe of that name: q8_0, q4_0, q4_k_m, q5_k_m or q6_k",
        HelpName = "q8_0|q4_0|q4_k_m|q5_k_m|q6_k",
        CustomParser = ParseQuantization,
    };

    /// <summary><c>--tensor-parallel-size</c>: ranks that split each layer (attention heads, KV cache, feed-forward width).</summary>
    public Option<int?> TensorParallelSize { get; } = new("--tensor-parallel-size", "-tp") { Description = "Ranks that split each layer of the model (CPU ranks: threads / size threads each)" };

    /// <summary><c>--pipeline-parallel-size</c>: stages that split the model's layers.</summary>
    public Option<int?> PipelineParallelSize { get; } = new("--pipeline-parallel-size", "-pp") { Description = "Stages that split the model's layers, each holding its layers' KV cache; batches flow through them in micro-batches (combines with --tensor-parallel-size)" };

    /// <summary><c>--context-parallel-size</c>: ranks that split each step's tokens (ring attention).</summary>
    public Option<int?> ContextParallelSize { get; } = new("--context-parallel-size", "-cp") { Description = "Ranks that split a long prompt's tokens (ring attention: K/V passed round the ranks, partial attention merged by log-sum-exp); each holds a copy of the KV cache, so decode goes on as usual (combines with --tensor-parallel-size)" };

    /// <summary><c>--enable-expert-parallel</c>: spread mixture-of-experts blocks' experts over the tensor-parallel ranks.</summary>
    public Option<bool> EnableExpertParallel { get; } = new("--enable-expert-parallel") { Description = "Spread each mixture-of-experts block's experts over the --tensor-parallel-size ranks (one all-reduce combines them)" };

    /// <summary><c>--max-waiting-requests</c>: most requests waiting to start before new ones are refused.</summary>
    public Option<int?> MaxWaitingRequests { get; } = new("--max-waiting-requests") { Description = "Most requests waiting to start; more are refused (the server answers 429) (default 1024)" };

    /// <summary><c>--draft-model</c>: speculative decoding with a draft model of the same vocabulary.</summary>
    public Option<string?> DraftModel { get; } = new("--draft-model") { Description = "Speculative decoding: a smaller or quantized model with the same vocabulary proposes tokens (GGUF or Hugging Face folder)" };

    /// <summary><c>--ngram-speculation</c>: speculative decoding with prompt lookup (no second model).</summary>
    public Option<bool> NgramSpeculation { get; } = new("--ngram-speculation") { Description = "Speculative decoding by prompt lookup: the tokens that followed the latest earlier occurrence of the last n-gram are proposed" };

    /// <summary><c>--num-speculative-tokens</c>: tokens proposed per step.</summary>
    public Option<int?> NumSpeculativeTokens { get; } = new("--num-speculative-tokens") { Description = "Tokens proposed per request and step with --draft-model or --ngram-speculation (default 4)" };

    /// <summary><c>--draft-stop-margin</c>: the draft stops proposing after a near tie of its two likeliest tokens.</summary>
    public Option<float?> DraftStopMargin { get; } = new("--draft-stop-margin") { Description = "With --draft-model: no further proposal after a token whose logit exceeds the draft's runner-up by less than this many nats (default 0: off)" };

    /// <summary><c>--prompt-lookup-min</c>: shortest n-gram matched by prompt lookup.</summary>
    public Option<int?> PromptLookupMin { get; } = new("--prompt-lookup-min") { Description = "Shortest n-gram --ngram-speculation matches (default 1)" };

    /// <summary><c>--prompt-lookup-max</c>: longest n-gram matched by prompt lookup.</summary>
    public Option<int?> PromptLookupMax { get; } = new("--prompt-lookup-max") { Description = "Longest n-gram --ngram-speculation matches first (default 3)" };

    /// <summary>
    /// <c>--speculative-config</c>: vLLM's JSON form of the speculative options, e.g.
    /// <c>{"model": "draft.gguf", "num_speculative_tokens": 4}</c> or
    /// <c>{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}</c>.
    /// </summary>
    public Option<SpeculativeOptions?> SpeculativeConfig { get; } = new("--speculative-config")
    {
        Description = "Speculative decoding as vLLM's JSON: {\"model\": PATH, \"num_speculative_tokens\": K} for a draft model, " +
                      "{\"method\": \"ngram\", \"num_speculative_tokens\": K, \"prompt_lookup_min\": N, \"prompt_lookup_max\": M} for prompt lookup",
        HelpName = "JSON",
        CustomParser = ParseSpeculativeConfig,
    };

    /// <summary><c>--kv-eviction</c>: generate past the context window by evicting KV (sinks or h2o).</summary>
    public Option<string?> KvEviction { get; } = new Option<string?>("--kv-eviction")
    {
        Description = "Generate past the context window with bounded KV: sinks (StreamingLLM: keep the first and the latest tokens) or h2o (also keep the most attended); positions are re-based",
        HelpName = "none|sinks|h2o",
    }.AcceptOnlyFromAmong("none", "sinks", "h2o");

    /// <summary><c>--kv-sink-tokens</c>: leading tokens never evicted.</summary>
    public Option<int?> KvSinkTokens { get; } = new("--kv-sink-tokens") { Description = "With --kv-eviction: leading tokens never evicted (default 4)" };

    /// <summary><c>--kv-recent-tokens</c>: latest tokens never evicted.</summary>
    public Option<int?> KvRecentTokens { get; } = new("--kv-recent-tokens") { Description = "With --kv-eviction: latest tokens never evicted (default: the context less the sinks, the heavy hitters and a block)" };

    /// <summary><c>--kv-heavy-hitter-tokens</c>: tokens kept for the attention they received (h2o).</summary>
    public Option<int?> KvHeavyHitterTokens { get; } = new("--kv-heavy-hitter-tokens") { Description = "With --kv-eviction h2o: tokens kept for the attention they received (default: a quarter of the context)" };

    /// <summary><c>--weight-hash-cache-dir</c>: where the per-tensor weight hashes of prefix files are cached.</summary>
    public Option<string?> WeightHashCacheDir { get; } = new("--weight-hash-cache-dir")
    {
        Description = "Folder for the cached per-tensor weight hashes that prefix files carry (default: the user's cache folder, inference/weight-hashes; the model's folder keeps them beside the model)",
        HelpName = "DIR",
        CustomParser = ParseWeightHashCacheDir,
    };

    /// <summary><c>--no-weight-hash-cache</c>: hash every weight on the first prefix save or load of each run.</summary>
    public Option<bool> NoWeightHashCache { get; } = new("--no-weight-hash-cache") { Description = "Cache no weight hashes: every run hashes the weights again on its first prefix save or load" };

    /// <summary>Every option above, in help order.</summary>
    public IReadOnlyList<Option> All =>
    [
        Model, Device, Threads, MaxModelLen, MaxNumSeqs, MaxNumBatchedTokens, MaxWaitingRequests, BlockSize, KvCacheDtype,
        EnablePrefixCaching, NoEnablePrefixCaching, GpuMemoryUtilization, KvEviction, KvSinkTokens, KvRecentTokens, KvHeavyHitterTokens,
        Quantization, TensorParallelSize, PipelineParallelSize, ContextParallelSize, EnableExpertParallel, DraftModel, NgramSpeculation, NumSpeculativeTokens, DraftStopMargin, PromptLookupMin, PromptLookupMax, SpeculativeConfig,
        WeightHashCacheDir, NoWeightHashCache,
    ];

    /// <summary>Adds every option to <paramref name="command"/> and rejects contradicting pairs.</summary>
    /// <param name="command">The command that takes engine options.</param>
    public void AddTo(Command command)
    {
        ArgumentNullException.ThrowIfNull(command);
        foreach (var option in All) command.Options.Add(option);
        command.Validators.Add(result =>
        {
            if (result.GetValue(EnablePrefixCaching) && result.GetValue(NoEnablePrefixCaching))
                result.AddError("--enable-prefix-caching and --no-enable-prefix-caching contradict each other");
            bool draft = result.GetValue(DraftModel) is not null, ngram = result.GetValue(NgramSpeculation);
            if (draft && ngram)
                result.AddError("--draft-model and --ngram-speculation contradict each other (one proposer at a time)");
            if (result.GetResult(SpeculativeConfig) is not null && (draft || ngram || result.GetValue(NumSpeculativeTokens) is not null
                || result.GetValue(PromptLookupMin) is not null || result.GetValue(PromptLookupMax) is not null))
                result.AddError("--speculative-config contradicts --draft-model, --ngram-speculation, --num-speculative-tokens and --prompt-lookup-min/max (give the settings in one form)");
            if (!draft && !ngram && result.GetValue(NumSpeculativeTokens) is not null)
                result.AddError("--num-speculative-tokens needs --draft-model PATH or --ngram-speculation");
            if (!draft && result.GetValue(DraftStopMargin) is not null)
                result.AddError("--draft-stop-margin needs --draft-model PATH");
            string? eviction = result.GetValue(KvEviction);
            bool evicting = eviction is "sinks" or "h2o";
            if (!evicting && (result.GetValue(KvSinkTokens) is not null || result.GetValue(KvRecentTokens) is not null || result.GetValue(KvHeavyHitterTokens) is not null))
                result.AddError("--kv-sink-tokens, --kv-recent-tokens and --kv-heavy-hitter-tokens need --kv-eviction sinks|h2o");
            if (eviction == "sinks" && result.GetValue(KvHeavyHitterTokens) is not null)
                result.AddError("--kv-heavy-hitter-tokens needs --kv-eviction h2o");
            if (!ngram && (result.GetValue(PromptLookupMin) is not null || result.GetValue(PromptLookupMax) is not null))
                result.AddError("--prompt-lookup-min and --prompt-lookup-max need --ngram-speculation");
            if (result.GetResult(WeightHashCacheDir) is not null && result.GetValue(NoWeightHashCache))
                result.AddError("--weight-hash-cache-dir and --no-weight-hash-cache contradict each other");
        });
    }

    /// <summary>The engine options a parse result asks for, over <paramref name="defaults"/>; options not given keep their value there.</summary>
    /// <param name="result">A parse result of a command this instance was added to.</param>
    /// <param name="defaults">The starting options; null for <see cref="EngineOptions"/>' defaults.</param>
    /// <exception cref="ArgumentException">A value is out of its range (the message names the setting).</exception>
    public EngineOptions ToEngineOptions(ParseResult result, EngineOptions? defaults = null)
    {
        ArgumentNullException.ThrowIfNull(result);
        var options = defaults ?? new EngineOptions();
        var kv = options.KvCache;
        options = options with { Device = result.GetValue(Device) };
        if (result.GetValue(Threads) is int threads) options = options with { Threads = threads };
        if (result.GetValue(MaxModelLen) is int length) options = options with { ContextLength = length };
        if (result.GetValue(MaxNumSeqs) is int seqs) options = options with { MaxNumSeqs = seqs };
        if (result.GetValue(MaxNumBatchedTokens) is int batched) options = options with { MaxNumBatchedTokens = batched };
        if (result.GetValue(MaxWaitingRequests) is int waiting) options = options with { MaxWaitingRequests = waiting };
        if (result.GetValue(TensorParallelSize) is int ranks) options = options with { TensorParallelSize = ranks };
        if (result.GetValue(PipelineParallelSize) is int stages) options = options with { PipelineParallelSize = stages };
        if (result.GetValue(ContextParallelSize) is int contextRanks) options = options with { ContextParallelSize = contextRanks };
        if (result.GetValue(EnableExpertParallel)) options = options with { EnableExpertParallel = true };
        if (result.GetValue(BlockSize) is int blockSize) kv = kv with { BlockSize = blockSize };
        if (result.GetValue(KvCacheDtype) is KvCacheDataType type) kv = kv with { DataType = type };
        if (result.GetValue(EnablePrefixCaching)) kv = kv with { PrefixCaching = PrefixCachingMode.Enabled };
        if (result.GetValue(NoEnablePrefixCaching)) kv = kv with { PrefixCaching = PrefixCachingMode.Disabled };
        if (result.GetValue(GpuMemoryUtilization) is double fraction) kv = kv with { MemoryFraction = fraction };
        if (result.GetValue(Quantization) is QuantizationPreset preset) options = options with { Quantization = preset };
        if (result.GetValue(WeightHashCacheDir) is string hashDir) options = options with { WeightHashCacheDirectory = hashDir };
        if (result.GetValue(NoWeightHashCache)) options = options with { WeightHashCacheDirectory = "" };
        if (result.GetValue(DraftModel) is not null || result.GetValue(NgramSpeculation))
        {
            var speculative = result.GetValue(DraftModel) is string path
                ? new SpeculativeOptions { Method = SpeculativeMethod.DraftModel, DraftModel = path }
                : new SpeculativeOptions { Method = SpeculativeMethod.NGram };
            if (result.GetValue(NumSpeculativeTokens) is int k) speculative = speculative with { NumSpeculativeTokens = k };
            if (result.GetValue(DraftStopMargin) is float margin) speculative = speculative with { DraftStopMargin = margin };
            if (result.GetValue(PromptLookupMin) is int min) speculative = speculative with { PromptLookupMin = min };
            if (result.GetValue(PromptLookupMax) is int max) speculative = speculative with { PromptLookupMax = max };
            speculative.Validate();
            options = options with { Speculative = speculative };
        }
        if (result.GetValue(SpeculativeConfig) is SpeculativeOptions config) options = options with { Speculative = config };
        if (result.GetValue(KvEviction) is "sinks" or "h2o")
        {
            var policy = result.GetValue(KvEviction) == "h2o" ? KvEvictionPolicy.HeavyHitters : KvEvictionPolicy.AttentionSinks;
            // NOTE: unset sizes fill the context: sinks + heavy hitters + recent + a block of slack = the context.
            int context = options.ContextLength ?? 4096, sinks = result.GetValue(KvSinkTokens) ?? 4;
            int heavy = policy == KvEvictionPolicy.HeavyHitters ? result.GetValue(KvHeavyHitterTokens) ?? context / 4 : 0;
            int recent = result.GetValue(KvRecentTokens) ?? Math.Max(1, context - sinks - heavy - kv.BlockSize);
            options = options with { KvEviction = new KvEvictionOptions { Policy = policy, SinkTokens = sinks, HeavyHitterTokens = heavy, RecentTokens = recent } };
        }
        return options with { KvCache = kv };
    }

    /// <summary>
    /// vLLM's <c>--speculative-config</c> JSON object: <c>method</c> (<c>ngram</c> or <c>draft_model</c>; a <c>model</c>
    /// without a method means <c>draft_model</c>), <c>model</c>, <c>num_speculative_tokens</c>, <c>prompt_lookup_min</c>,
    /// <c>prompt_lookup_max</c>. Other keys and other methods are refused by name.
    /// </summary>
    internal static SpeculativeOptions? ParseSpeculativeConfig(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
        try
        {
            var options = SpeculativeOptionsFromJson(text);
            options.Validate();
            return options;
        }
        catch (Exception e) when (e is JsonException or ArgumentException or FormatException or InvalidOperationException)
        {
            string reason = e is JsonException ? "is not a JSON object" : e.Message;
            result.AddError($"--speculative-config: {reason.ReplaceLineEndings(" ").Trim()}");
            return null;
        }
    }

    private static SpeculativeOptions SpeculativeOptionsFromJson(string text)
    {
        using var json = JsonDocument.Parse(text);
        if (json.RootElement.ValueKind != JsonValueKind.Object) throw new FormatException("is not a JSON object");
        string? method = null, model = null;
        int? k = null, min = null, max = null;
        foreach (var property in json.RootElement.EnumerateObject())
        {
            switch (property.Name)
            {
                case "method": method = String(property); break;
                case "model": model = String(property); break;
                case "num_speculative_tokens": k = Int(property); break;
                case "prompt_lookup_min": min = Int(property); break;
                case "prompt_lookup_max": max = Int(property); break;
                default:
                    throw new FormatException($"\"{property.Name}\" is not supported (method, model, num_speculative_tokens, prompt_lookup_min, prompt_lookup_max)");
            }
        }
        var kind = (method ?? (model is null ? null : "draft_model")) switch
        {
            "ngram" => SpeculativeMethod.NGram,
            "draft_model" => SpeculativeMethod.DraftModel,
            null => throw new FormatException("needs \"model\" (a draft model) or \"method\": \"ngram\""),
            _ => throw new FormatException($"method \"{method}\" is not supported (ngram or draft_model)"),
        };
        if (kind == SpeculativeMethod.NGram && model is not null)
            throw new FormatException("method \"ngram\" takes no \"model\"");
        if (kind == SpeculativeMethod.DraftModel && (min is not null || max is not null))
            throw new FormatException("prompt_lookup_min and prompt_lookup_max need method \"ngram\"");
        var options = new SpeculativeOptions { Method = kind, DraftModel = model };
        if (k is int tokens) options = options with { NumSpeculativeTokens = tokens };
        if (min is int lookupMin) options = options with { PromptLookupMin = lookupMin };
        if (max is int lookupMax) options = options with { PromptLookupMax = lookupMax };
        return options;

        static string String(JsonProperty p) => p.Value.ValueKind == JsonValueKind.String
            ? p.Value.GetString()!
            : throw new FormatException($"\"{p.Name}\" must be a string");
        static int Int(JsonProperty p) => p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out int v)
            ? v
            : throw new FormatException($"\"{p.Name}\" must be an integer");
    }

    /// <summary>A folder for <c>--weight-hash-cache-dir</c>: a usable path that is not a file ("" turns the cache off).</summary>
    private static string? ParseWeightHashCacheDir(ArgumentResult result)
    {
        if (result.Tokens.Count == 0)
        {
            result.AddError("--weight-hash-cache-dir needs a folder (\"\" for none)");
            return null;
        }
        string dir = result.Tokens[0].Value;
        if (EngineOptions.CheckWeightHashCacheDirectory(dir) is string problem) result.AddError($"--weight-hash-cache-dir: {problem}");
        else if (File.Exists(dir)) result.AddError($"--weight-hash-cache-dir '{dir}' is a file, not a folder");
        else return dir;
        return null;
    }

    /// <summary>Preset names accepted by <c>--quantization</c> (<see cref="QuantizationPresets.TryParse"/>).</summary>
    private static QuantizationPreset? ParseQuantization(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
        if (QuantizationPresets.TryParse(text, out var preset)) return preset;
        result.AddError($"--quantization '{text}' is not one of q8_0, q4_0, q4_k_m, q5_k_m, q6_k");
        return null;
    }

    /// <summary>Names accepted by <c>--kv-cache-dtype</c>: vLLM's and llama.cpp's (<c>-ctk</c>) spellings.</summary>
    private static KvCacheDataType? ParseKvCacheDataType(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
        switch (text.ToLowerInvariant())
        {
            case "auto" or "f16" or "fp16" or "float16" or "half": return KvCacheDataType.Float16;
            case "f32" or "fp32" or "float32" or "float": return KvCacheDataType.Float32;
            case "q8_0": return KvCacheDataType.Q8_0;
            case "fp8" or "fp8_e4m3": return KvCacheDataType.Fp8E4M3;
            default:
                result.AddError(string.Create(CultureInfo.InvariantCulture, $"--kv-cache-dtype '{text}' is not one of auto, f32, f16, q8_0, fp8, fp8_e4m3"));
                return null;
        }
    }
}
