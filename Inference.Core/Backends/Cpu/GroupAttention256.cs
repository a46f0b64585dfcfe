using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// The two passes of <see cref="PagedAttention"/> for one token and the query heads of one KV head, with 256-bit vectors
/// (AVX2 + FMA, where the 512-bit path does not run), straight from the cache rows: f16 rows are widened in registers,
/// sixteen values at a time, as the products use them; up to four query heads share each widened row; the block table
/// is read once per block, not once per position.
/// </summary>
/// <remarks>
/// <para>Scores: per position one dot product per head (two accumulators over alternate sixteenths of the head, added,
/// then the lane sums), scaled by 1/√headDim. Values: per head and sixteen output lanes, Σ_j w_j·v_j fused-multiply-added
/// in position order from zero. A position's result depends only on its row and the query, so a token gets the same
/// bits whether it is decoded alone, prefilled with others, or read from rows widened beforehand.</para>
/// <para>f16 → f32 is exact for every finite value and keeps infinities and NaNs (a NaN's payload may be quieted).</para>
/// </remarks>
internal static unsafe class GroupAttention256
{
    /// <summary>Whether this path runs for <paramref name="headDim"/> on this CPU.</summary>
    public static bool IsSupported(int headDim) =>
        !Width512.IsSupported(headDim) && Avx2.IsSupported && Fma.IsSupported && headDim % 16 == 0;

