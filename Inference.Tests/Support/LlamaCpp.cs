using LLama;
using LLama.Common;
using LLama.Native;

namespace Inference.Tests.Support;

/// <summary>
/// llama.cpp (through LLamaSharp, CPU backend) as the reference peer of differential tests: load a GGUF, tokenize, evaluate
/// logits, greedy-generate, quantize.
/// </summary>
/// <remarks>
/// NOTE: every native call runs under one process-wide lock. llama.cpp itself is thread-safe per context, but its global
/// log callback and backend initialisation are not, and NUnit may run fixtures in parallel; tests here are small, so
/// serialising costs little. The native log is discarded (set before the library loads) so test output stays readable.
/// Beware: llama.cpp aborts the whole process on some corrupt files (GGML_ASSERT); only hand it files expected to be valid.
/// </remarks>
public static class LlamaCpp
{
    private static readonly Lock Gate = new();
    private static bool _initialized;

    /// <summary>Loads the native library (once) with logging silenced. Called by every entry point.</summary>
    public static void EnsureInitialized()
    {
        lock (Gate)
        {
            if (_initialized) return;
            NativeLibraryConfig.All.WithLogCallback(static (_, _) => { });
            NativeApi.llama_empty_call(); // resolves and loads the native library
            NativeLogConfig.llama_log_set(static (_, _) => { });
            _initialized = true;
        }
    }

    /// <summary>Loads <paramref name="modelPath"/> into llama.cpp's CPU backend.</summary>
    /// <param name="modelPath">A GGUF file.</param>
    /// <param name="threads">CPU threads for evaluation (the CI machine has 2 cores).</param>
    public static LlamaCppModel Load(string modelPath, int threads = 2)
    {
        EnsureInitialized();
        lock (Gate)
        {
            var p = new ModelParams(modelPath) { GpuLayerCount = 0, Threads = threads, BatchThreads = threads };
            return new LlamaCppModel(LLamaWeights.LoadFromFile(p), modelPath, threads);
        }
    }

    /// <summary>
    /// Quantizes <paramref name="sourcePath"/> into <paramref name="destinationPath"/> with llama.cpp's quantizer
    /// (e.g. <see cref="LLamaFtype.MOSTLY_Q8_0"/>, <see cref="LLamaFtype.MOSTLY_Q4_K_M"/>).
    /// </summary>
    /// <param name="sourcePath">The model to quantize.</param>
    /// <param name="destinationPath">The file to write.</param>
    /// <param name="type">The llama.cpp file type.</param>
    /// <param name="threads">Quantization threads.</param>
    /// <param name="quantizeOutputTensor">Whether <c>output.weight</c> is quantized too, as <c>llama-quantize</c> does by
    /// default; LLamaSharp's default (false) leaves it in its source type.</param>
    /// <exception cref="InvalidOperationException">llama.cpp reported a failure.</exception>
    public static void Quantize(string sourcePath, string destinationPath, LLamaFtype type, int threads = 2, bool quantizeOutputTensor = false)
    {
        EnsureInitialized();
        lock (Gate)
        {
            if (!LLamaQuantizer.Quantize(sourcePath, destinationPath, type, threads, quantizeOutputTensor: quantizeOutputTensor))
                throw new InvalidOperationException($"llama.cpp could not quantize {sourcePath} to {type}");
        }
    }

    /// <summary>Runs <paramref name="action"/> under the native lock (for <see cref="LlamaCppModel"/>).</summary>
    internal static T Locked<T>(Func<T> action)
    {
        lock (Gate) return action();
    }
}

/// <summary>A model loaded into llama.cpp. Each evaluation uses a fresh context, so calls do not influence each other.</summary>
public sealed class LlamaCppModel : IDisposable
{
    private readonly LLamaWeights _weights;
    private readonly int _threads;

    internal LlamaCppModel(LLamaWeights weights, string path, int threads)
    {
        _weights = weights;
        Path = path;
        _threads = threads;
    }

    /// <summary>The GGUF file.</summary>
    public string Path { get; }

    /// <summary>Vocabulary size as llama.cpp sees it (the length of every logits vector).</summary>
    public int VocabCount => _weights.Vocab.Count;

    /// <summary>The beginning-of-sequence token id, or -1 when the model has none.</summary>
    public int BosTokenId => _weights.Vocab.BOS is { } bos ? (int)bos : -1;

    /// <summary>Tokenizes with llama.cpp's own tokenizer (no special-token parsing).</summary>
    public int[] Tokenize(string text, BosToken bos)
    {
        return LlamaCpp.Locked(() =>
        {
            var tokens = _weights.Tokenize(text, bos == BosToken.Add, special: false, System.Text.Encoding.UTF8);
            var ids = new int[tokens.Length];
            for (int i = 0; i < ids.Length; i++) ids[i] = (int)tokens[i];
            return ids;
        });
    }

    /// <summary>Turns token ids back into text with llama.cpp's detokenizer.</summary>
    public string Detokenize(IReadOnlyList<int> tokens)
    {
        return LlamaCpp.Locked(() =>
        {
            var decoder = new StreamingTokenDecoder(System.Text.Encoding.UTF8, _weights);
            foreach (var t in tokens) decoder.Add(t);
            return decoder.Read();
        });
    }

    /// <summary>Evaluates <paramref name="tokens"/> from position 0 and returns the logits at the last position.</summary>
    public float[] EvaluateLastLogits(IReadOnlyList<int> tokens)
    {
        var all = Evaluate(tokens, allPositions: false);
        return all[^1];
    }

    /// <summary>Evaluates <paramref name="tokens"/> from position 0 and returns the logits at every position: [tokens][vocab].</summary>
    public float[][] EvaluateAllLogits(IReadOnlyList<int> tokens) => Evaluate(tokens, allPositions: true);

