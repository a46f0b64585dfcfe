using System.Threading.Channels;
using Inference.Loading;
using Inference.Models;
using Inference.Quantization;
using Inference.Sampling;
using Inference.Tokenization;

namespace Inference.Engine;

/// <summary>
/// Loads a model and generates text. Safe to call from many threads at once: every request goes to one engine loop
/// that batches all running requests into each forward pass (continuous batching).
/// </summary>
/// <example>
/// <code>
/// await using var engine = await InferenceEngine.LoadAsync("stories260K.gguf");
/// await foreach (var token in engine.GenerateAsync("Once upon a time", SamplingOptions.Greedy))
///     Console.Write(token.Text);
/// </code>
/// </example>
public sealed partial class InferenceEngine : ITextGenerator, IAsyncDisposable
{
    private readonly LoadedModel _files;     // the mapped file(s) the weights live in, tokenizer and chat template metadata
    private readonly GgufFile _metadata;     // tokenizer and chat template metadata (the model file, or built from tokenizer.json)
    private readonly string _modelName;
    private readonly EngineLoop _loop;
    private long _nextRequestId;
    private readonly HashSet<int> _stopTokens;  // end-of-generation ids beyond the tokenizer's own (HF generation_config)

    private InferenceEngine(LoadedModel files, LlamaModel model, EngineOptions options, IForwardExecutorFactory? executorFactory, string path)
    {
        _files = files;
        _metadata = files.Metadata;
        _modelName = files.Name;
        ParameterCount = model.ParameterCount;
        _stopTokens = [.. files.ExtraStopTokens];
        Config = files.Config;
        Tokenizer = files.Tokenizer;
        Options = options;
        ContextLength = options.ContextLength ?? LoadedModel.DefaultContextWindow(Config);
        // The files the weights come from key the cache of their hashes: the GGUF file, or the checkpoint's safetensors.
        string[] weightFiles = Directory.Exists(path) ? Directory.GetFiles(path, "*.safetensors") : [path];
        Array.Sort(weightFiles, StringComparer.Ordinal);
        var weightsCache = new WeightHashCache(model, WeightHashCache.PathFor(path, options.WeightHashCacheDirectory), weightFiles, options.Quantization?.ToString() ?? "stored");
        var identity = PrefixIdentity.Compute(model, Tokenizer, options.KvCache, weightsCache);
        WeightsCache = weightsCache;
        PrefixSalt = identity.Salt;
        options.Speculative?.Validate();
        var draft = options.Speculative is { Method: Speculative.SpeculativeMethod.DraftModel, DraftModel: { } draftPath }
            ? Speculative.DraftModel.Load(draftPath, ContextLength, Config, Tokenizer) : null;
        try
        {
            _loop = new EngineLoop(model, options, ContextLength, identity, executorFactory, draft);
        }
        catch
        {
            draft?.Dispose();
            throw;
        }
    }

    /// <summary>The model's hyperparameters.</summary>
    public ModelConfig Config { get; }

    /// <summary>The model's tokenizer.</summary>
    public ModelTokenizer Tokenizer { get; }

    /// <summary>The options the engine runs with.</summary>
    public EngineOptions Options { get; }

    /// <summary>Most tokens (prompt + output) of one sequence.</summary>
    public int ContextLength { get; }

    /// <summary>The hardware the model runs on: <see cref="Engine.Device.Cpu"/> or <see cref="Engine.Device.Cuda"/> (never Auto).</summary>
    public Device Device => _loop.Device;

    /// <summary>Names that hardware, e.g. "CPU, 4 threads" or "CUDA: NVIDIA H100 80GB HBM3 (sm_90), PTX attention".</summary>
    public string DeviceName => _loop.DeviceName;

    /// <summary>
    /// What the model file or folder holds that the engine does not run, in one line for a log — a multimodal
    /// checkpoint's vision tower and projector (only its text model runs) — or null when everything runs.
    /// </summary>
    public string? ModelNotice => _files.Notice;

    /// <summary>Number of weights of the model.</summary>
    public long ParameterCount { get; }

    /// <summary>
    /// How the KV pool was sized (vLLM's rule: <c>--gpu-memory-utilization</c> × total memory − weights − activations,
    /// capped at what max-num-seqs full contexts can use), with its block count and token capacity.
    /// </summary>
    public KvCache.KvMemoryPlan KvMemory => _loop.MemoryPlan;

