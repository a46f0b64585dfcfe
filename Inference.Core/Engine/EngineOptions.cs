using Inference.Models;
using Inference.Quantization;
using Inference.KvCache;

namespace Inference.Engine;

/// <summary>Which hardware runs the model.</summary>
public enum Device
{
    /// <summary>A CUDA GPU when one is present and supported, else the CPU.</summary>
    Auto,
    /// <summary>The CPU.</summary>
    Cpu,
    /// <summary>An NVIDIA GPU through CUDA.</summary>
    Cuda,
}

/// <summary>What to do with a prompt that does not fit the context.</summary>
public enum PromptOverflow
{
    /// <summary>Reject the request with an <see cref="ArgumentException"/>.</summary>
    Reject,
    /// <summary>Drop tokens from the left (after BOS) until prompt and output fit.</summary>
    TruncateLeft,
}

/// <summary>How an <see cref="InferenceEngine"/> runs. Immutable; invalid values throw when set.</summary>
public sealed record EngineOptions
{
    private readonly int _threads = Math.Max(1, Environment.ProcessorCount);
    private readonly int? _contextLength;
    private readonly int _maxNumSeqs = 16;
    private readonly int _maxNumBatchedTokens = 512;

    /// <summary>CPU threads for the forward pass (the engine thread included). Default: all cores.</summary>
    public int Threads { get => _threads; init => _threads = value is >= 1 and <= 1024 ? value : throw Out(nameof(Threads), value, "must be in [1, 1024]"); }

    /// <summary>Most tokens (prompt + output) of one sequence. Null: the model's trained context, capped at 4,096.</summary>
    public int? ContextLength { get => _contextLength; init => _contextLength = value is null or >= 1 ? value : throw Out(nameof(ContextLength), value, "must be ≥ 1"); }

    /// <summary>Most requests in one forward pass (vLLM's max_num_seqs).</summary>
    public int MaxNumSeqs { get => _maxNumSeqs; init => _maxNumSeqs = value is >= 1 and <= 4096 ? value : throw Out(nameof(MaxNumSeqs), value, "must be in [1, 4096]"); }

    /// <summary>Most tokens in one forward pass (vLLM's max_num_batched_tokens); long prompts are chunked to fit.</summary>
    public int MaxNumBatchedTokens { get => _maxNumBatchedTokens; init => _maxNumBatchedTokens = value is >= 1 and <= 65536 ? value : throw Out(nameof(MaxNumBatchedTokens), value, "must be in [1, 65536]"); }

    /// <summary>
    /// The hardware to run on. <see cref="Device.Cuda"/> and <see cref="Device.Auto"/> use the GPU through the
    /// <c>Inference.Cuda</c> package when it is installed and a CUDA device exists; <see cref="InferenceEngine.Device"/>
    /// says what was chosen.
    /// </summary>
    public Device Device { get; init; } = Device.Auto;

    /// <summary>
    /// Creates the executor for <see cref="Device.Cuda"/> and <see cref="Device.Auto"/> instead of the one found in the
    /// Inference.Cuda assembly (its options, or an ILGPU CPU accelerator in tests). Null: look it up.
    /// </summary>
    internal IForwardExecutorFactory? ExecutorFactory { get; init; }

    /// <summary>
    /// The paged KV cache: block size, pool size, element type, prefix caching. The pool is capped at what
    /// <see cref="MaxNumSeqs"/> sequences of the full context can use, twice over (the rest keeps cached prefixes).
    /// </summary>
    public KvCacheOptions KvCache { get; init => field = value ?? throw new ArgumentNullException(nameof(KvCache)); } = new();