    /// <summary>
    /// Evaluates <paramref name="tokens"/> from position 0 with K and V stored as <paramref name="kvType"/> (e.g.
    /// <see cref="GGMLType.GGML_TYPE_Q8_0"/>, llama.cpp's <c>-ctk/-ctv</c>) and the logits at every position: [tokens][vocab].
    /// llama.cpp needs flash attention for a quantized V cache.
    /// </summary>
    /// <param name="tokens">The prompt.</param>
    /// <param name="kvType">The K and V cache type.</param>
    /// <param name="flashAttention">Whether llama.cpp runs its flash-attention kernel.</param>
    /// <param name="rotateQuantizedKv">With a quantized cache llama.cpp by default rotates Q, K and V by a Hadamard
    /// matrix before storing them and rotates the output back (its "attention rotation"); false turns that off
    /// (<c>LLAMA_ATTN_ROT_DISABLE</c>), so the cache holds the plain quantized K and V.</param>
    public float[][] EvaluateAllLogits(IReadOnlyList<int> tokens, GGMLType kvType, bool flashAttention, bool rotateQuantizedKv = true) =>
        Evaluate(tokens, allPositions: true, kvType, flashAttention, rotateQuantizedKv);

    /// <summary>
    /// Greedy (argmax, lowest id on ties) generation of exactly <paramref name="count"/> tokens after
    /// <paramref name="prompt"/>; end-of-sequence tokens do not stop it.
    /// </summary>
    public int[] GenerateGreedy(IReadOnlyList<int> prompt, int count)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(prompt.Count, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        return LlamaCpp.Locked(() =>
        {
            using var context = CreateContext(prompt.Count + count);
            var batch = new LLamaBatch();
            for (int i = 0; i < prompt.Count; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Count - 1);
            Decode(context, batch);
            var output = new int[count];
            int pos = prompt.Count;
            for (int n = 0; n < count; n++)
            {
                int next = ArgMax(context.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
                output[n] = next;
                if (n == count - 1) break;
                batch.Clear();
                batch.Add(next, pos++, LLamaSeqId.Zero, true);
                Decode(context, batch);
            }
            return output;
        });
    }

    private float[][] Evaluate(IReadOnlyList<int> tokens, bool allPositions, GGMLType kvType = GGMLType.GGML_TYPE_F32, bool flashAttention = false, bool rotate = true)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens.Count, 1);
        return LlamaCpp.Locked(() =>
        {
            // NOTE: llama.cpp reads the variable when it creates a context's KV cache; .NET's own environment is a copy
            // that native code does not see, so it is set in the C library's.
            if (!rotate) NativeEnvironment.setenv("LLAMA_ATTN_ROT_DISABLE", "1", 1);
            LLamaContext context;
            try
            {
                context = CreateContext(tokens.Count, kvType, flashAttention);
            }
            finally
            {
                if (!rotate) NativeEnvironment.unsetenv("LLAMA_ATTN_ROT_DISABLE");
            }
            using var owned = context;
            var batch = new LLamaBatch();
            for (int i = 0; i < tokens.Count; i++) batch.Add(tokens[i], i, LLamaSeqId.Zero, allPositions || i == tokens.Count - 1);
            Decode(context, batch);
            var result = new float[allPositions ? tokens.Count : 1][];
            for (int r = 0; r < result.Length; r++)
            {
                int index = allPositions ? r : tokens.Count - 1;
                result[r] = context.NativeHandle.GetLogitsIth(index).ToArray();
            }
            return result;
        });
    }

    /// <summary>
    /// Context settings applied to every evaluation (e.g. YaRN's β_fast/β_slow, which this llama.cpp takes from its
    /// context parameters rather than from the file).
    /// </summary>
    public Action<ModelParams>? ConfigureContext { get; set; }

    private LLamaContext CreateContext(int tokenCount, GGMLType kvType = GGMLType.GGML_TYPE_F32, bool flashAttention = false)
    {
        uint size = (uint)Math.Max(64, (tokenCount + 63) / 64 * 64);
        var p = new ModelParams(Path)
        {
            ContextSize = size,
            BatchSize = size,
            UBatchSize = size,
            Threads = _threads,
            BatchThreads = _threads,
            GpuLayerCount = 0,
            // NOTE: llama.cpp keeps K/V in f16 by default; f32 K/V (and no flash attention, which rounds Q to f16)
            // compare the arithmetic itself, so the F32 differential tolerance can be tight.
            TypeK = kvType,
            TypeV = kvType,
            FlashAttention = flashAttention,
        };
        ConfigureContext?.Invoke(p);
        return _weights.CreateContext(p);
    }

    private static void Decode(LLamaContext context, LLamaBatch batch)
    {
        var r = context.NativeHandle.Decode(batch);
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {r}");
    }

    private static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <inheritdoc />
    public void Dispose() => LlamaCpp.Locked(() =>
    {
        _weights.Dispose();
        return 0;
    });
}

/// <summary>The C library's environment, which llama.cpp reads (Linux).</summary>
internal static partial class NativeEnvironment
{
    [System.Runtime.InteropServices.LibraryImport("libc.so.6", StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    internal static partial int setenv(string name, string value, int overwrite);

    [System.Runtime.InteropServices.LibraryImport("libc.so.6", StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    internal static partial int unsetenv(string name);
}

/// <summary>Whether tokenization prepends the beginning-of-sequence token.</summary>
public enum BosToken
{
    /// <summary>Prepend BOS.</summary>
    Add,
    /// <summary>Do not prepend BOS.</summary>
    Omit,
}