    /// <summary>KV cache bytes one token takes: 2 · layers · kvHeads · (bytes of a head's row: headDim values, or headDim / 32 blocks of 34 bytes for Q8_0 and FP8).</summary>
    public long KvBytesPerToken => KvCache.KvCacheStorage.GetTokenByteCount(Config.LayerCount, Config.KvHeadCount, Config.HeadDim, Options.KvCache.DataType);

    /// <summary>
    /// The salt of this engine's KV block hashes: it stands for the model, tokenizer, RoPE configuration, KV element type
    /// and block size, so two engines with equal salts cache equal prompts under equal <see cref="KvCache.BlockHash"/>es.
    /// </summary>
    public long PrefixSalt { get; }

    /// <summary>
    /// The hashes the KV cache gives the leading full blocks of <paramref name="promptTokens"/> (see
    /// <see cref="KvCache.BlockHash.ComputeChain"/>); a router uses them to send prompts with a shared prefix to the
    /// engine that holds it.
    /// </summary>
    /// <returns>How many hashes were written.</returns>
    public int ComputePrefixBlockHashes(ReadOnlySpan<int> promptTokens, Span<KvCache.BlockHash> destination) =>
        KvCache.BlockHash.ComputeChain(promptTokens, Options.KvCache.BlockSize, PrefixSalt, destination);

    /// <summary>Running and waiting requests, preemptions and KV cache blocks after the engine's latest step.</summary>
    public EngineStats Stats => _loop.Stats;

    /// <summary>The cache of the weights hash prefix files carry (tests read what it did).</summary>
    internal WeightHashCache WeightsCache { get; }

    /// <summary>The hash of every weight that prefix files carry (computed, or read from its cache, on first use).</summary>
    internal UInt128 WeightsHash
    {
        get
        {
            _loop.PrepareWeightsHash();
            return _loop.WeightsHash;
        }
    }

    /// <summary>The engine loop (tests hook its steps).</summary>
    internal EngineLoop Loop => _loop;

    /// <summary>Like <see cref="Stats"/>, but read on the engine thread after it has handled everything queued so far.</summary>
    public Task<EngineStats> GetStatsAsync() => _loop.InvokeAsync(static l => l.CurrentStats());

    /// <summary>Opens a model and starts the engine.</summary>
    /// <param name="path">A .gguf file, or a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json).</param>
    /// <param name="options">Engine options; null for defaults.</param>
    /// <param name="progress">Receives load progress from 0 to 1.</param>
    /// <param name="cancellationToken">Cancels loading.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="ModelFormatException">The file is malformed or describes an unsupported model.</exception>
    /// <exception cref="Speculative.DraftModelMismatchException">The draft model of <see cref="EngineOptions.Speculative"/> has another vocabulary.</exception>
    /// <exception cref="DeviceNotAvailableException"><see cref="Device.Cuda"/> was asked for and the Inference.Cuda package is not installed or no CUDA device exists.</exception>
    public static Task<InferenceEngine> LoadAsync(string path, EngineOptions? options = null, IProgress<float>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new EngineOptions();
        return Task.Run(() =>
        {
            var factory = ForwardExecutors.Resolve(options);
            var files = LoadedModel.Open(path, options.ContextLength, progress, cancellationToken);
            try
            {
                _ = files.Metadata; // a checkpoint's tokenizer.json as GGUF keys (chat templates), refused now if malformed
                var model = new LlamaModel(Weights(files.Weights, files.Config, options, progress, cancellationToken), files.Config);
                progress?.Report(1f);
                return new InferenceEngine(files, model, options, factory, path);
            }
            catch
            {
                files.Dispose();
                throw;
            }
        }, cancellationToken);
    }

    /// <summary>The stored weights, or with <see cref="EngineOptions.Quantization"/> a source that quantizes them as the
    /// model reads them (progress from 0.5 to 1).</summary>
    private static IWeightSource Weights(IWeightSource stored, ModelConfig config, EngineOptions options, IProgress<float>? progress, CancellationToken cancellationToken) =>
        options.Quantization is not { } preset ? stored
            : new QuantizingWeightSource(stored, config, preset, progress is null ? null : p => progress.Report(0.5f + 0.5f * p), cancellationToken);

    /// <summary>Tokenizes a prompt the way <see cref="GenerateAsync(string, SamplingOptions?, CancellationToken)"/> does (BOS as the model says).</summary>
    public int[] Tokenize(string prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        // NOTE: an empty result stays empty here; generation starts an empty prompt from BOS (CheckPrompt).
        return Tokenizer.Encode(prompt, addSpecial: true);
    }

