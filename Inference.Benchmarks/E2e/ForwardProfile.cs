using System.Diagnostics;
using System.Text.Json;
using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Models;

namespace Inference.Benchmarks.E2e;

/// <summary>
/// Where a decode step's time goes: the whole forward pass for one token against the matrix products alone (every
/// weight matrix of the model once, batch 1), both on the same pool.
/// </summary>
public static class ForwardProfile
{
    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        string model = a.Required("--model");
        int threads = a.Int("--threads", 2), steps = a.Int("--steps", 64), batchSize = a.Int("--batch", 1);
        using var gguf = GgufFile.Open(model);
        var config = ModelConfig.FromGguf(gguf);
        var llama = new LlamaModel(gguf, config);
        bool streams = CpuCaches.StreamsFromMemory(llama.MatMulBytes);
        using var pool = new WorkerPool(threads);
        var kv = new ContiguousKvCache(config, steps + 8);
        var batch = new ModelBatch();
        var logits = new float[config.VocabSize * batchSize];
        var matrices = gguf.Tensors.Where(t => t.Dimensions.Length == 2 && t.Name != "token_embd.weight").ToArray();

        double forwardMs = 0, matmulMs = 0, bestMs = double.MaxValue, matmulBestMs = double.MaxValue;
        // Per operation kind, the least time a step spent in it (each kind's best step on its own).
        var ops = llama.Graph.Ops;
        var kindTicks = new long[256];
        var kindBest = new long[256];
        Array.Fill(kindBest, long.MaxValue);
        int previous = -1;
        long last = 0;
        llama.BeforeOperation = op =>
        {
            long now = Stopwatch.GetTimestamp();
            if (previous >= 0) kindTicks[(int)ops[previous].Kind] += now - last;
            previous = op;
            last = now;
        };
        var stepMs = new double[steps];
        var waitMs = new double[steps];
        var matmulStepMs = new double[steps];
        var matrixBest = new long[matrices.Length];
        Array.Fill(matrixBest, long.MaxValue);
        for (int pass = 0; pass < 2; pass++)
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++)
            {
                long wait0 = pass == 1 ? RunQueueWait.Ns(callingThread: true) : 0;
                long t0 = Stopwatch.GetTimestamp();
                batch.Clear();
                for (int b = 0; b < batchSize; b++) batch.Add(b, [1 + (i + b) % 100], i, wantLogits: true);
                Array.Clear(kindTicks);
                previous = -1;
                llama.Forward(batch, kv, logits, pool);
                if (previous >= 0) kindTicks[(int)ops[previous].Kind] += Stopwatch.GetTimestamp() - last;
                if (pass == 1)
                {
                    stepMs[i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                    waitMs[i] = (RunQueueWait.Ns(callingThread: true) - wait0) / 1e6;
                    bestMs = Math.Min(bestMs, stepMs[i]);
                    for (int k = 0; k < kindTicks.Length; k++) kindBest[k] = Math.Min(kindBest[k], kindTicks[k]);
                }
            }
            forwardMs = sw.Elapsed.TotalMilliseconds / steps;
            for (int b = 0; b < batchSize; b++) kv.Remove(b);

            sw.Restart();
            for (int i = 0; i < steps; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int m = 0; m < matrices.Length; m++)
                {
                    long c0 = Stopwatch.GetTimestamp();
                    Multiply(gguf, matrices[m], pool, batchSize, streams);
                    if (pass == 1) matrixBest[m] = Math.Min(matrixBest[m], Stopwatch.GetTimestamp() - c0);
                }
                if (pass == 1) matmulBestMs = Math.Min(matmulBestMs, matmulStepMs[i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            }
            matmulMs = sw.Elapsed.TotalMilliseconds / steps;
        }

        // Each weight type's share of the matrix products, and the rate its bytes stream at.
        var byType = new Dictionary<string, object>();
        foreach (var group in matrices.GroupBy(t => t.Type))
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++)
            {
                foreach (var t in group) Multiply(gguf, t, pool, batchSize, streams);
            }
            double ms = sw.Elapsed.TotalMilliseconds / steps;
            long bytes = group.Sum(t => t.ByteCount);
            byType[group.Key.ToString()] = new Dictionary<string, object>
            {
                ["ms"] = Math.Round(ms, 3),
                ["mb"] = Math.Round(bytes / 1e6, 1),
                ["gb_per_s"] = Math.Round(bytes / (ms * 1e6), 2),
            };
        }
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mode"] = "forward-profile",
            ["streams_from_memory"] = streams,
            ["model"] = Path.GetFileName(model),
            ["threads"] = threads,
            ["batch"] = batchSize,
            ["forward_ms"] = Math.Round(forwardMs, 3),
            // NOTE: the fastest single step: on a machine shared with other work it approximates an undisturbed run.
            ["forward_best_ms"] = Math.Round(bestMs, 3),
            ["matmul_ms"] = Math.Round(matmulMs, 3),
            // NOTE: best against best: the step's work outside the matrix products when neither was disturbed.
            ["matmul_best_ms"] = Math.Round(matmulBestMs, 3),
            // NOTE: each matrix's fastest product over the steps, summed: robust to preemption (a product takes ~0.1 ms,
            // most are not interrupted), it keeps what every product pays (streaming, the pool's hand-off and tail).
            ["matmul_sum_of_best_ms"] = Math.Round(matrixBest.Sum() * 1e3 / Stopwatch.Frequency, 3),
            ["other_best_ms"] = Math.Round(bestMs - matmulBestMs, 3),
            ["other_ms"] = Math.Round(forwardMs - matmulMs, 3),
            // NOTE: the spread of single steps (10th, 50th, 90th percentile) and, per step, how long the process's
            // compute threads waited for a core (RunQueueWait): a slow step with no wait was not preempted; its time went
            // to memory or to waiting inside the step.
            ["forward_p10_p50_p90_ms"] = Percentiles(stepMs),
            ["matmul_p10_p50_p90_ms"] = Percentiles(matmulStepMs),
            ["run_queue_wait_p50_p90_max_ms"] = Percentiles(waitMs, 0.5, 0.9, 1.0),
            ["slow_steps_with_wait"] = SlowStepsWithWait(stepMs, waitMs),
            ["by_type"] = byType,
            // NOTE: per matrix shape (rows x cols), the summed best products and the rate their bytes stream at: small
            // matrices pay the pool's hand-off and the first tile's latency on fewer bytes.
            ["matmul_best_by_shape"] = matrices.Select((t, m) => (t, m)).GroupBy(p => $"{p.t.RowCount}x{p.t.RowLength}").ToDictionary(g => g.Key, g =>
            {
                double ms = g.Sum(p => matrixBest[p.m]) * 1e3 / Stopwatch.Frequency;
                return (object)new Dictionary<string, object> { ["count"] = g.Count(), ["ms"] = Math.Round(ms, 3), ["gb_per_s"] = Math.Round(g.Sum(p => p.t.ByteCount) / (ms * 1e6), 2) };
            }),
            ["ops_best_ms"] = ops.Select(o => o.Kind).Distinct().ToDictionary(k => k.ToString(), k => Math.Round(kindBest[(int)k] * 1e3 / Stopwatch.Frequency, 3)),
        }));
        return Task.FromResult(0);
    }

    private static double[] Percentiles(double[] values, params double[] at)
    {
        if (at.Length == 0) at = [0.1, 0.5, 0.9];
        var sorted = values.Order().ToArray();
        return at.Select(q => Math.Round(sorted[Math.Min(sorted.Length - 1, (int)(q * sorted.Length))], 3)).ToArray();
    }

    /// <summary>"k/n": of the n steps slower than the median by a quarter, k had threads waiting for a core over 0.1 ms.</summary>
    private static string SlowStepsWithWait(double[] stepMs, double[] waitMs)
    {
        double median = Percentiles(stepMs, 0.5)[0];
        int slow = 0, waited = 0;
        for (int i = 0; i < stepMs.Length; i++)
        {
            if (stepMs[i] < median * 1.25) continue;
            slow++;
            if (waitMs[i] > 0.1) waited++;
        }
        return $"{waited}/{slow}";
    }

    private static readonly Dictionary<string, (WeightMatrix W, float[] X, float[] Y)> Buffers = new();

    private static WeightArena? _arena;

    /// <summary>The product of matrix <paramref name="t"/> alone, its weights prepared as the model's are (in one arena,
    /// asking ahead as the model's do when <paramref name="streams"/>).</summary>
    private static unsafe void Multiply(GgufFile gguf, GgufTensorInfo t, WorkerPool pool, int batch, bool streams)
    {
        if (!Buffers.TryGetValue(t.Name, out var b))
        {
            _arena ??= new WeightArena { StreamsFromMemory = streams };
            var w = MatMul.PrepareInto(new WeightMatrix(t.Type, gguf.GetTensorPointer(t), (int)t.RowCount, (int)t.RowLength), _arena);
            b = (w, new float[w.Cols * batch], new float[w.Rows * batch]);
            for (int i = 0; i < b.X.Length; i++) b.X[i] = (i % 7 - 3) * 0.1f;
            Buffers[t.Name] = b;
        }
        MatMul.Multiply(b.W, b.X, b.Y, batch, pool);
    }
}
