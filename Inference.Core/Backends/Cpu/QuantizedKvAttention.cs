using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.KvCache;

namespace Inference.Backends.Cpu;

/// <summary>
/// <see cref="PagedAttention"/> over a cache of 34-byte blocks (<see cref="KvCacheDataType.Q8_0"/>,
/// <see cref="KvCacheDataType.Fp8E4M3"/>): the kernels read the blocks as they are stored. Keys: per block of 32 the
/// query's 32 floats times the 32 codes (eight at a time widened in registers), summed, times the block's scale.
/// Values: each block's codes, eight at a time in registers, fused-multiply-added into the output with the weight times
/// the block's scale. Nothing is dequantized into memory.
/// </summary>
/// <remarks>
/// <para>
/// Computes what <see cref="PagedAttentionReference.Forward"/> computes over the dequantized cache
/// (<see cref="PagedAttentionReference.Gather(in PagedAttentionShape, ReadOnlySpan{byte}, KvCacheDataType, ReadOnlySpan{int}, int)"/>),
/// in float: every d · code is exact in float, so the kernel differs from the float64 reference by its float sums only
/// (about 1e-6 relative). The queries stay in float: llama.cpp's CPU flash attention quantizes them to Q8_0 before the
/// K products, which the engine does not.
/// </para>
/// <para>
/// The same window, soft-cap, two-pass softmax and scratch rules as <see cref="PagedAttention"/>. A token's result
/// depends only on its query and the rows it sees, so it is the same bits decoded alone or prefilled with others, on
/// one thread or many.
/// </para>
/// </remarks>
public static class QuantizedKvAttention
{
    /// <summary>Floats of scratch the single-threaded <c>Forward</c> needs for a context of <paramref name="contextLength"/> positions.</summary>
    public static int GetScratchLength(in PagedAttentionShape shape, int contextLength) =>
        shape.KvMul * contextLength + shape.HeadDim;

    /// <summary>Attention of <paramref name="query"/> tokens at positions <paramref name="startPosition"/>.. over a block-format paged cache.</summary>
    /// <param name="shape">Heads, KV heads, head size (a multiple of 32) and block size.</param>
    /// <param name="query">[tokenCount, heads, headDim].</param>
    /// <param name="keyCache">One layer's keys: [blockCount, blockSize, kvHeads, headDim / 32 blocks of 34 bytes].</param>
    /// <param name="valueCache">One layer's values, laid out as <paramref name="keyCache"/>.</param>
    /// <param name="type"><see cref="KvCacheDataType.Q8_0"/> or <see cref="KvCacheDataType.Fp8E4M3"/>.</param>
    /// <param name="blockTable">The sequence's physical block ids in logical order; covers start + tokenCount positions.</param>
    /// <param name="startPosition">Position of the first query token.</param>
    /// <param name="output">[tokenCount, heads, headDim].</param>
    /// <param name="scratch">At least <see cref="GetScratchLength"/>(shape, start + tokenCount) floats.</param>
    public static unsafe void Forward(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<byte> keyCache,
        ReadOnlySpan<byte> valueCache,
        KvCacheDataType type,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output,
        Span<float> scratch) =>
        Forward(shape, query, keyCache, valueCache, type, blockTable, startPosition, output, scratch, Vector256Path.IsSupported);

    /// <summary>The single-threaded <c>Forward</c>, with the 256-bit path only where <paramref name="vectors"/> allows it (tests run the scalar path with false).</summary>
    internal static unsafe void Forward(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<byte> keyCache,
        ReadOnlySpan<byte> valueCache,
        KvCacheDataType type,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output,
        Span<float> scratch,
        bool vectors)
    {
        int contextLength = Validate(shape, query, keyCache, valueCache, type, blockTable, startPosition, output);
        if (scratch.Length < GetScratchLength(shape, contextLength))
            throw new ArgumentException($"scratch needs {GetScratchLength(shape, contextLength)} floats.", nameof(scratch));
        int tokenCount = contextLength - startPosition;
        fixed (float* q = query)
        fixed (byte* k = keyCache)
        fixed (byte* v = valueCache)
        fixed (int* table = blockTable)
        fixed (float* o = output)
        fixed (float* s = scratch)
        {
            for (int i = 0; i < tokenCount; i++)
                for (int g = 0; g < shape.KvHeadCount; g++)
                    AttendGroup(shape, type, q, k, v, table, i, startPosition + i + 1, g, o, s, prefetch: tokenCount == 1, vectors);
        }
    }