    /// <inheritdoc />
    Task<int[]> ITextGenerator.TokenizeAsync(string prompt, CancellationToken cancellationToken) => Task.FromResult(Tokenize(prompt));

    /// <inheritdoc />
    Task<int[]> ITextGenerator.TokenizeChatAsync(IReadOnlyList<Chat.ChatMessage> messages, Chat.ChatPromptOptions? prompt, CancellationToken cancellationToken) =>
        Task.FromResult(TokenizeChat(messages, prompt));

    /// <inheritdoc />
    Task<Chat.ChatTemplate?> ITextGenerator.GetChatTemplateAsync(CancellationToken cancellationToken) => Task.FromResult(ChatTemplate);

    /// <summary>Streams the continuation of <paramref name="prompt"/> token by token.</summary>
    /// <exception cref="ArgumentException">The prompt does not fit the context (and truncation is off).</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    public GenerationStream GenerateAsync(string prompt, SamplingOptions? sampling = null, CancellationToken cancellationToken = default) =>
        GenerateAsync(Tokenize(prompt), sampling, cancellationToken);

    /// <summary>Streams the continuation of a tokenized prompt.</summary>
    public GenerationStream GenerateAsync(IReadOnlyList<int> promptTokens, SamplingOptions? sampling = null, CancellationToken cancellationToken = default)
    {
        return new GenerationStream(CreateRequest(promptTokens, sampling ?? new SamplingOptions()), _loop.Submit, cancellationToken);
    }

