using System.Runtime.InteropServices;
using Inference.KvCache;
using Inference.Models;
using Inference.Models.Graph;

namespace Inference.Engine;

/// <summary>
/// Performs the <see cref="KvCompaction"/>s of KV eviction on any <see cref="IKvBlockStorage"/> (host or device
/// memory): per layer it reads the affected blocks, moves the kept tokens down, rotates each moved key back by the
/// positions it moved and writes the blocks back.
/// </summary>
/// <remarks>
/// <para>
/// NOTE: keys are stored with RoPE applied at their cache position p, k' = R(p)·k. A token moved from p to p − d must
/// look as if rotated at p − d: R(−d)·R(p)·k = R(p − d)·k, because rotations by angles θᵢ·p compose additively. So one
/// rotation by −d of the stored row re-bases it, whatever the scaling that produced the frequencies θᵢ (linear, Llama 3,
/// LongRoPE, YaRN) and without the attention factor, which the stored row already carries. This is llama.cpp's context
/// shift. The alternative, keys stored unrotated and rotated at every read, would change every attention kernel (CPU,
/// ILGPU, PTX) and cost a rotation per key per query; re-basing costs one rotation per moved key per eviction, and
/// eviction works a block of tokens at a time.
/// </para>
/// <para>
/// With f16 storage each re-rotation rounds the key to f16 again (about 2⁻¹¹ relative); a token is moved at most once per
/// block of generated tokens while it stays cached. The block formats (Q8_0, FP8) are dequantized one head row at a time
/// (exact), rotated in double and quantized again, which adds one more quantization's error per move (measured in
/// <c>KvEvictionTests</c>, stated in docs/kv-cache.md). Values are moved as stored. Engine thread only; no allocation once
/// its buffers have grown.
/// </para>
/// </remarks>
internal sealed class KvCompactor
{
    private readonly IKvBlockStorage _storage;
    private readonly RopeTable?[] _keyRope;
    private byte[] _inKeys = [], _inValues = [], _outKeys = [], _outValues = [];
    private readonly float[] _row;
    private readonly double[] _cos, _sin;

    public KvCompactor(IKvBlockStorage storage, ModelGraph graph)
    {
        if (!Supports(storage.DataType))
            throw new NotSupportedException($"KV eviction re-rotates stored keys, which it does for f32, f16, Q8_0 and FP8 K/V; not for {storage.DataType}");
        _storage = storage;
        _keyRope = KeyRopeTables(graph, storage.LayerCount);
        _row = new float[storage.HeadDim];
        int half = storage.HeadDim / 2;
        _cos = new double[half];
        _sin = new double[half];
    }

    /// <summary>Whether keys of <paramref name="dataType"/> can be re-rotated.</summary>
    public static bool Supports(KvCacheDataType dataType) =>
        dataType is KvCacheDataType.Float32 or KvCacheDataType.Float16 or KvCacheDataType.Q8_0 or KvCacheDataType.Fp8E4M3;

    /// <summary>The rotation applied to each layer's keys before they are stored (null: the layer's keys are not rotated).</summary>
    internal static RopeTable?[] KeyRopeTables(ModelGraph graph, int layerCount)
    {
        var result = new RopeTable?[layerCount];
        foreach (var op in graph.Ops)
        {
            if (op.Kind != OpKind.Attention || (uint)op.Layer >= (uint)layerCount) continue;
            foreach (var rope in graph.Ops)
                if (rope.Kind == OpKind.Rope && rope.Layer == op.Layer && rope.Dst == op.Src2) result[op.Layer] = graph.RopeTables[rope.Param];
        }
        return result;
    }

    /// <summary>Performs <paramref name="compactions"/> and <paramref name="copies"/> in the order the manager recorded them.</summary>
    public static void Perform(IKvBlockStorage storage, KvCompactor? compactor, ReadOnlySpan<BlockCopy> copies, ReadOnlySpan<KvCompaction> compactions)
    {
        int done = 0;
        foreach (var c in compactions)
        {
            storage.CopyBlocks(copies[done..c.CopiesBefore]);
            done = c.CopiesBefore;
            (compactor ?? throw new InvalidOperationException("KV compaction without a compactor")).Apply(c);
        }
        storage.CopyBlocks(copies[done..]);
    }

