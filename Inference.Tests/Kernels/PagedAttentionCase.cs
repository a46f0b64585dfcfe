using Inference.Kernels;
using Inference.KvCache;

namespace Inference.Tests.Kernels;

/// <summary>Storage type of the KV cache in a test case.</summary>
public enum KvStorage { F32, F16, Q8_0, Fp8 }

/// <summary>
/// Random paged-attention inputs: a KV cache with shuffled physical blocks, block tables, queries, and the reference
/// output. f16 cases round K/V to f16 first, and the block formats (Q8_0, FP8) quantize them and keep the dequantized
/// values in <see cref="K"/> and <see cref="V"/> (exact), so the reference sees exactly what the kernels read.
/// </summary>
internal sealed class PagedAttentionCase
{
    public required AttentionShape Shape { get; init; }
    public required KvStorage Storage { get; init; }
    public required int[] ContextLens { get; init; }
    public required int[] BlockTables { get; init; }      // [seqCount, maxBlocksPerSeq]
    public required float[] K { get; init; }              // [blockCount, blockSize, kvHeads, headDim] (f16-rounded for F16)
    public required float[] V { get; init; }
    public required Half[] KHalf { get; init; }
    public required Half[] VHalf { get; init; }
    public required byte[] KBytes { get; init; }          // the block formats: [blockCount, blockSize, kvHeads, headDim / 32, 34]; else empty
    public required byte[] VBytes { get; init; }
    public required int BlockCount { get; init; }

    public int SeqCount => ContextLens.Length;
    public int MaxContext => ContextLens.Max();

    public static PagedAttentionCase Create(int heads, int kvHeads, int headDim, int blockSize, int[] contextLens, KvStorage storage, int seed)
    {
        var rng = new Random(seed);
        int maxBlocks = (contextLens.Max() + blockSize - 1) / blockSize;
        var shape = new AttentionShape(heads, kvHeads, headDim, blockSize, maxBlocks);
        int needed = 0;
        foreach (var c in contextLens) needed += (c + blockSize - 1) / blockSize;
        int blockCount = needed + 3;   // spare blocks that no table references
        var ids = Enumerable.Range(0, blockCount).OrderBy(_ => rng.Next()).ToArray();
        var tables = new int[contextLens.Length * maxBlocks];
        Array.Fill(tables, -1);   // unused entries are invalid ids: reading one would fault or go out of range
        int next = 0;
        for (int s = 0; s < contextLens.Length; s++)
            for (int b = 0; b < (contextLens[s] + blockSize - 1) / blockSize; b++)
                tables[s * maxBlocks + b] = ids[next++];

        int n = blockCount * shape.BlockElements;
        var k = Random(rng, n);
        var v = Random(rng, n);
        var kh = new Half[n];
        var vh = new Half[n];
        for (int i = 0; i < n; i++)
        {
            kh[i] = (Half)k[i];
            vh[i] = (Half)v[i];
            if (storage == KvStorage.F16)
            {
                k[i] = (float)kh[i];
                v[i] = (float)vh[i];
            }
        }
        byte[] kb = [], vb = [];
        if (BlockType(storage) is { } type)
        {
            // every head row is whole blocks, so the cache quantizes as one run of blocks
            kb = new byte[KvBlockFormat.ByteCount(type, n)];
            vb = new byte[kb.Length];
            KvBlockFormat.Quantize(type, k, kb);
            KvBlockFormat.Quantize(type, v, vb);
            KvBlockFormat.Dequantize(type, kb, k);
            KvBlockFormat.Dequantize(type, vb, v);
        }
        return new PagedAttentionCase
        {
            Shape = shape, Storage = storage, ContextLens = contextLens, BlockTables = tables,
            K = k, V = v, KHalf = kh, VHalf = vh, KBytes = kb, VBytes = vb, BlockCount = blockCount,
        };
    }

    /// <summary>Sets the K and V rows of positions 0 … <paramref name="end"/> − 1 of sequence <paramref name="seq"/> to NaN (after the reference ran).</summary>
    public void PoisonBefore(int seq, int end)
    {
        var s = Shape;
        int rowLength = s.KvHeadCount * s.HeadDim;
        for (int p = 0; p < end; p++)
        {
            int at = (BlockTables[seq * s.MaxBlocksPerSeq + p / s.BlockSize] * s.BlockSize + p % s.BlockSize) * rowLength;
            for (int e = at; e < at + rowLength; e++)
            {
                K[e] = V[e] = float.NaN;
                KHalf[e] = VHalf[e] = Half.NaN;
            }
            if (KBytes.Length == 0) continue;
            // the block formats: every block's f16 scale becomes NaN (d · code is NaN for every code)
            for (int b = at / KvBlockFormat.BlockValues; b < (at + rowLength) / KvBlockFormat.BlockValues; b++)
            {
                KBytes[b * KvBlockFormat.BlockBytes] = VBytes[b * KvBlockFormat.BlockBytes] = 0x00;
                KBytes[b * KvBlockFormat.BlockBytes + 1] = VBytes[b * KvBlockFormat.BlockBytes + 1] = 0x7E;
            }
        }
    }

    /// <summary>The block format of <paramref name="storage"/>, or null for f32 and f16.</summary>
    public static KvCacheDataType? BlockType(KvStorage storage) => storage switch
    {
        KvStorage.Q8_0 => KvCacheDataType.Q8_0,
        KvStorage.Fp8 => KvCacheDataType.Fp8E4M3,
        _ => null,
    };

    /// <summary>Uniform in [-1, 1) and never exactly zero.</summary>
    public static float[] Random(Random rng, int count, float scale = 1f)
    {
        var a = new float[count];
        for (int i = 0; i < count; i++)
        {
            float x = (float)(rng.NextDouble() * 2 - 1);
            a[i] = (x == 0f ? 0.5f : x) * scale;
        }
        return a;
    }

    public static float[] Poisoned(int count)
    {
        var a = new float[count];
        Array.Fill(a, float.NaN);
        return a;
    }

    /// <summary>Asserts |actual - expected| ≤ atol + rtol * |expected| everywhere (NaN fails).</summary>
    public static void AssertClose(float[] expected, float[] actual, float atol, float rtol, string what)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), what);
        for (int i = 0; i < expected.Length; i++)
        {
            float e = expected[i], a = actual[i];
            if (!(MathF.Abs(a - e) <= atol + rtol * MathF.Abs(e)))
                Assert.Fail($"{what}: element {i} expected {e} got {a}");
        }
    }
}