    /// <summary>
    /// As the single-threaded <c>Forward</c>, with the (token, KV head) pairs spread over <paramref name="pool"/>; each
    /// thread keeps its own scratch. Results are bit-identical to the single-threaded call.
    /// </summary>
    public static unsafe void Forward(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<byte> keyCache,
        ReadOnlySpan<byte> valueCache,
        KvCacheDataType type,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output,
        WorkerPool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        int contextLength = Validate(shape, query, keyCache, valueCache, type, blockTable, startPosition, output);
        int tokenCount = contextLength - startPosition;
        fixed (float* q = query)
        fixed (byte* k = keyCache)
        fixed (byte* v = valueCache)
        fixed (int* table = blockTable)
        fixed (float* o = output)
        {
            var job = new GroupJob(shape, type, q, k, v, table, startPosition, tokenCount, o);
            long cacheBytes = 2L * tokenCount * contextLength * shape.KvHeadCount * KvBlockFormat.RowBytes(type, shape.HeadDim);
            pool.Run(tokenCount * shape.KvHeadCount, job, cacheBytes);
        }
    }

    [ThreadStatic]
    private static float[]? t_scratch;

    private readonly unsafe struct GroupJob(
        PagedAttentionShape shape, KvCacheDataType type, float* query, byte* keys, byte* values, int* blockTable,
        int startPosition, int tokenCount, float* output) : IRangeJob
    {
        public void Execute(int start, int end)
        {
            int needed = GetScratchLength(shape, startPosition + tokenCount);
            var scratch = t_scratch;
            if (scratch is null || scratch.Length < needed) t_scratch = scratch = new float[needed];
            fixed (float* s = scratch)
            {
                // Items run KV head by KV head (g-major), as in PagedAttention.
                for (int item = start; item < end; item++)
                {
                    int g = item / tokenCount, i = item % tokenCount;
                    AttendGroup(shape, type, query, keys, values, blockTable, i, startPosition + i + 1, g, output, s, prefetch: tokenCount == 1, Vector256Path.IsSupported);
                }
            }
        }
    }

    /// <summary>Checks the arguments; returns the context length start + tokenCount.</summary>
    private static int Validate(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<byte> keyCache,
        ReadOnlySpan<byte> valueCache,
        KvCacheDataType type,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output)
    {
        if (!KvBlockFormat.IsBlockFormat(type)) throw new ArgumentOutOfRangeException(nameof(type), type, "not a block format (Q8_0 or Fp8E4M3)");
        KvBlockFormat.CheckHeadDim(type, shape.HeadDim);
        return PagedAttention.CheckCall(shape, query, keyCache, valueCache, shape.BlockSize * shape.KvHeadCount * KvBlockFormat.RowBytes(type, shape.HeadDim),
            "[blockCount, blockSize, kvHeads, row bytes]", blockTable, startPosition, output);
    }

    /// <summary>Query token i, the kvMul query heads of KV head g, over the visible positions before <paramref name="contextLength"/>.</summary>
    private static unsafe void AttendGroup(
        in PagedAttentionShape shape, KvCacheDataType type, float* query, byte* keys, byte* values, int* table,
        int i, int contextLength, int g, float* output, float* scratch, bool prefetch, bool vectors)
    {
        int headDim = shape.HeadDim, kvMul = shape.KvMul, rowBytes = KvBlockFormat.RowBytes(type, headDim);
        int tokenBytes = shape.KvHeadCount * rowBytes;
        float scale = 1f / MathF.Sqrt(headDim);
        int first = shape.FirstVisible(contextLength), n = contextLength - first;
        float* q = query + (long)(i * shape.HeadCount + g * kvMul) * headDim;   // [kvMul, headDim]
        float* o = output + (long)(i * shape.HeadCount + g * kvMul) * headDim;  // [kvMul, headDim]
        float* scores = scratch;                                                // [kvMul, n]
        var layout = new Layout(table, shape.BlockSize, tokenBytes, (long)g * rowBytes, first, n, prefetch ? contextLength : 0, rowBytes);
        // NOTE: one block reader per path, generic over how a code becomes a number: the format is decided here, once.
        if (type == KvCacheDataType.Q8_0) Attend<Q8Codes>(q, kvMul, headDim, keys, values, layout, scores, scratch + kvMul * n, scale, shape.LogitSoftCap, o, vectors);
        else Attend<Fp8Codes>(q, kvMul, headDim, keys, values, layout, scores, scratch + kvMul * n, scale, shape.LogitSoftCap, o, vectors);
    }