    /// <summary>Moves and re-rotates the kept tokens of one compaction, every layer.</summary>
    public void Apply(KvCompaction c)
    {
        var s = _storage;
        int blockBytes = KvBlockStorage.LayerBlockByteCount(s);
        int rowBytes = s.KvHeadCount * KvBlockFormat.RowBytes(s.DataType, s.HeadDim);   // one token's K (or V)
        int inBytes = c.SourceBlocks.Length * blockBytes, outBytes = c.DestinationBlocks.Length * blockBytes;
        Grow(ref _inKeys, inBytes);
        Grow(ref _inValues, inBytes);
        Grow(ref _outKeys, outBytes);
        Grow(ref _outValues, outBytes);
        int first = c.FirstIndex;
        for (int layer = 0; layer < s.LayerCount; layer++)
        {
            for (int b = 0; b < c.SourceBlocks.Length; b++)
                s.ReadBlock(layer, c.SourceBlocks[b], _inKeys.AsSpan(b * blockBytes, blockBytes), _inValues.AsSpan(b * blockBytes, blockBytes));
            var rope = _keyRope[layer];
            int cachedDelta = 0;
            for (int j = 0; j < c.Sources.Length; j++)
            {
                int from = (c.Sources[j] - first) * rowBytes, to = j * rowBytes;
                _inValues.AsSpan(from, rowBytes).CopyTo(_outValues.AsSpan(to, rowBytes));
                var key = _outKeys.AsSpan(to, rowBytes);
                _inKeys.AsSpan(from, rowBytes).CopyTo(key);
                int delta = first + j - c.Sources[j];
                if (delta == 0 || rope is null) continue;
                if (delta != cachedDelta)
                {
                    for (int i = 0; i < rope.RopeDim / 2; i++)
                    {
                        double theta = delta * rope.InvFreq[i];
                        _cos[i] = Math.Cos(theta);
                        _sin[i] = Math.Sin(theta);
                    }
                    cachedDelta = delta;
                }
                Rotate(key, rope);
            }
            for (int b = 0; b < c.DestinationBlocks.Length; b++)
                s.WriteBlock(layer, c.DestinationBlocks[b], _outKeys.AsSpan(b * blockBytes, blockBytes), _outValues.AsSpan(b * blockBytes, blockBytes));
        }
    }

    /// <summary>Rotates every head of one stored key row by the angles in _cos/_sin.</summary>
    private void Rotate(Span<byte> key, RopeTable rope)
    {
        var type = _storage.DataType;
        int hd = _storage.HeadDim, half = rope.RopeDim / 2, headBytes = KvBlockFormat.RowBytes(type, hd);
        bool neox = rope.Layout == RopeLayout.Neox;
        for (int h = 0; h < _storage.KvHeadCount; h++)
        {
            var head = key.Slice(h * headBytes, headBytes);
            switch (type)
            {
                case KvCacheDataType.Float32: MemoryMarshal.Cast<byte, float>(head).CopyTo(_row); break;
                case KvCacheDataType.Float16:
                {
                    var halves = MemoryMarshal.Cast<byte, Half>(head);
                    for (int d = 0; d < hd; d++) _row[d] = (float)halves[d];
                    break;
                }
                default: KvBlockFormat.Dequantize(type, head, _row); break;
            }
            for (int i = 0; i < half; i++)
            {
                int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                double x0 = _row[i0], x1 = _row[i1];
                _row[i0] = (float)(x0 * _cos[i] - x1 * _sin[i]);
                _row[i1] = (float)(x0 * _sin[i] + x1 * _cos[i]);
            }
            switch (type)
            {
                case KvCacheDataType.Float32: _row.CopyTo(MemoryMarshal.Cast<byte, float>(head)); break;
                case KvCacheDataType.Float16:
                {
                    System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(_row.AsSpan(0, hd), MemoryMarshal.Cast<byte, Half>(head));
                    break;
                }
                default: KvBlockFormat.Quantize(type, _row, head); break;
            }
        }
    }

    private static void Grow(ref byte[] buffer, int bytes)
    {
        if (buffer.Length < bytes) buffer = new byte[Math.Max(bytes, buffer.Length * 2)];
    }
}