    /// <summary>
    /// Quantizes the model's F32/F16/BF16 weight matrices while loading (vLLM's <c>quantization</c>): each gets the type
    /// llama.cpp's quantizer gives it under this preset (<see cref="TensorTypeRules"/>), converted on all cores, and the
    /// model runs on the quantized kernels. Null (the default) runs the weights as stored; weights already quantized in the
    /// file are left as they are.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a preset, or one whose block type has no CPU kernel.</exception>
    public QuantizationPreset? Quantization
    {
        get;
        init => field = value is null || (Enum.IsDefined(value.Value) && LlamaModel.SupportedWeightTypes.Contains(TensorTypeRules.DefaultType(value.Value))) ? value
            : throw Out(nameof(Quantization), value, $"must be a preset whose block type runs on the CPU ({string.Join(", ", LlamaModel.SupportedWeightTypes)})");
    }

    /// <summary>
    /// Ranks that split each layer of the model (vLLM's tensor_parallel_size): attention heads, the KV cache (by KV head)
    /// and the feed-forward width are divided over the ranks, which add their partial outputs with one all-reduce after
    /// the attention output and one after the feed-forward down projection. On the CPU each rank is a group of
    /// <see cref="Threads"/> / size threads with its own KV pool. Default 1 (no split).
    /// </summary>
    public int TensorParallelSize { get; init => field = value is >= 1 and <= 64 ? value : throw Out(nameof(TensorParallelSize), value, "must be in [1, 64]"); } = 1;

    /// <summary>
    /// Stages that split the model's layers (vLLM's pipeline_parallel_size): each stage runs a contiguous range of layers
    /// and holds their KV cache; a step's batch is cut into micro-batches that flow through the stages one after the
    /// other, so the stages work at the same time, passing each micro-batch's residual stream on. Combines with
    /// <see cref="TensorParallelSize"/> (each stage then splits its layers over that many ranks). On the CPU each rank is
    /// a group of <see cref="Threads"/> / (tensor × pipeline size) threads. Default 1 (no split).
    /// </summary>
    public int PipelineParallelSize { get; init => field = value is >= 1 and <= 64 ? value : throw Out(nameof(PipelineParallelSize), value, "must be in [1, 64]"); } = 1;

    /// <summary>
    /// Ranks that split each step's tokens (context parallelism, ring attention): a long prompt's tokens are cut into
    /// 2 × size chunks, rank c computing chunks c and 2 × size − 1 − c (so the causal mask gives every rank about the same
    /// work); each rank computes its tokens' queries, keys and values, the keys and values go round the ring of ranks
    /// one block per hop, and each rank merges its queries' partial attention over each block with the online-softmax
    /// (log-sum-exp) rule. Every rank stores every block in its own KV pool, so decode goes on as usual (short segments,
    /// such as decode tokens, go whole to the ranks in turn); the pool's bytes are shared among the copies. Combines
    /// with <see cref="TensorParallelSize"/> (each context rank then splits its layers over that many ranks), not with
    /// <see cref="PipelineParallelSize"/>. Default 1 (no split).
    /// </summary>
    public int ContextParallelSize { get; init => field = value is >= 1 and <= 64 ? value : throw Out(nameof(ContextParallelSize), value, "must be in [1, 64]"); } = 1;

    /// <summary>
    /// Spreads the experts of mixture-of-experts blocks over the tensor-parallel ranks (vLLM's enable_expert_parallel)
    /// instead of refusing them: rank t holds a contiguous 1/<see cref="TensorParallelSize"/> of each block's experts
    /// whole (the shared expert on the first rank), every rank routes every token (the residual stream is replicated
    /// across the ranks, so dispatching tokens moves no bytes), runs its own experts over the tokens that chose them, and
    /// one all-reduce combines the ranks' weighted outputs. Needs <see cref="TensorParallelSize"/> above 1.
    /// </summary>
    public bool EnableExpertParallel { get; init; }

    /// <summary>
    /// Speculative decoding (vLLM's <c>speculative_config</c>): n-gram prompt lookup or a draft model proposes up to
    /// <see cref="Speculative.SpeculativeOptions.NumSpeculativeTokens"/> tokens per request and step, verified in the same
    /// batched forward pass. Null (the default) decodes one token per request and step.
    /// </summary>
    public Speculative.SpeculativeOptions? Speculative { get; init; }