    private static unsafe void Attend<TCodes>(float* q, int kvMul, int headDim, byte* keys, byte* values, in Layout layout,
        float* scores, float* row, float scale, float softCap, float* o, bool vectors) where TCodes : ICodes
    {
        if (vectors) Vector256Path.Attend<TCodes>(q, kvMul, headDim, keys, values, layout, scores, scale, softCap, o);
        else AttendScalar<TCodes>(q, kvMul, headDim, keys, values, layout, scores, row, scale, softCap, o);
    }

    /// <summary>Where one KV head's rows are: the sequence's table, the geometry, the window and the prefetch end.</summary>
    private readonly unsafe struct Layout(int* table, int blockSize, int tokenBytes, long rows, int first, int count, int prefetched, int rowBytes)
    {
        private readonly int* Table = table;
        private readonly int BlockSize = blockSize, TokenBytes = tokenBytes, First = first;
        private readonly long Rows = rows;

        /// <summary>Visible positions.</summary>
        public readonly int Count = count;

        /// <summary>End of the positions whose rows are prefetched (0: none).</summary>
        public readonly int Prefetched = prefetched;

        /// <summary>Bytes of one head's row.</summary>
        public readonly int RowBytes = rowBytes;

        /// <summary>A cursor over the rows, starting <paramref name="offset"/> bytes into each; with prefetching when asked.</summary>
        public KvRowCursor<byte> Cursor(byte* cache, int offset, bool prefetch) => prefetch
            ? new KvRowCursor<byte>(cache, Table, BlockSize, TokenBytes, Rows + offset, First, Prefetched, RowBytes)
            : new KvRowCursor<byte>(cache, Table, BlockSize, TokenBytes, Rows + offset, First);
    }

    /// <summary>Without 256-bit vectors: each row dequantized into <paramref name="row"/>, then the float loops.</summary>
    private static unsafe void AttendScalar<TCodes>(float* q, int kvMul, int headDim, byte* keys, byte* values,
        in Layout layout, float* scores, float* row, float scale, float softCap, float* o) where TCodes : ICodes
    {
        int n = layout.Count;
        var widened = new Span<float>(row, headDim);
        var next = layout.Cursor(keys, 0, prefetch: false);
        for (int j = 0; j < n; j++)
        {
            Dequantize<TCodes>(next.Advance(), headDim, row);
            for (int m = 0; m < kvMul; m++) scores[m * n + j] = TensorPrimitives.Dot(new ReadOnlySpan<float>(q + m * headDim, headDim), widened) * scale;
        }
        PagedAttention.Softmax(new Span<float>(scores, kvMul * n), kvMul, n, 1f, softCap);
        var output = new Span<float>(o, kvMul * headDim);
        output.Clear();
        next = layout.Cursor(values, 0, prefetch: false);
        for (int j = 0; j < n; j++)
        {
            Dequantize<TCodes>(next.Advance(), headDim, row);
            for (int m = 0; m < kvMul; m++)
            {
                var om = output.Slice(m * headDim, headDim);
                TensorPrimitives.MultiplyAdd(widened, scores[m * n + j], om, om);
            }
        }
    }

    /// <summary>One row of blocks as floats: per block its scale times each code (exact in float).</summary>
    private static unsafe void Dequantize<TCodes>(byte* row, int headDim, float* dst) where TCodes : ICodes
    {
        for (int b = 0; b < headDim / KvBlockFormat.BlockValues; b++)
        {
            byte* block = row + b * KvBlockFormat.BlockBytes;
            float d = Fp16.ToFloat(*(ushort*)block);
            for (int i = 0; i < KvBlockFormat.BlockValues; i++) dst[b * KvBlockFormat.BlockValues + i] = d * TCodes.Decode(block[2 + i]);
        }
    }

