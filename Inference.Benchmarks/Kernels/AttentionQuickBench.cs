using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Inference.Backends.Cpu;
using Inference.KvCache;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// One layer's paged attention on the CPU (<see cref="PagedAttention"/>) for one decode token or, with
/// <c>--tokens N</c>, a prefill chunk of the last N positions: µs per call, best of 40
/// rounds (<c>--rounds</c>, <c>--calls</c> calls each), with the cache in 64-byte-aligned memory as the engine keeps it and the blocks in reverse order. With
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
        // NOTE: several types (--kv f32,f16,q8_0,fp8) run side by side, round by round, so they share the machine's state.
        var types = a.String("--kv", "f16").Split(',').Select(ParseKv).ToArray();
        bool cold = a.Optional("--cold") is not null;
        int evictMb = a.Int("--evict-mb", 4), rounds = a.Int("--rounds", 40), callsPerRound = a.Int("--calls", cold ? 200 : 1000);
        var shape = new PagedAttentionShape(heads, kvHeads, headDim, blockSize);
        int blocks = (context + blockSize - 1) / blockSize;
        long cacheElements = (long)blocks * blockSize * shape.KvStride;
        var rng = new Random(1);
        var k32 = new float[cacheElements];
        var v32 = new float[cacheElements];
        for (long i = 0; i < cacheElements; i++) { k32[i] = rng.NextSingle() - 0.5f; v32[i] = rng.NextSingle() - 0.5f; }
        var caches = types.Select(t => (Keys: (nint)Store(t, k32), Values: (nint)Store(t, v32), Bytes: KvBlockFormat.ByteCount(t, cacheElements))).ToArray();
        var query = new float[tokens * shape.QueryStride];
        foreach (ref var x in query.AsSpan()) x = rng.NextSingle() - 0.5f;
        var output = new float[tokens * shape.QueryStride];
        var table = Enumerable.Range(0, blocks).Reverse().ToArray();
        var evict = new float[((long)evictMb << 20) / sizeof(float)];
        using var pool = new WorkerPool(threads);

        var best = new double[types.Length];
        Array.Fill(best, double.MaxValue);
        for (int round = 0; round < rounds; round++)
        {
            for (int t = 0; t < types.Length; t++)
            {
                int calls = callsPerRound;
                long ticks = 0;
                void* keys = (void*)caches[t].Keys, values = (void*)caches[t].Values;
                long bytes = caches[t].Bytes;
                for (int i = 0; i < calls; i++)
                {
                    if (cold)
                        fixed (float* pe = evict)
                            pool.Run(pool.ThreadCount, new EvictJob(pe, evict.Length, pool.ThreadCount));
                    long start = Stopwatch.GetTimestamp();
                    switch (types[t])
                    {
                        case KvCacheDataType.Float16:
                            PagedAttention.Forward(shape, query, new ReadOnlySpan<Half>(keys, (int)cacheElements), new ReadOnlySpan<Half>(values, (int)cacheElements), table, context - tokens, output, pool);
                            break;
                        case KvCacheDataType.Float32:
                            PagedAttention.Forward(shape, query, new ReadOnlySpan<float>(keys, (int)cacheElements), new ReadOnlySpan<float>(values, (int)cacheElements), table, context - tokens, output, pool);
                            break;
                        default:
                            QuantizedKvAttention.Forward(shape, query, new ReadOnlySpan<byte>(keys, (int)bytes), new ReadOnlySpan<byte>(values, (int)bytes), types[t], table, context - tokens, output, pool);
                            break;
                    }
                    ticks += Stopwatch.GetTimestamp() - start;
                }
                best[t] = Math.Min(best[t], ticks * 1e6 / Stopwatch.Frequency / calls);
            }
        }
        foreach (var c in caches)
        {
            NativeMemory.AlignedFree((void*)c.Keys);
            NativeMemory.AlignedFree((void*)c.Values);
        }
        GC.KeepAlive(evict);
        for (int t = 0; t < types.Length; t++)
        {
            Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["mode"] = "attention",
                ["context"] = context,
                ["tokens"] = tokens,
                ["heads"] = heads,
                ["kv_heads"] = kvHeads,
                ["head_dim"] = headDim,
                ["kv"] = KvBlockFormat.Name(types[t]),
                ["kv_bytes_per_token_layer"] = 2 * KvBlockFormat.ByteCount(types[t], shape.KvStride),
                ["threads"] = threads,
                ["cold"] = cold,
                ["evict_mb"] = cold ? evictMb : 0,
                ["us_per_call"] = Math.Round(best[t], 2),
            }));
        }
        return Task.FromResult(0);
    }

    /// <summary>f32, f16, q8_0, fp8 (fp8_e4m3).</summary>
    internal static KvCacheDataType ParseKv(string name) => name.Trim().ToLowerInvariant() switch
    {
        "f32" => KvCacheDataType.Float32,
        "f16" => KvCacheDataType.Float16,
        "q8_0" => KvCacheDataType.Q8_0,
        "fp8" or "fp8_e4m3" => KvCacheDataType.Fp8E4M3,
        _ => throw new ArgumentException($"--kv '{name}' is not one of f32, f16, q8_0, fp8"),
    };

    /// <summary>The values in 64-byte aligned native memory as <paramref name="type"/> stores them.</summary>
    private static void* Store(KvCacheDataType type, float[] values)
    {
        long bytes = KvBlockFormat.ByteCount(type, values.LongLength);
        void* p = NativeMemory.AlignedAlloc((nuint)bytes, 64);
        switch (type)
        {
            case KvCacheDataType.Float32:
                values.CopyTo(new Span<float>(p, values.Length));
                break;
            case KvCacheDataType.Float16:
                System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(values, new Span<Half>(p, values.Length));
                break;
            default:
                KvBlockFormat.Quantize(type, values, new Span<byte>(p, (int)bytes));
                break;
        }
        return p;
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