    /// <summary>
    /// Scaled scores of <paramref name="kvMul"/> query heads (queries <paramref name="q"/>, [kvMul, headDim]) into
    /// <paramref name="scores"/>, [kvMul, count] for the positions <paramref name="first"/> … first + count − 1, from one
    /// layer's keys <paramref name="cache"/>, [blocks, blockSize, kvHeads, headDim], where the KV head's part of a position
    /// starts <paramref name="rows"/> = g·headDim in. <paramref name="prefetched"/>: the end of the positions to prefetch (0: none).
    /// <paramref name="queryBuffer"/> (room for <paramref name="queryBufferFloats"/>) may take the queries times 2^112.
    /// </summary>
    public static void Scores<T>(float* q, int kvMul, int headDim, T* cache, int* table, int blockSize, int kvStride, long rows,
        int first, int count, float* scores, float scale, float* queryBuffer, int queryBufferFloats, int prefetched) where T : unmanaged
    {
        int n = kvMul * headDim;
        // NOTE: as in Values, f16 keys are used without their 2^112 re-bias when the queries can carry it instead:
        // k'·(q·2^112) is k·q exactly unless q·2^112 overflows, so only queries under 2^16 in size (and finite) take it.
        if (typeof(T) == typeof(Half) && n <= queryBufferFloats
            && float.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(new ReadOnlySpan<float>(q, n))) < 65536f)
        {
            System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(q, n), Rebias112, new Span<float>(queryBuffer, n));
            Scores<T, Unscaled>(queryBuffer, kvMul, headDim, cache, table, blockSize, kvStride, rows, first, count, scores, scale, prefetched);
        }
        else Scores<T, Rebiased>(q, kvMul, headDim, cache, table, blockSize, kvStride, rows, first, count, scores, scale, prefetched);
    }

    private static void Scores<T, TLoad>(float* q, int kvMul, int headDim, T* cache, int* table, int blockSize, int kvStride, long rows,
        int first, int count, float* scores, float scale, int prefetched) where T : unmanaged where TLoad : IRowLoad
    {
        // NOTE: only the first tile of heads asks for the rows (prefetched positions); the others find them in the cache.
        int m = 0;
        for (; m + 4 <= kvMul; m += 4, prefetched = 0)
            Scores<T, Tile4, TLoad>(q + m * headDim, headDim, cache, table, blockSize, kvStride, rows, first, count, scores + (long)m * count, scale, prefetched);
        float* qm = q + m * headDim, sm = scores + (long)m * count;
        switch (kvMul - m)
        {
            case 1: Scores<T, Tile1, TLoad>(qm, headDim, cache, table, blockSize, kvStride, rows, first, count, sm, scale, prefetched); break;
            case 2: Scores<T, Tile2, TLoad>(qm, headDim, cache, table, blockSize, kvStride, rows, first, count, sm, scale, prefetched); break;
            case 3: Scores<T, Tile3, TLoad>(qm, headDim, cache, table, blockSize, kvStride, rows, first, count, sm, scale, prefetched); break;
        }
    }

    /// <summary>output[m] = Σ_j weights[m, j]·v_(first + j), j &lt; count, for <paramref name="kvMul"/> heads; <paramref name="output"/> is [kvMul, headDim].</summary>
    public static void Values<T>(float* weights, int kvMul, int headDim, T* cache, int* table, int blockSize, int kvStride, long rows,
        int first, int count, float* output, int prefetched) where T : unmanaged
    {
        // NOTE: f16 rows are used as widened but not re-biased (Load16Unscaled) and the weights carry the 2^112 instead:
        // v'·(w·2^112) is v·w exactly (a power of two moves no bits; w ≤ 1 cannot overflow), so the sums are the same bits
        // with two multiplies fewer per sixteen values.
        if (typeof(T) == typeof(Half))
            System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(weights, kvMul * count),
                Rebias112, new Span<float>(weights, kvMul * count));
        int m = 0;
        for (; m + 4 <= kvMul; m += 4, prefetched = 0)
            Values<T, Tile4>(weights + (long)m * count, headDim, cache, table, blockSize, kvStride, rows, first, count, output + m * headDim, prefetched);
        float* wm = weights + (long)m * count, om = output + m * headDim;
        switch (kvMul - m)
        {
            case 1: Values<T, Tile1>(wm, headDim, cache, table, blockSize, kvStride, rows, first, count, om, prefetched); break;
            case 2: Values<T, Tile2>(wm, headDim, cache, table, blockSize, kvStride, rows, first, count, om, prefetched); break;
            case 3: Values<T, Tile3>(wm, headDim, cache, table, blockSize, kvStride, rows, first, count, om, prefetched); break;
        }
    }

    private static void Scores<T, THeads, TLoad>(float* q, int headDim, T* cache, int* table, int blockSize, int kvStride, long rows,
        int first, int count, float* scores, float scale, int prefetched) where T : unmanaged where THeads : IBatchTile where TLoad : IRowLoad
    {
        var scale8 = Vector256.Create(scale);
        // NOTE: two positions at a time: eight independent accumulators and one reduction for both. A lone position
        // was bound by its chain of dependent steps, not by the vector units.
        var next = new KvRowCursor<T>(cache, table, blockSize, kvStride, rows, first, prefetched, headDim * sizeof(T));
        for (int j = 0; j < count; j += 2)
        {
            T* rowA = next.Advance();
            T* rowB = j + 1 < count ? next.Advance() : rowA;
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
            for (int c = 0; c < headDim; c += 16)
            {
                TLoad.Load16(rowA + c, out var ka0, out var ka1);
                TLoad.Load16(rowB + c, out var kb0, out var kb1);
                var qLo = Vector256.Load(q + c);
                var qHi = Vector256.Load(q + c + 8);
                a0 = Fma.MultiplyAdd(ka1, qHi, Fma.MultiplyAdd(ka0, qLo, a0));
                b0 = Fma.MultiplyAdd(kb1, qHi, Fma.MultiplyAdd(kb0, qLo, b0));
                if (THeads.Count > 1)
                {
                    qLo = Vector256.Load(q + headDim + c);
                    qHi = Vector256.Load(q + headDim + c + 8);
                    a1 = Fma.MultiplyAdd(ka1, qHi, Fma.MultiplyAdd(ka0, qLo, a1));
                    b1 = Fma.MultiplyAdd(kb1, qHi, Fma.MultiplyAdd(kb0, qLo, b1));
                }
                if (THeads.Count > 2)
                {
                    qLo = Vector256.Load(q + 2 * headDim + c);
                    qHi = Vector256.Load(q + 2 * headDim + c + 8);
                    a2 = Fma.MultiplyAdd(ka1, qHi, Fma.MultiplyAdd(ka0, qLo, a2));
                    b2 = Fma.MultiplyAdd(kb1, qHi, Fma.MultiplyAdd(kb0, qLo, b2));
                }
                if (THeads.Count > 3)
                {
                    qLo = Vector256.Load(q + 3 * headDim + c);
                    qHi = Vector256.Load(q + 3 * headDim + c + 8);
                    a3 = Fma.MultiplyAdd(ka1, qHi, Fma.MultiplyAdd(ka0, qLo, a3));
                    b3 = Fma.MultiplyAdd(kb1, qHi, Fma.MultiplyAdd(kb0, qLo, b3));
                }
            }
            // [heads 0..3 of position j | heads 0..3 of position j + 1]; each lane sum by the same tree as Width256.Sum4.
            var ha = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
            var hb = Avx.HorizontalAdd(Avx.HorizontalAdd(b0, b1), Avx.HorizontalAdd(b2, b3));
            var s = (Avx.Permute2x128(ha, hb, 0x20) + Avx.Permute2x128(ha, hb, 0x31)) * scale8;
            for (int m = 0; m < THeads.Count; m++) scores[(long)m * count + j] = s.GetElement(m);
            if (j + 1 < count)
                for (int m = 0; m < THeads.Count; m++) scores[(long)m * count + j + 1] = s.GetElement(4 + m);
        }
    }

    private static void Values<T, THeads>(float* weights, int headDim, T* cache, int* table, int blockSize, int kvStride, long rows,
        int first, int count, float* output, int prefetched) where T : unmanaged where THeads : IBatchTile
    {
        float* w1 = weights + count, w2 = w1 + count, w3 = w2 + count;
        for (int c = 0; c < headDim; c += 16)
        {
            Vector256<float> l0 = default, l1 = default, l2 = default, l3 = default;
            Vector256<float> h0 = default, h1 = default, h2 = default, h3 = default;
            // NOTE: the first pass over the positions asks for whole rows; the later passes find them in the cache.
            var next = c == 0
                ? new KvRowCursor<T>(cache, table, blockSize, kvStride, rows, first, prefetched, headDim * sizeof(T))
                : new KvRowCursor<T>(cache, table, blockSize, kvStride, rows + c, first);
            for (int j = 0; j < count; j++)
            {
                Load16Unscaled(next.Advance(), out var v0, out var v1);
                var s0 = Vector256.Create(weights[j]);
                l0 = Fma.MultiplyAdd(v0, s0, l0);
                h0 = Fma.MultiplyAdd(v1, s0, h0);
                if (THeads.Count > 1)
                {
                    var s1 = Vector256.Create(w1[j]);
                    l1 = Fma.MultiplyAdd(v0, s1, l1);
                    h1 = Fma.MultiplyAdd(v1, s1, h1);
                }
                if (THeads.Count > 2)
                {
                    var s2 = Vector256.Create(w2[j]);
                    l2 = Fma.MultiplyAdd(v0, s2, l2);
                    h2 = Fma.MultiplyAdd(v1, s2, h2);
                }
                if (THeads.Count > 3)
                {
                    var s3 = Vector256.Create(w3[j]);
                    l3 = Fma.MultiplyAdd(v0, s3, l3);
                    h3 = Fma.MultiplyAdd(v1, s3, h3);
                }
            }
            l0.Store(output + c);
            h0.Store(output + c + 8);
            if (THeads.Count > 1) { l1.Store(output + headDim + c); h1.Store(output + headDim + c + 8); }
            if (THeads.Count > 2) { l2.Store(output + 2 * headDim + c); h2.Store(output + 2 * headDim + c + 8); }
            if (THeads.Count > 3) { l3.Store(output + 3 * headDim + c); h3.Store(output + 3 * headDim + c + 8); }
        }
    }

    // NOTE: f16 rows widen sixteen values at a time (F16Weights.WidenUnscaled16); the 2^112 re-bias is applied here
    // or carried by the queries and the softmax weights.
    private const uint Rebias = (127 + 112) << 23;

    /// <summary>How the scores read sixteen key values.</summary>
    private interface IRowLoad
    {
        static abstract void Load16<T>(T* p, out Vector256<float> lo, out Vector256<float> hi) where T : unmanaged;
    }

    /// <summary>As floats.</summary>
    private readonly struct Rebiased : IRowLoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load16<T>(T* p, out Vector256<float> lo, out Vector256<float> hi) where T : unmanaged
        {
            Load16Unscaled(p, out lo, out hi);
            if (typeof(T) == typeof(float)) return;
            var rebias = Vector256.Create(Rebias).AsSingle();
            lo *= rebias;
            hi *= rebias;
        }
    }

    /// <summary>f16 ones without the 2^112 (the queries carry it).</summary>
    private readonly struct Unscaled : IRowLoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load16<T>(T* p, out Vector256<float> lo, out Vector256<float> hi) where T : unmanaged =>
            Load16Unscaled(p, out lo, out hi);
    }

    private static readonly float Rebias112 = BitConverter.UInt32BitsToSingle(Rebias);

    /// <summary>Sixteen values as floats, f16 ones still to be multiplied by 2^112.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Load16Unscaled<T>(T* p, out Vector256<float> lo, out Vector256<float> hi) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            lo = Vector256.Load((float*)p);
            hi = Vector256.Load((float*)p + 8);
            return;
        }
        F16Weights.WidenUnscaled16((ushort*)p, out lo, out hi);
    }
}