    /// <summary>How a block's codes become numbers: eight at a time in registers, or one.</summary>
    private unsafe interface ICodes
    {
        static abstract Vector256<float> Load8(byte* codes);

        static abstract float Decode(byte code);
    }

    /// <summary>Q8_0: signed bytes.</summary>
    private readonly unsafe struct Q8Codes : ICodes
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load8(byte* codes) => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)codes));

        public static float Decode(byte code) => (sbyte)code;
    }

    /// <summary>
    /// FP8 E4M3: the sign to bit 31 and the seven exponent and mantissa bits to bits 26…20 make a float 2^-120 times the
    /// code's value (subnormal codes included: they land on float subnormals of the same mantissa), so one multiply by
    /// 2^120 finishes it, exactly.
    /// </summary>
    private readonly unsafe struct Fp8Codes : ICodes
    {
        private static readonly float Two120 = BitConverter.Int32BitsToSingle((127 + 120) << 23);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load8(byte* codes)
        {
            var x = Avx2.ConvertToVector256Int32((sbyte*)codes); // sign-extended: bit 31 is the code's sign
            var bits = (x & Vector256.Create(int.MinValue)) | Avx2.ShiftLeftLogical(x & Vector256.Create(0x7F), 20);
            return bits.AsSingle() * Vector256.Create(Two120);
        }

        public static float Decode(byte code) => KvBlockFormat.FromE4M3(code);
    }

    /// <summary>The two passes with 256-bit vectors (AVX2 + FMA), up to four query heads sharing each row's registers.</summary>
    private static unsafe class Vector256Path
    {
        public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

        public static void Attend<TCodes>(float* q, int kvMul, int headDim, byte* keys, byte* values, in Layout layout,
            float* scores, float scale, float softCap, float* o) where TCodes : ICodes
        {
            int n = layout.Count;
            // NOTE: only the first tile of heads asks for the rows to be prefetched; the others find them in the cache.
            bool prefetch = layout.Prefetched > 0;
            int m = 0;
            for (; m + 4 <= kvMul; m += 4, prefetch = false)
                Scores<TCodes, Tile4>(q + m * headDim, headDim, keys, layout, prefetch, scores + (long)m * n, scale);
            Tile(kvMul - m, q + m * headDim, headDim, keys, layout, prefetch, scores + (long)m * n, scale);

            PagedAttention.Softmax(new Span<float>(scores, kvMul * n), kvMul, n, 1f, softCap);

            prefetch = layout.Prefetched > 0;
            m = 0;
            for (; m + 4 <= kvMul; m += 4, prefetch = false)
                Values<TCodes, Tile4>(scores + (long)m * n, headDim, values, layout, prefetch, o + m * headDim);
            switch (kvMul - m)
            {
                case 1: Values<TCodes, Tile1>(scores + (long)m * n, headDim, values, layout, prefetch, o + m * headDim); break;
                case 2: Values<TCodes, Tile2>(scores + (long)m * n, headDim, values, layout, prefetch, o + m * headDim); break;
                case 3: Values<TCodes, Tile3>(scores + (long)m * n, headDim, values, layout, prefetch, o + m * headDim); break;
            }

            static void Tile(int heads, float* q, int headDim, byte* keys, in Layout layout, bool prefetch, float* scores, float scale)
            {
                switch (heads)
                {
                    case 1: Scores<TCodes, Tile1>(q, headDim, keys, layout, prefetch, scores, scale); break;
                    case 2: Scores<TCodes, Tile2>(q, headDim, keys, layout, prefetch, scores, scale); break;
                    case 3: Scores<TCodes, Tile3>(q, headDim, keys, layout, prefetch, scores, scale); break;
                }
            }
        }

        /// <summary>Scaled scores of <typeparamref name="THeads"/> heads: per block of 32, Σ q·code (two partial sums), times the block's scale.</summary>
        private static void Scores<TCodes, THeads>(float* q, int headDim, byte* cache, in Layout layout, bool prefetch, float* scores, float scale)
            where TCodes : ICodes where THeads : IBatchTile
        {
            int count = layout.Count, blocks = headDim / KvBlockFormat.BlockValues;
            var next = layout.Cursor(cache, 0, prefetch);
            for (int j = 0; j < count; j++)
            {
                byte* row = next.Advance();
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int b = 0; b < blocks; b++)
                {
                    byte* block = row + b * KvBlockFormat.BlockBytes;
                    var d = Vector256.Create(Fp16.ToFloat(*(ushort*)block));
                    var k0 = TCodes.Load8(block + 2);
                    var k1 = TCodes.Load8(block + 10);
                    var k2 = TCodes.Load8(block + 18);
                    var k3 = TCodes.Load8(block + 26);
                    float* qb = q + b * KvBlockFormat.BlockValues;
                    a0 = Fma.MultiplyAdd(Dot32(qb, k0, k1, k2, k3), d, a0);
                    if (THeads.Count > 1) a1 = Fma.MultiplyAdd(Dot32(qb + headDim, k0, k1, k2, k3), d, a1);
                    if (THeads.Count > 2) a2 = Fma.MultiplyAdd(Dot32(qb + 2 * headDim, k0, k1, k2, k3), d, a2);
                    if (THeads.Count > 3) a3 = Fma.MultiplyAdd(Dot32(qb + 3 * headDim, k0, k1, k2, k3), d, a3);
                }
                // [heads 0..3, lower lanes | heads 0..3, upper lanes], then the two halves added.
                var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
                var s = (h.GetLower() + h.GetUpper()) * Vector128.Create(scale);
                scores[j] = s.GetElement(0);
                if (THeads.Count > 1) scores[count + j] = s.GetElement(1);
                if (THeads.Count > 2) scores[2L * count + j] = s.GetElement(2);
                if (THeads.Count > 3) scores[3L * count + j] = s.GetElement(3);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector256<float> Dot32(float* q, Vector256<float> k0, Vector256<float> k1, Vector256<float> k2, Vector256<float> k3)
        {
            var lo = Fma.MultiplyAdd(k1, Vector256.Load(q + 8), k0 * Vector256.Load(q));
            var hi = Fma.MultiplyAdd(k3, Vector256.Load(q + 24), k2 * Vector256.Load(q + 16));
            return lo + hi;
        }

        /// <summary>output[m] = Σ_j (weights[m, j] · d_j) · codes_j, sixteen output lanes at a time, in position order from zero.</summary>
        private static void Values<TCodes, THeads>(float* weights, int headDim, byte* cache, in Layout layout, bool prefetch, float* output)
            where TCodes : ICodes where THeads : IBatchTile
        {
            int count = layout.Count;
            float* w1 = weights + count, w2 = w1 + count, w3 = w2 + count;
            for (int c = 0; c < headDim; c += 16)
            {
                // The block holding lanes c … c + 15 and where they start in it.
                int block = c / KvBlockFormat.BlockValues * KvBlockFormat.BlockBytes, lane = 2 + c % KvBlockFormat.BlockValues;
                Vector256<float> l0 = default, l1 = default, l2 = default, l3 = default;
                Vector256<float> h0 = default, h1 = default, h2 = default, h3 = default;
                // NOTE: the first pass over the positions asks for whole rows; the later passes find them in the cache.
                var next = layout.Cursor(cache, block, prefetch && c == 0);
                for (int j = 0; j < count; j++)
                {
                    byte* p = next.Advance();
                    float d = Fp16.ToFloat(*(ushort*)p);
                    var v0 = TCodes.Load8(p + lane);
                    var v1 = TCodes.Load8(p + lane + 8);
                    var s0 = Vector256.Create(weights[j] * d);
                    l0 = Fma.MultiplyAdd(v0, s0, l0);
                    h0 = Fma.MultiplyAdd(v1, s0, h0);
                    if (THeads.Count > 1)
                    {
                        var s1 = Vector256.Create(w1[j] * d);
                        l1 = Fma.MultiplyAdd(v0, s1, l1);
                        h1 = Fma.MultiplyAdd(v1, s1, h1);
                    }
                    if (THeads.Count > 2)
                    {
                        var s2 = Vector256.Create(w2[j] * d);
                        l2 = Fma.MultiplyAdd(v0, s2, l2);
                        h2 = Fma.MultiplyAdd(v1, s2, h2);
                    }
                    if (THeads.Count > 3)
                    {
                        var s3 = Vector256.Create(w3[j] * d);
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
    }
}
