using System.Diagnostics;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Inference.Benchmarks.E2e;

/// <summary>The same measurement through llama.cpp (LLamaSharp): one context, B sequences decoded in one batch per step.</summary>
internal static class LlamaCppE2e
{
    public static E2eResult Run(string model, int[][] prompts, int n, int threads)
    {
        LlamaCppSetup.EnsureQuiet();
        var loadStart = Stopwatch.GetTimestamp();
        int b = prompts.Length, p = prompts[0].Length;
        var parameters = new ModelParams(model)
        {
            ContextSize = (uint)(b * (p + n + 8)),
            BatchSize = (uint)Math.Max(512, b),
            UBatchSize = (uint)Math.Max(512, b),
            SeqMax = (uint)b,
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
        };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        using var context = weights.CreateContext(parameters);
        var handle = context.NativeHandle;
        var batch = new LLamaBatch();
        int vocab = weights.Vocab.Count;

        // Warm-up pass over the weights.
        batch.AddRange(prompts[0].AsSpan(0, Math.Min(8, p)).ToArray().Select(t => (LLamaToken)t).ToArray(), 0, (LLamaSeqId)0, true);
        Check(handle.Decode(batch));
        handle.MemoryClear(true);
        double readyS = Stopwatch.GetElapsedTime(loadStart).TotalSeconds;

        var start = Stopwatch.GetTimestamp();
        // Prefill: every prompt, in chunks of the batch size, logits only at each prompt's last token.
        var last = new LLamaToken[b];
        var logitIndex = new int[b];
        batch.Clear();
        for (int s = 0; s < b; s++)
        {
            for (int i = 0; i < p; i++)
            {
                if (batch.TokenCount == parameters.BatchSize)
                {
                    Check(handle.Decode(batch));
                    batch.Clear();
                }
                bool wantLogits = i == p - 1;
                int index = batch.Add(prompts[s][i], i, (LLamaSeqId)s, wantLogits);
                if (wantLogits) logitIndex[s] = index;
            }
        }
        Check(handle.Decode(batch));
        var ttft = new double[b];
        for (int s = 0; s < b; s++) last[s] = Argmax(handle.GetLogitsIth(logitIndex[s]), vocab);
        var firstTokens = Stopwatch.GetTimestamp();
        double ttftMs = Stopwatch.GetElapsedTime(start, firstTokens).TotalMilliseconds;

        // Decode: one token per sequence per step.
        for (int step = 1; step < n; step++)
        {
            batch.Clear();
            for (int s = 0; s < b; s++) logitIndex[s] = batch.Add(last[s], p + step - 1, (LLamaSeqId)s, true);
            Check(handle.Decode(batch));
            for (int s = 0; s < b; s++) last[s] = Argmax(handle.GetLogitsIth(logitIndex[s]), vocab);
        }
        var end = Stopwatch.GetTimestamp();
        double prefillS = Stopwatch.GetElapsedTime(start, firstTokens).TotalSeconds;
        double decodeS = Stopwatch.GetElapsedTime(firstTokens, end).TotalSeconds;
        return new E2eResult("llama.cpp", model, p, n, b, threads,
            b * p / prefillS, b * (n - 1) / decodeS, ttftMs, decodeS * 1000 / (n - 1), Stopwatch.GetElapsedTime(start, end).TotalSeconds)
        {
            ReadyS = readyS,
        };
    }

    private static LLamaToken Argmax(Span<float> logits, int vocab)
    {
        int best = 0;
        for (int i = 1; i < vocab; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    private static void Check(DecodeResult r)
    {
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {r}");
    }
}

/// <summary>Loads llama.cpp once and silences its log output.</summary>
internal static class LlamaCppSetup
{
    private static int _done;

    public static void EnsureQuiet()
    {
        if (Interlocked.Exchange(ref _done, 1) != 0) return;
        NativeLibraryConfig.All.WithLogCallback((level, message) => { });
        NativeApi.llama_empty_call();
    }
}
