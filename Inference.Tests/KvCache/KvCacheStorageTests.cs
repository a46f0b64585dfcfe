using Inference.KvCache;

namespace Inference.Tests.KvCache;

public class KvCacheStorageTests
{
    [Test]
    public void WriteThenReadBackF32IsExactAndF16IsClose()
    {
        var rng = new Random(1);
        foreach (var type in new[] { KvCacheDataType.Float32, KvCacheDataType.Float16 })
        {
            using var s = new KvCacheStorage(3, 5, 4, 2, 8, type);
            var k = Enumerable.Range(0, 16).Select(_ => (float)rng.NextDouble() * 4 - 2).ToArray();
            var v = Enumerable.Range(0, 16).Select(_ => (float)rng.NextDouble() * 4 - 2).ToArray();
            s.Write(2, 3, 1, k, v);
            int offset = (3 * 4 + 1) * 16; // [block 3, slot 1, head 0, dim 0]
            for (int e = 0; e < 16; e++)
            {
                float rk = type == KvCacheDataType.Float32 ? s.GetKeys<float>(2)[offset + e] : (float)s.GetKeys<Half>(2)[offset + e];
                float rv = type == KvCacheDataType.Float32 ? s.GetValues<float>(2)[offset + e] : (float)s.GetValues<Half>(2)[offset + e];
                float tol = type == KvCacheDataType.Float32 ? 0 : 2e-3f;
                Assert.That(rk, Is.EqualTo(k[e]).Within(tol));
                Assert.That(rv, Is.EqualTo(v[e]).Within(tol));
            }
        }
    }

    [Test]
    public void CopyBlockCopiesEveryLayerKeysAndValues()
    {
        using var s = new KvCacheStorage(2, 4, 2, 1, 3, KvCacheDataType.Float32);
        for (int layer = 0; layer < 2; layer++)
            for (int slot = 0; slot < 2; slot++)
                s.Write(layer, 1, slot, [layer, slot, 1], [layer, slot, 2]);
        s.CopyBlocks([new BlockCopy(1, 3)]);
        for (int layer = 0; layer < 2; layer++)
        {
            Assert.That(s.GetKeys<float>(layer).Slice(3 * 6, 6).ToArray(), Is.EqualTo(new float[] { layer, 0, 1, layer, 1, 1 }));
            Assert.That(s.GetValues<float>(layer).Slice(3 * 6, 6).ToArray(), Is.EqualTo(new float[] { layer, 0, 2, layer, 1, 2 }));
        }
    }

    [Test]
    public void CreateSizesFromBudget()
    {
        var options = new KvCacheOptions { BlockSize = 16, PoolBytes = 1 << 20, DataType = KvCacheDataType.Float16 };
        // per block: 2 (K,V) × 4 layers × 16 slots × 2 heads × 32 dims × 2 bytes = 16 KiB → 64 blocks in 1 MiB
        Assert.That(KvCacheStorage.GetBlockByteCount(4, 16, 2, 32, KvCacheDataType.Float16), Is.EqualTo(16384));
        using var s = KvCacheStorage.Create(options, 4, 2, 32);
        Assert.That(s.BlockCount, Is.EqualTo(64));
        Assert.That(s.ByteCount, Is.EqualTo(1 << 20));
        Assert.Throws<ArgumentException>(() => KvCacheStorage.Create(options with { PoolBytes = 100 }, 4, 2, 32));
    }

    [Test]
    public void FractionUsesAvailableMemory()
    {
        var options = new KvCacheOptions { MemoryFraction = 0.001 };
        long expected = (long)(0.001 * GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
        Assert.That(options.ResolvePoolBytes(), Is.EqualTo(expected));
        Assert.That(expected, Is.GreaterThan(0));
    }

    [Test]
    public void WrongElementTypeOrDisposedThrows()
    {
        var s = new KvCacheStorage(1, 1, 1, 1, 1, KvCacheDataType.Float16);
        Assert.Throws<InvalidOperationException>(() => s.GetKeys<float>(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => s.Write(0, 1, 0, [1f], [1f]));
        s.Dispose();
        Assert.Throws<ObjectDisposedException>(() => s.GetKeys<Half>(0));
    }

    [Test]
    public void OptionsAreValidated()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new KvCacheOptions { BlockSize = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new KvCacheOptions { BlockSize = KvCacheOptions.MaxBlockSize + 1 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new KvCacheOptions { PoolBytes = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new KvCacheOptions { MemoryFraction = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new KvCacheOptions { MemoryFraction = 1.5 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new KvCacheOptions { DataType = (KvCacheDataType)9 });
        var o = new KvCacheOptions();
        Assert.That((o.BlockSize, o.DataType, o.PrefixCaching), Is.EqualTo((16, KvCacheDataType.Float16, PrefixCachingMode.Enabled)));
    }
}
