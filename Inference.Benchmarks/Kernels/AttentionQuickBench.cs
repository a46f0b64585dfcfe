using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Inference.Backends.Cpu;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// One layer's paged attention on the CPU (<see cref="PagedAttention"/>) for one decode token or, with
/// <c>--tokens N</c>, a prefill chunk of the last N positions: µs per call, best of 40
/// rounds, with the cache in 64-byte-aligned memory as the engine keeps it and the blocks in reverse order. With
/// <c>--cold</c> a 4 MiB read between calls pushes the cache rows out of the core's L2, as a layer's matrix products do.
/// </summary>
public static unsafe class AttentionQuickBench
{
    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        int context = a.Int("--context", 160), threads = a.Int("--threads", 1), tokens = a.Int("--tokens", 1);
        int heads = a.Int("--heads", 16), kvHeads = a.Int("--kv-heads", 4), headDim = a.Int("--head-dim", 64), blockSize = a.Int("--block-size", 16);
        bool half = a.String("--kv", "f16") == "f16", cold = a.Optional("--cold") is not null;
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
        var evict = new float[(4 << 20) / sizeof(float)];
        using var pool = new WorkerPool(threads);

        double best = double.MaxValue;
        float sink = 0;
        for (int round = 0; round < 40; round++)
        {
            int calls = cold ? 200 : 1000;
            long ticks = 0;
            for (int i = 0; i < calls; i++)
            {
                if (cold)
                    for (int e = 0; e < evict.Length; e += 16) sink += evict[e];
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
        GC.KeepAlive(sink);
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
            ["us_per_call"] = Math.Round(best, 2),
        }));
        return Task.FromResult(0);
    }
}
