using System.Buffers;
using System.Numerics.Tensors;
using Inference.Backends.Cpu;

namespace Inference.Models;

/// <summary>
/// The plain KV cache: one contiguous max-length slab per sequence and layer. It is the reference the paged cache is
/// tested against, and the simplest way to run a model.
/// </summary>
public sealed class ContiguousKvCache : IKvAttention
{
    private readonly ModelConfig _config;
    private readonly int _maxLength;
    private readonly Dictionary<long, float[][]> _keys = new();   // per sequence: per layer [maxLength, kvHeads, headDim]
    private readonly Dictionary<long, float[][]> _values = new(); // same shape as keys

    /// <summary>Creates a cache for sequences of at most <paramref name="maxLength"/> tokens.</summary>
    public ContiguousKvCache(ModelConfig config, int maxLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 1);
        _config = config;
        _maxLength = maxLength;
    }

    /// <summary>Forgets a sequence.</summary>
    public void Remove(long sequenceId)
    {
        _keys.Remove(sequenceId);
        _values.Remove(sequenceId);
    }

    /// <inheritdoc />
    public void Attend(int layer, ModelBatch batch, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, WorkerPool pool, int slidingWindow = 0, float logitSoftCap = 0f)
    {
        int kvDim = _config.KvDim;
        var keys = new float[batch.Segments.Count][];
        var values = new float[batch.Segments.Count][];
        for (int s = 0; s < batch.Segments.Count; s++)
        {
            var seg = batch.Segments[s];
            if (seg.StartPosition + seg.TokenCount > _maxLength)
                throw new InvalidOperationException($"sequence {seg.SequenceId} exceeds the cache length {_maxLength}");
            int needed = seg.StartPosition + seg.TokenCount;
            if (!_keys.TryGetValue(seg.SequenceId, out var kl) || kl[layer].Length < (long)needed * kvDim)
            {
                // Grow by doubling (all layers at once) so a short sequence does not reserve the whole context.
                int capacity = Math.Min(_maxLength, Math.Max(64, needed * 2));
                var vl = _values.GetValueOrDefault(seg.SequenceId);
                var newK = new float[_config.LayerCount][];
                var newV = new float[_config.LayerCount][];
                for (int l = 0; l < newK.Length; l++)
                {
                    newK[l] = new float[(long)capacity * kvDim];
                    newV[l] = new float[(long)capacity * kvDim];
                    kl?[l].AsSpan().CopyTo(newK[l]);
                    vl?[l].AsSpan().CopyTo(newV[l]);
                }
                kl = newK;
                _keys[seg.SequenceId] = newK;
                _values[seg.SequenceId] = newV;
            }
            keys[s] = kl[layer];
            values[s] = _values[seg.SequenceId][layer];
            k.Slice(seg.TokenStart * kvDim, seg.TokenCount * kvDim).CopyTo(keys[s].AsSpan(seg.StartPosition * kvDim));
            v.Slice(seg.TokenStart * kvDim, seg.TokenCount * kvDim).CopyTo(values[s].AsSpan(seg.StartPosition * kvDim));
        }

        unsafe
        {
            fixed (float* pq = q)
            fixed (float* po = output)
            {
                var job = new AttentionJob(_config, batch, keys, values, pq, po, slidingWindow, logitSoftCap);
                pool.Run(batch.TokenCount * _config.HeadCount, job);
            }
        }
    }

    private readonly unsafe struct AttentionJob(ModelConfig config, ModelBatch batch, float[][] keys, float[][] values, float* q, float* output, int slidingWindow, float softCap) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int heads = config.HeadCount, hd = config.HeadDim, kvDim = config.KvDim, kvMul = config.KvMul;
            float scale = 1f / MathF.Sqrt(hd);
            int maxLen = 0;
            foreach (var seg in batch.Segments) maxLen = Math.Max(maxLen, seg.StartPosition + seg.TokenCount);
            float[] scores = ArrayPool<float>.Shared.Rent(maxLen);
            int segIndex = 0;
            for (int item = start; item < end; item++)
            {
                int t = item / heads, h = item % heads;
                while (t >= batch.Segments[segIndex].TokenStart + batch.Segments[segIndex].TokenCount) segIndex++;
                while (t < batch.Segments[segIndex].TokenStart) segIndex--;
                var seg = batch.Segments[segIndex];
                int pos = batch.Positions[t];
                var kc = keys[segIndex];
                var vc = values[segIndex];
                int kvh = h / kvMul;
                var qh = new ReadOnlySpan<float>(q + ((long)t * heads + h) * hd, hd);
                int first = slidingWindow > 0 ? Math.Max(0, pos + 1 - slidingWindow) : 0; // local layers see pos − W + 1..pos
                var sc = scores.AsSpan(0, pos + 1 - first);
                for (int j = first; j <= pos; j++)
                    sc[j - first] = TensorPrimitives.Dot(qh, kc.AsSpan(j * kvDim + kvh * hd, hd)) * scale;
                if (softCap != 0f)
                {
                    TensorPrimitives.Multiply(sc, 1f / softCap, sc);
                    TensorPrimitives.Tanh(sc, sc);
                    TensorPrimitives.Multiply(sc, softCap, sc);
                }
                TensorPrimitives.SoftMax(sc, sc);
                var oh = new Span<float>(output + ((long)t * heads + h) * hd, hd);
                oh.Clear();
                for (int j = first; j <= pos; j++)
                    TensorPrimitives.MultiplyAdd(vc.AsSpan(j * kvDim + kvh * hd, hd), sc[j - first], oh, oh);
            }
            ArrayPool<float>.Shared.Return(scores);
        }
    }
}