    /// <summary>
    /// Streams <paramref name="n"/> independent samples of the continuation of <paramref name="promptTokens"/> (vLLM's
    /// and OpenAI's <c>n</c>): the prompt is computed once and the samples start as copy-on-write forks of its KV
    /// (<see cref="KvCache.KvCacheManager.Fork"/>), holding its blocks once. Sample i uses seed
    /// <c>Seed + i</c> when <see cref="SamplingOptions.Seed"/> is set.
    /// </summary>
    /// <remarks>
    /// Enumerating any of the streams starts all of them; enumerate every one (a stream nobody reads pauses once its
    /// buffer fills, holding its blocks) or cancel <paramref name="cancellationToken"/>.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> is below 1 or above 1024.</exception>
    public IReadOnlyList<GenerationStream> GenerateParallelAsync(IReadOnlyList<int> promptTokens, int n, SamplingOptions? sampling = null, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(n, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(n, 1024);
        sampling ??= new SamplingOptions();
        var requests = new GenerationRequest[n];
        for (int i = 0; i < n; i++)
            requests[i] = CreateRequest(promptTokens, sampling.Seed is ulong seed ? sampling with { Seed = unchecked(seed + (ulong)i) } : sampling);
        if (n > 1) requests[0].Forks = [.. requests.AsSpan(1)];
        int submitted = 0;
        void Submit(GenerationRequest _)
        {
            if (Interlocked.Exchange(ref submitted, 1) != 0) return;
            try
            {
                _loop.Submit(requests[0]);
            }
            catch
            {
                Volatile.Write(ref submitted, 0);
                throw;
            }
        }
        var streams = new GenerationStream[n];
        for (int i = 0; i < n; i++) streams[i] = new GenerationStream(requests[i], Submit, cancellationToken);
        return streams;
    }

    /// <summary>
    /// Beam search: the <see cref="Search.BeamSearchOptions.BeamWidth"/> best continuations of
    /// <paramref name="promptTokens"/> by cumulative log-probability, ranked with the length penalty. The prompt is
    /// computed once and beams are copy-on-write forks of their parents' KV, sharing their common blocks.
    /// </summary>
    /// <remarks>
    /// Every beam is a scheduled sequence: the search shares the engine's steps with running requests, waits for KV
    /// blocks and sequence slots when they are taken, counts against <see cref="EngineOptions.MaxWaitingRequests"/> and
    /// ends (freeing every block) when <paramref name="cancellationToken"/> is cancelled.
    /// </remarks>
    /// <exception cref="ArgumentException">The prompt fills the context (thrown here); the search needs more beams than
    /// <see cref="EngineOptions.MaxNumSeqs"/> or more KV blocks than the pool has (the returned task faults).</exception>
    /// <exception cref="RequestQueueFullException">Too many requests wait to start (the returned task faults).</exception>
    public Task<Search.BeamSearchResult> BeamSearchAsync(IReadOnlyList<int> promptTokens, Search.BeamSearchOptions? options = null, CancellationToken cancellationToken = default)
    {
        var tokens = CheckPrompt(promptTokens, 1);
        options ??= new Search.BeamSearchOptions();
        cancellationToken.ThrowIfCancellationRequested();
        var run = new BeamSearchRun(tokens, options, Math.Min(options.MaxTokens, ContextLength - tokens.Length),
            t => Tokenizer.IsEndOfGeneration(t) || _stopTokens.Contains(t), t => Tokenizer.Decode(t));
        var request = CreateRequest(tokens, SideWorkSampling);
        request.Beam = run;
        return BeamSearchCoreAsync(request, run, cancellationToken);
    }

    private async Task<Search.BeamSearchResult> BeamSearchCoreAsync(GenerationRequest request, BeamSearchRun run, CancellationToken cancellationToken)
    {
        await new GenerationStream(request, _loop.Submit, cancellationToken).CompleteAsync().ConfigureAwait(false);
        return run.Result!;
    }

    /// <summary>Beam search over the tokenized <paramref name="prompt"/>; see <see cref="BeamSearchAsync(IReadOnlyList{int}, Search.BeamSearchOptions?, CancellationToken)"/>.</summary>
    public Task<Search.BeamSearchResult> BeamSearchAsync(string prompt, Search.BeamSearchOptions? options = null, CancellationToken cancellationToken = default) =>
        BeamSearchAsync(Tokenize(prompt), options, cancellationToken);

    /// <summary>Generates the whole continuation of <paramref name="prompt"/>.</summary>
    public Task<Completion> CompleteAsync(string prompt, SamplingOptions? sampling = null, CancellationToken cancellationToken = default) =>
        CompleteAsync(Tokenize(prompt), sampling, cancellationToken);

    /// <summary>Generates the whole continuation of a tokenized prompt.</summary>
    public Task<Completion> CompleteAsync(IReadOnlyList<int> promptTokens, SamplingOptions? sampling = null, CancellationToken cancellationToken = default) =>
        GenerateAsync(promptTokens, sampling, cancellationToken).CompleteAsync();

    /// <summary>Runs the prompt and returns the logits at its last position ([vocab]).</summary>
    /// <remarks>
    /// The prompt is a scheduled request like any other: it is computed in the engine's batched steps beside running
    /// requests (reusing cached prefixes) and waits for KV blocks when the pool is full.
    /// </remarks>
    /// <exception cref="RequestQueueFullException">Too many requests wait to start (the returned task faults).</exception>
    public Task<float[]> GetLogitsAsync(IReadOnlyList<int> promptTokens, CancellationToken cancellationToken = default)
    {
        var tokens = CheckPrompt(promptTokens, 1);
        float[]? logits = null;
        return RunSideWorkAsync(tokens, (_, row) => logits = row.ToArray(), () => logits!, cancellationToken);
    }

    /// <summary>Queues <paramref name="tokens"/> as a request that runs <paramref name="work"/> once they are computed.</summary>
    private async Task<T> RunSideWorkAsync<T>(int[] tokens, Action<long, ReadOnlySpan<float>> work, Func<T> result, CancellationToken cancellationToken)
    {
        var request = CreateRequest(tokens, SideWorkSampling);
        request.OnPromptComputed = work;
        await new GenerationStream(request, _loop.Submit, cancellationToken).CompleteAsync().ConfigureAwait(false);
        return result();
    }

    private static readonly SamplingOptions SideWorkSampling = SamplingOptions.Greedy with { MaxTokens = 1 };

    /// <summary>
    /// Computes <paramref name="prompt"/> and writes the KV of its whole blocks to <paramref name="path"/>, with the
    /// identity of this model, tokenizer, RoPE configuration and KV type, so another engine can skip that prefill.
    /// </summary>
    /// <remarks>The prompt is computed as a scheduled request, batched with running requests; it waits for KV blocks when the pool is full.</remarks>
    /// <returns>The number of prompt tokens saved (a multiple of the block size).</returns>
    /// <exception cref="ArgumentException">The prompt is shorter than one block or longer than the context.</exception>
    public Task<int> SavePrefixAsync(string prompt, string path, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var tokens = CheckPrompt(Tokenize(prompt), 1);
        int saved = _loop.PrefixTokens(tokens.Length);
        cancellationToken.ThrowIfCancellationRequested();
        return SavePrefixCoreAsync(tokens, path, saved, cancellationToken);
    }

    private async Task<int> SavePrefixCoreAsync(int[] tokens, string path, int saved, CancellationToken cancellationToken)
    {
        // NOTE: the weights hash the file carries is computed (or read from its cache) here, never on the engine thread.
        await Task.Run(_loop.PrepareWeightsHash, cancellationToken).ConfigureAwait(false);
        return await RunSideWorkAsync(tokens, (id, _) => _loop.WritePrefix(path, tokens, id, saved), () => saved, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Adopts a prefix file written by <see cref="SavePrefixAsync"/> into the KV cache, pinned for the engine's lifetime:
    /// requests whose prompt starts with its tokens skip their prefill.
    /// </summary>
    /// <remarks>
    /// The file is read and checked on a pool thread; its blocks then enter the pool as a scheduled request whose chunks
    /// copy them in instead of computing them: it shares the engine's steps with running requests, waits for free blocks
    /// when the pool is full, counts against <see cref="EngineOptions.MaxWaitingRequests"/> and, when cancelled, frees
    /// every block it took.
    /// </remarks>
    /// <returns>The number of tokens adopted.</returns>
    /// <exception cref="ModelFormatException">The file is malformed, or was made by another model, tokenizer, RoPE configuration or KV type.</exception>
    /// <exception cref="ArgumentException">The file holds as many tokens as the context or more.</exception>
    /// <exception cref="RequestQueueFullException">Too many requests wait to start.</exception>
    public Task<int> LoadPrefixAsync(string path, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        cancellationToken.ThrowIfCancellationRequested();
        return LoadPrefixCoreAsync(path, cancellationToken);
    }

    private async Task<int> LoadPrefixCoreAsync(string path, CancellationToken cancellationToken)
    {
        var file = await Task.Run(() => _loop.OpenPrefix(path), cancellationToken).ConfigureAwait(false);
        try
        {
            if (file.Tokens.Length >= ContextLength)
                throw new ArgumentException($"{path} holds {file.Tokens.Length} tokens; the context holds {ContextLength} (prompt and at least 1 generated token)", nameof(path));
            var request = CreateRequest(file.Tokens, SideWorkSampling);
            request.PrefixSource = file;
            var stream = new GenerationStream(request, _loop.Submit, cancellationToken);
            stream.Start();
            try
            {
                await stream.CompleteAsync().ConfigureAwait(false);
            }
            finally
            {
                // The engine thread reads the file until the request ends (a cancelled stream returns before that).
                await ((Task)request.Completion.Task).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }
            return file.Tokens.Length;
        }
        finally
        {
            file.Dispose();
        }
    }

    private GenerationRequest CreateRequest(IReadOnlyList<int> promptTokens, SamplingOptions sampling)
    {
        ArgumentNullException.ThrowIfNull(sampling);
        var tokens = CheckPrompt(promptTokens, 1);
        // NOTE: under KV eviction prompt and output may run past the context (the cache keeps a bounded part of them).
        int maxTotal = Options.KvEviction is null ? ContextLength : (int)Math.Min(int.MaxValue, (long)tokens.Length + 1_000_000);
        return new GenerationRequest(Interlocked.Increment(ref _nextRequestId), tokens, sampling, Tokenizer, _stopTokens, Config.VocabSize, maxTotal);
    }

    private int[] CheckPrompt(IReadOnlyList<int> promptTokens, int room)
    {
        ArgumentNullException.ThrowIfNull(promptTokens);
        var tokens = promptTokens.ToArray();
        if (tokens.Length == 0) tokens = [Tokenizer.BosId ?? Tokenizer.EosId ?? 0];
        foreach (var t in tokens)
            if ((uint)t >= (uint)Config.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(promptTokens), t, $"token id {t} is outside the vocabulary of {Config.VocabSize}");
        if (tokens.Length + room > ContextLength)
        {
            if (Options.PromptOverflow == PromptOverflow.Reject)
                throw new ArgumentException($"the prompt has {tokens.Length} tokens but the context holds {ContextLength} (prompt and at least {room} generated token); shorten it or set PromptOverflow.TruncateLeft", nameof(promptTokens));
            int keep = ContextLength - room;
            bool bos = Tokenizer.BosId is int b && tokens[0] == b;
            tokens = bos ? [tokens[0], .. tokens.AsSpan(tokens.Length - keep + 1)] : tokens[^keep..];
        }
        return tokens;
    }

    /// <summary>Stops the engine loop, fails outstanding requests and releases the model file.</summary>
    public async ValueTask DisposeAsync()
    {
        await _loop.DisposeAsync().ConfigureAwait(false);
        _files.Dispose();
    }
}
