using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Inference.Backends.Cpu;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// One layer's paged attention on the CPU (<see cref="PagedAttention"/>) for one decode token or, with
/// <c>--tokens N</c>, a prefill chunk of the last N positions: µs per call, best of 40
/// rounds, with the cache in 64-byte-aligned memory as the engine keeps it and the blocks in reverse order. With
/// <c>--cold</c> a read of <c>--evict-mb</c> MiB (default 4) between calls, split over the pool's threads, pushes the cache
/// rows out of the cores' L2 (or, at 64, out of the last-level cache too, as a decode step's other layers and weights do).
/// </summary>
public static unsafe class AttentionQuickBench
{
    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        int context = a.Int("--context", 160), threads = a.Int("--threads", 1), tokens = a.Int("--tokens", 1);
        int heads = a.Int("--heads", 16), kvHeads = a.Int("--kv-heads", 4), headDim = a.Int("--head-dim", 64), blockSize = a.Int("--block-size", 16);
        bool half = a.String("--kv", "f16") == "f16", cold = a.Optional("--cold") is not null;
        int evictMb = a.Int("--evict-mb", 4);
        var shape = new PagedAttentionShape(heads, kvHeads, headDim, blockSize);
        int blocks = (context + blockSize - 1) / blockSize;
        long cacheElements = (long)blocks * blockSize * shape.KvStride;
        int elementBytes = half ? 2 : 4;
        void* keys = NativeMemory.AlignedAlloc((nuint)(cacheElements * elementBytes), 64);
        void* values = NativeMemory.AlignedAlloc((nuint)(cacheElements * elementBytes), 64);
        var rng = new Random(1);
        for (long i = 0; i < cacheElements; i++)
        {
            float k = rng.NextSingle() - 0.5f, v = rng.NextSingle() - 0.5f;
            if (half) { ((Half*)keys)[i] = (Half)k; ((Half*)values)[i] = (Half)v; }
            else { ((float*)keys)[i] = k; ((float*)values)[i] = v; }
        }
        var query = new float[tokens * shape.QueryStride];
        foreach (ref var x in query.AsSpan()) x = rng.NextSingle() - 0.5f;
        var output = new float[tokens * shape.QueryStride];
        var table = Enumerable.Range(0, blocks).Reverse().ToArray();
        var evict = new float[((long)evictMb << 20) / sizeof(float)];
        using var pool = new WorkerPool(threads);

        double best = double.MaxValue;
        for (int round = 0; round < 40; round++)
        {
            int calls = cold ? 200 : 1000;
            long ticks = 0;
            for (int i = 0; i < calls; i++)
            {
                if (cold)
                    fixed (float* pe = evict)
                        pool.Run(pool.ThreadCount, new EvictJob(pe, evict.Length, pool.ThreadCount));
                long start = Stopwatch.GetTimestamp();
                if (half)
                    PagedAttention.Forward(shape, query, new ReadOnlySpan<Half>(keys, (int)cacheElements), new ReadOnlySpan<Half>(values, (int)cacheElements), table, context - tokens, output, pool);
                else
                    PagedAttention.Forward(shape, query, new ReadOnlySpan<float>(keys, (int)cacheElements), new ReadOnlySpan<float>(values, (int)cacheElements), table, context - tokens, output, pool);
                ticks += Stopwatch.GetTimestamp() - start;
            }
            best = Math.Min(best, ticks * 1e6 / Stopwatch.Frequency / calls);
        }
        NativeMemory.AlignedFree(keys);
        NativeMemory.AlignedFree(values);
        GC.KeepAlive(evict);
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mode"] = "attention",
            ["context"] = context,
            ["tokens"] = tokens,
            ["heads"] = heads,
            ["kv_heads"] = kvHeads,
            ["head_dim"] = headDim,
            ["kv"] = half ? "f16" : "f32",
            ["threads"] = threads,
            ["cold"] = cold,
            ["evict_mb"] = cold ? evictMb : 0,
            ["us_per_call"] = Math.Round(best, 2),
        }));
        return Task.FromResult(0);
    }

    /// <summary>Touches one float per cache line of slice i of the buffer (writes, so the lines cannot stay shared).</summary>
    private readonly struct EvictJob(float* data, long length, int parts) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            for (int part = start; part < end; part++)
                for (long e = length * part / parts; e < length * (part + 1) / parts; e += 16) data[e] += 1;
        }
    }
}