    /// <summary>
    /// Most requests that may wait to start (submitted, not yet scheduled; preempted requests are not counted). A request
    /// beyond it is refused with <see cref="RequestQueueFullException"/> when it is queued, so a flood of callers costs
    /// bounded memory. Default 1,024.
    /// </summary>
    public int MaxWaitingRequests { get; init => field = value is >= 1 and <= 1_048_576 ? value : throw Out(nameof(MaxWaitingRequests), value, "must be in [1, 1048576]"); } = 1024;

    /// <summary>
    /// Generation past the context window: each sequence keeps at most <see cref="KvEvictionOptions.KeptTokenCount"/>
    /// tokens (plus a block) in the KV cache, evicting by attention sinks (StreamingLLM) or heavy hitters (H2O) and
    /// re-basing the kept tokens' positions, so output may run far beyond <see cref="ContextLength"/> with bounded KV
    /// memory. Null (the default) keeps every token and ends a request when prompt and output fill the context.
    /// Runs on the CPU (and on a GPU for attention sinks); not with speculative decoding, tensor parallelism or a model
    /// whose every layer has a sliding window.
    /// </summary>
    public KvEvictionOptions? KvEviction { get; init; }

    /// <summary>
    /// Where the per-tensor hashes of the weights that prefix files carry are cached between runs, so that a model's
    /// first prefix save or load does not read every weight byte again: null (the default) for the user's cache folder
    /// (<c>$XDG_CACHE_HOME</c> or <c>~/.cache</c>, on Windows the local application data folder, then
    /// <c>inference/weight-hashes</c>), a directory (the model's own folder keeps them beside the model), or an empty
    /// string for no cache. The cache is checked before use (its checksum, the model files' sizes, times and first and
    /// last 64 KiB, and a random sample of tensors hashed again) and rebuilt when stale or corrupt. The folder is
    /// created when the first cache file is written; one that cannot be written costs only the hashing.
    /// </summary>
    /// <exception cref="ArgumentException">The value is only white space or not a usable path (a NUL or another
    /// character the system refuses in paths).</exception>
    public string? WeightHashCacheDirectory
    {
        get;
        init => field = value is null || CheckWeightHashCacheDirectory(value) is not string problem
            ? value
            : throw new ArgumentException($"{nameof(WeightHashCacheDirectory)}: {problem}.", nameof(WeightHashCacheDirectory));
    }

    /// <summary>Why <paramref name="directory"/> cannot be a <see cref="WeightHashCacheDirectory"/>, or null when it can ("" turns the cache off).</summary>
    /// <param name="directory">The folder to check; nothing is created or read.</param>
    public static string? CheckWeightHashCacheDirectory(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (directory.Length == 0) return null;
        if (string.IsNullOrWhiteSpace(directory)) return "a folder name of only white space (use an empty string for no cache)";
        if (directory.AsSpan().IndexOfAny(System.IO.Path.GetInvalidPathChars()) >= 0) return $"'{Escape(directory)}' holds a character that is not allowed in paths";
        try
        {
            _ = System.IO.Path.GetFullPath(directory);
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or System.IO.PathTooLongException or System.Security.SecurityException)
        {
            return $"'{Escape(directory)}' is not a usable path ({e.Message})";
        }
        return null;

        static string Escape(string s)
        {
            var sb = new System.Text.StringBuilder(Math.Min(s.Length, 80));
            foreach (char c in s.Length > 80 ? s[..80] : s) sb.Append(char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString());
            return sb.ToString();
        }
    }

    /// <summary>What to do with a prompt longer than the context.</summary>
    public PromptOverflow PromptOverflow { get; init; } = PromptOverflow.Reject;

    private static ArgumentOutOfRangeException Out(string name, object? value, string rule) => new(name, value, $"{name} {rule}.");
}
