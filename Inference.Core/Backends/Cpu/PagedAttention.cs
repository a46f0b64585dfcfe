using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Inference.KvCache;

namespace Inference.Backends.Cpu;

/// <summary>
/// Causal attention of new tokens against a sequence's paged KV cache, on the CPU with SIMD (TensorPrimitives).
/// One call covers prefill (a chunk of n tokens at positions start..start+n−1) and decode (n = 1).
/// </summary>
/// <remarks>
/// <para>
/// Effectively computes what <see cref="PagedAttentionReference.Forward"/> computes over the gathered cache:
/// out[i, h] = Σ_{j ≤ start+i} softmax_j(q[i, h] · k[j, h / kvMul] / √headDim) · v[j, h / kvMul], in float with a
/// two-pass softmax (max subtracted), so it agrees with the reference to about 1e-6 relative. With a
/// <see cref="PagedAttentionShape.SlidingWindow"/> W the sums start at j = start + i − W + 1 (at least 0): positions
/// before it are never read, so their blocks may already be freed.
/// </para>
/// <para>
/// The keys and values of the n new tokens must already be written to the cache (positions up to start+n−1).
/// For f16 caches each key/value row is widened to float once and shared by the kvMul query heads of its group.
/// No allocation: the caller passes <c>scratch</c> of <see cref="GetScratchLength"/> floats.
/// A NaN or infinity in the inputs propagates to the output.
/// </para>
/// </remarks>
public static class PagedAttention
{
    /// <summary>Floats of scratch the single-threaded <c>Forward</c> needs for a context of <paramref name="contextLength"/> positions.</summary>
    public static int GetScratchLength(in PagedAttentionShape shape, int contextLength) =>
        shape.KvMul * contextLength + 8 * shape.HeadDim + ScratchAlignFloats;

    /// <summary>Floats of slack in the scratch so that the widened rows can start on a 64-byte boundary.</summary>
    private const int ScratchAlignFloats = 16;

    /// <summary>Attention of <paramref name="query"/> tokens at positions <paramref name="startPosition"/>.. over the paged cache.</summary>
    /// <typeparam name="T">Cache element type: <see cref="float"/> or <see cref="Half"/>.</typeparam>
    /// <param name="shape">Heads, KV heads, head size and block size.</param>
    /// <param name="query">[tokenCount, heads, headDim].</param>
    /// <param name="keyCache">One layer's keys, [blockCount, blockSize, kvHeads, headDim].</param>
    /// <param name="valueCache">One layer's values, [blockCount, blockSize, kvHeads, headDim].</param>
    /// <param name="blockTable">The sequence's physical block ids in logical order; covers start + tokenCount positions.</param>
    /// <param name="startPosition">Position of the first query token (tokens already in the cache before this chunk).</param>
    /// <param name="output">[tokenCount, heads, headDim].</param>
    /// <param name="scratch">At least <see cref="GetScratchLength"/>(shape, start + tokenCount) floats.</param>
    public static void Forward<T>(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<T> keyCache,
        ReadOnlySpan<T> valueCache,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output,
        Span<float> scratch)
        where T : unmanaged
    {
        int contextLength = Validate(shape, query, keyCache, valueCache, blockTable, startPosition, output);
        if (scratch.Length < GetScratchLength(shape, contextLength))
            throw new ArgumentException($"scratch needs {GetScratchLength(shape, contextLength)} floats.", nameof(scratch));
        int tokenCount = contextLength - startPosition;

        for (int i = 0; i < tokenCount; i++)
            for (int g = 0; g < shape.KvHeadCount; g++)
                AttendGroup(shape, query, keyCache, valueCache, blockTable, i, startPosition + i + 1, g, output, scratch, prefetch: tokenCount == 1);
    }

    /// <summary>
    /// As <see cref="Forward{T}(in PagedAttentionShape, ReadOnlySpan{float}, ReadOnlySpan{T}, ReadOnlySpan{T}, ReadOnlySpan{int}, int, Span{float}, Span{float})"/>,
    /// with the (token, KV head) pairs spread over <paramref name="pool"/>. Each thread uses its own scratch, kept
    /// between calls and grown when a longer context needs it. Results are bit-identical to the single-threaded call.
    /// </summary>
    public static unsafe void Forward<T>(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<T> keyCache,
        ReadOnlySpan<T> valueCache,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output,
        WorkerPool pool)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(pool);
        int contextLength = Validate(shape, query, keyCache, valueCache, blockTable, startPosition, output);
        int tokenCount = contextLength - startPosition;
        fixed (float* q = query)
        fixed (T* k = keyCache)
        fixed (T* v = valueCache)
        fixed (int* table = blockTable)
        fixed (float* o = output)
        {
            var job = new GroupJob<T>(shape, q, query.Length, k, v, keyCache.Length, table, blockTable.Length, startPosition, o);
            // the K and V rows every token reads, the size of the work
            long cacheBytes = 2L * tokenCount * contextLength * shape.KvHeadCount * shape.HeadDim * sizeof(T);
            pool.Run(tokenCount * shape.KvHeadCount, job, cacheBytes);
        }
    }

    /// <summary>Attention over one layer of <paramref name="storage"/>, dispatching on its element type.</summary>
    /// <param name="shape">Heads and head layout; KV heads, head size and block size must match <paramref name="storage"/>.</param>
    /// <param name="query">[tokenCount, heads, headDim].</param>
    /// <param name="storage">The KV cache memory.</param>
    /// <param name="layer">Layer whose keys and values are read.</param>
    /// <param name="blockTable">The sequence's physical block ids in logical order.</param>
    /// <param name="startPosition">Position of the first query token.</param>
    /// <param name="output">[tokenCount, heads, headDim].</param>
    /// <param name="pool">Threads to spread the (token, KV head) pairs over.</param>
    public static void Forward(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        KvCacheStorage storage,
        int layer,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output,
        WorkerPool pool)
    {
        ArgumentNullException.ThrowIfNull(storage);
        if (shape.KvHeadCount != storage.KvHeadCount || shape.HeadDim != storage.HeadDim || shape.BlockSize != storage.BlockSize)
            throw new ArgumentException($"Shape {shape} does not match the KV storage ({storage.KvHeadCount} KV heads × {storage.HeadDim}, blocks of {storage.BlockSize}).", nameof(shape));
        if (storage.DataType == KvCacheDataType.Float32)
            Forward<float>(shape, query, storage.GetKeys<float>(layer), storage.GetValues<float>(layer), blockTable, startPosition, output, pool);
        else if (KvBlockFormat.IsBlockFormat(storage.DataType))
            QuantizedKvAttention.Forward(shape, query, storage.GetKeyBytes(layer), storage.GetValueBytes(layer), storage.DataType, blockTable, startPosition, output, pool);
        else
            Forward<Half>(shape, query, storage.GetKeys<Half>(layer), storage.GetValues<Half>(layer), blockTable, startPosition, output, pool);
    }

    // NOTE: scratch per thread, not per call: a pool thread keeps its buffer, so steady-state calls do not allocate.
    [ThreadStatic]
    private static float[]? t_scratch;

    private readonly unsafe struct GroupJob<T>(
        PagedAttentionShape shape, float* query, int queryLength, T* keys, T* values, int cacheLength,
        int* blockTable, int blockTableLength, int startPosition, float* output) : IRangeJob
        where T : unmanaged
    {
        public void Execute(int start, int end)
        {
            int contextLength = startPosition + queryLength / shape.QueryStride;
            int needed = GetScratchLength(shape, contextLength);
            var scratch = t_scratch;
            if (scratch is null || scratch.Length < needed) t_scratch = scratch = new float[needed];
            var q = new ReadOnlySpan<float>(query, queryLength);
            var k = new ReadOnlySpan<T>(keys, cacheLength);
            var v = new ReadOnlySpan<T>(values, cacheLength);
            var table = new ReadOnlySpan<int>(blockTable, blockTableLength);
            var o = new Span<float>(output, queryLength);
            int tokenCount = queryLength / shape.QueryStride;
            for (int item = start; item < end;)
            {
                // Items run KV head by KV head (g-major), so a chunk holds consecutive tokens of one group.
                int g = item / tokenCount, first = item % tokenCount;
                int runEnd = Math.Min(end, (g + 1) * tokenCount), last = first + (runEnd - item) - 1;
                if (!TryAttendWidened(first, last, g, q, o, scratch))
                {
                    for (int i = first; i <= last; i++)
                        AttendGroup(shape, q, k, v, table, i, startPosition + i + 1, g, o, scratch, prefetch: tokenCount == 1);
                }
                item = runEnd;
            }
        }

        /// <summary>
        /// Tokens <paramref name="first"/> … <paramref name="last"/> of KV head <paramref name="g"/> from f16 rows
        /// widened once for all of them instead of once per token; false (nothing done) when the rows are already
        /// float, the run is one token, no vector path applies or the widened rows would not fit in
        /// <see cref="WidenedFloats"/>.
        /// </summary>
        /// <remarks>Each token then runs exactly the operations of its own call on the same values, so the bits do
        /// not change: a token decoded alone gets what it got in a prefill.</remarks>
        private bool TryAttendWidened(int first, int last, int g, ReadOnlySpan<float> q, Span<float> o, Span<float> scratch)
        {
            int headDim = shape.HeadDim, rowCount = startPosition + last + 1 - shape.FirstVisible(startPosition + first + 1);
            if (typeof(T) == typeof(float) || last == first || 2L * rowCount * headDim > WidenedFloats) return false;
            if (Width512.IsSupported(headDim)) AttendWidened<Width512>(first, last, g, q, o, scratch);
            else if (Width256.IsSupported(headDim)) AttendWidened<Width256>(first, last, g, q, o, scratch);
            else return false;
            return true;
        }

        private void AttendWidened<TWidth>(int first, int last, int g, ReadOnlySpan<float> q, Span<float> o, Span<float> scratch)
            where TWidth : IAttentionWidth
        {
            int headDim = shape.HeadDim, kvMul = shape.KvMul;
            // Rows from the first position the first token sees (0 without a window) to the last token's own.
            int from = shape.FirstVisible(startPosition + first + 1), rowCount = startPosition + last + 1 - from;
            var widened = t_widened ??= GC.AllocateUninitializedArray<float>(WidenedFloats + 16, pinned: true);
            fixed (float* pinned = widened)
            {
                float* wk = (float*)(((nuint)pinned + 63) & ~(nuint)63), wv = wk + (long)rowCount * headDim;
                var nextKey = new KvRowCursor<T>(keys, blockTable, shape.BlockSize, shape.KvStride, (long)g * headDim, from);
                var nextValue = new KvRowCursor<T>(values, blockTable, shape.BlockSize, shape.KvStride, (long)g * headDim, from);
                for (int j = 0; j < rowCount; j++)
                {
                    TWidth.Widen(nextKey.Advance(), headDim, wk + (long)j * headDim);
                    TWidth.Widen(nextValue.Advance(), headDim, wv + (long)j * headDim);
                }
                // The widened rows as a one-head cache of one block: position from + j at row j (the same window).
                var rowShape = new PagedAttentionShape(kvMul, 1, headDim, rowCount) { SlidingWindow = shape.SlidingWindow, LogitSoftCap = shape.LogitSoftCap };
                var wkSpan = new ReadOnlySpan<float>(wk, rowCount * headDim);
                var wvSpan = new ReadOnlySpan<float>(wv, rowCount * headDim);
                ReadOnlySpan<int> oneBlock = [0];
                for (int i = first; i <= last; i++)
                {
                    int at = (i * shape.HeadCount + g * kvMul) * headDim;
                    AttendGroupVector<float, TWidth>(rowShape, q.Slice(at, kvMul * headDim), wkSpan, wvSpan, oneBlock,
                        startPosition + i + 1 - from, 0, o.Slice(at, kvMul * headDim), scratch, prefetch: false);
                }
            }
        }
    }

    /// <summary>Floats of the per-thread buffer for rows widened once per run of prefill tokens: 2 MB, about a core's L2.</summary>
    private const int WidenedFloats = 1 << 19;

    // NOTE: pinned, so the 64-byte alignment taken inside it holds for the life of the thread.
    [ThreadStatic]
    private static float[]? t_widened;


    /// <summary>Checks the arguments; returns the context length start + tokenCount.</summary>
    private static int Validate<T>(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<T> keyCache,
        ReadOnlySpan<T> valueCache,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output)
        where T : unmanaged
    {
        if (typeof(T) != typeof(float) && typeof(T) != typeof(Half))
            throw new NotSupportedException($"KV element type {typeof(T).Name} is not supported; use float or Half.");
        return CheckCall(shape, query, keyCache, valueCache, shape.BlockSize * shape.KvStride, "[blockCount, blockSize, kvHeads, headDim]",
            blockTable, startPosition, output);
    }

    /// <summary>
    /// The checks every paged attention entry point makes (this class's and <see cref="QuantizedKvAttention"/>'s):
    /// the query and output shapes, the block table's reach, the caches in whole blocks of <paramref name="blockLength"/>
    /// elements, every table entry the queries read inside the cache. Returns the context length start + tokenCount.
    /// </summary>
    internal static int CheckCall<TCache>(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<TCache> keyCache,
        ReadOnlySpan<TCache> valueCache,
        int blockLength,
        string layout,
        ReadOnlySpan<int> blockTable,
        int startPosition,
        Span<float> output)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(startPosition);
        int tokenCount = query.Length / shape.QueryStride;
        if (tokenCount == 0 || query.Length != tokenCount * shape.QueryStride)
            throw new ArgumentException("query must be [tokenCount ≥ 1, heads, headDim].", nameof(query));
        if (output.Length != query.Length) throw new ArgumentException("output must be [tokenCount, heads, headDim].", nameof(output));
        int contextLength = startPosition + tokenCount;
        if ((long)blockTable.Length * shape.BlockSize < contextLength)
            throw new ArgumentException($"The block table covers {blockTable.Length * (long)shape.BlockSize} positions; {contextLength} are needed.", nameof(blockTable));
        if (keyCache.Length % blockLength != 0 || valueCache.Length != keyCache.Length)
            throw new ArgumentException($"keyCache and valueCache must be {layout}.", nameof(keyCache));
        int blockCount = keyCache.Length / blockLength;
        // NOTE: blocks wholly before the first query's window are never read (they may have been freed already).
        for (int b = shape.FirstVisible(startPosition + 1) / shape.BlockSize; b < (contextLength + shape.BlockSize - 1) / shape.BlockSize; b++)
            if ((uint)blockTable[b] >= (uint)blockCount)
                throw new ArgumentException($"Block table entry {b} = {blockTable[b]} is outside the cache ({blockCount} blocks).", nameof(blockTable));
        return contextLength;
    }

    /// <summary>
    /// Query token i, the kvMul query heads of KV head g, over positions [first, contextLength) (first from the shape's
    /// window, else 0); with prefetch, the cache rows
    /// are asked for ahead of the reads (<see cref="KvRowCursor{T}"/>): for a decode token, whose rows come from memory.
    /// In a prefill chunk the same rows serve every token and stay in the cache, and the requests would only cost time.
    /// </summary>
    private static void AttendGroup<T>(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> query,
        ReadOnlySpan<T> keyCache,
        ReadOnlySpan<T> valueCache,
        ReadOnlySpan<int> blockTable,
        int i,
        int contextLength,
        int g,
        Span<float> output,
        Span<float> scratch,
        bool prefetch)
        where T : unmanaged
    {
        int headDim = shape.HeadDim, kvMul = shape.KvMul, bs = shape.BlockSize, kvStride = shape.KvStride;
        float scale = 1f / MathF.Sqrt(headDim);
        var groupQuery = query.Slice((i * shape.HeadCount + g * kvMul) * headDim, kvMul * headDim); // [kvMul, headDim]
        var groupOut = output.Slice((i * shape.HeadCount + g * kvMul) * headDim, kvMul * headDim);  // [kvMul, headDim]
        if (Width512.IsSupported(headDim))
        {
            AttendGroupVector<T, Width512>(shape, groupQuery, keyCache, valueCache, blockTable, contextLength, g, groupOut, scratch, prefetch);
            return;
        }
        if (Width256.IsSupported(headDim))
        {
            AttendGroupVector<T, Width256>(shape, groupQuery, keyCache, valueCache, blockTable, contextLength, g, groupOut, scratch, prefetch);
            return;
        }
        int first = shape.FirstVisible(contextLength), n = contextLength - first;
        var scores = scratch[..(kvMul * n)];                                  // [kvMul, n]: positions first..contextLength−1
        var row = scratch.Slice(kvMul * n, 8 * headDim);                      // up to eight widened key or value rows

        // Pass 1: scores = q · k for every visible position, block by block.
        for (int j = first; j < contextLength; j++)
        {
            int offset = (blockTable[j / bs] * bs + j % bs) * kvStride + g * headDim;
            var k = Row(keyCache, offset, headDim, row);
            for (int m = 0; m < kvMul; m++)
                scores[m * n + j - first] = TensorPrimitives.Dot(groupQuery.Slice(m * headDim, headDim), k);
        }

        Softmax(scores, kvMul, n, scale, shape.LogitSoftCap);

        // Pass 2: out = Σ_j w_j · v_j.
        groupOut.Clear();
        for (int j = first; j < contextLength; j++)
        {
            int offset = (blockTable[j / bs] * bs + j % bs) * kvStride + g * headDim;
            var v = Row(valueCache, offset, headDim, row);
            for (int m = 0; m < kvMul; m++)
            {
                var o = groupOut.Slice(m * headDim, headDim);
                TensorPrimitives.MultiplyAdd(v, scores[m * n + j - first], o, o);
            }
        }
    }

    /// <summary>
    /// <see cref="AttendGroup{T}"/> with <typeparamref name="TWidth"/> vectors over raw rows: one key or value row is
    /// widened once per position and used by every query head of the group, without a library call per (position, head).
    /// </summary>
    /// <remarks>The same three steps and the same softmax; the dot products are summed by lane chunks and, four
    /// positions at a time, reduced together (<see cref="IAttentionWidth.Dot4"/>); the value sums run in position order.
    /// Where <see cref="GroupAttention256"/> runs (AVX2, head sizes in sixteens), it takes both passes instead.</remarks>
    private static unsafe void AttendGroupVector<T, TWidth>(
        in PagedAttentionShape shape,
        ReadOnlySpan<float> groupQuery,
        ReadOnlySpan<T> keyCache,
        ReadOnlySpan<T> valueCache,
        ReadOnlySpan<int> blockTable,
        int contextLength,
        int g,
        Span<float> groupOut,
        Span<float> scratch,
        bool prefetch)
        where T : unmanaged where TWidth : IAttentionWidth
    {
        int headDim = shape.HeadDim, kvMul = shape.KvMul, bs = shape.BlockSize, kvStride = shape.KvStride;
        float scale = 1f / MathF.Sqrt(headDim);
        // The visible positions first..contextLength−1, n of them; scores [kvMul, n].
        int first = shape.FirstVisible(contextLength), n = contextLength - first;
        fixed (float* q = groupQuery)
        fixed (float* o = groupOut)
        fixed (float* pinned = scratch)
        fixed (T* keys = keyCache)
        fixed (T* values = valueCache)
        fixed (int* table = blockTable)
        {
            // NOTE: up to eight widened rows, then [kvMul, contextLength] scores, from a 64-byte boundary: with the
            // rows wherever the scores' length left them, a context length in four took 40 instead of 28 µs per call
            // (split 512-bit loads and stores).
            float* buffer = (float*)(((nuint)pinned + 63) & ~(nuint)63);
            float* sc = buffer + 8 * headDim;
            var scores = new Span<float>(sc, kvMul * n);
            long rows = (long)g * headDim;
            int prefetched = prefetch ? contextLength : 0;
            if (GroupAttention256.IsSupported(headDim))
            {
                // Rows widened in registers instead (the room of the eight rows holds the re-biased queries).
                GroupAttention256.Scores(q, kvMul, headDim, keys, table, bs, kvStride, rows, first, n, sc, scale, buffer, 8 * headDim, prefetched);
                Softmax(scores, kvMul, n, scale: 1f, shape.LogitSoftCap);
                GroupAttention256.Values(sc, kvMul, headDim, values, table, bs, kvStride, rows, first, n, o, prefetched);
                return;
            }
            // Pass 1: scaled scores q · k / √headDim for every position, four positions at a time (each query chunk
            // loaded once for the four, the four sums reduced together). A position's score depends only on its place
            // in the context, so a token gets the same scores whether it is decoded alone or prefilled with others.
            var scale4 = Vector128.Create(scale);
            var nextKey = new KvRowCursor<T>(keys, table, bs, kvStride, rows, first, prefetched, headDim * sizeof(T));
            int j = 0;
            for (; j + 4 <= n; j += 4)
            {
                float* k0 = TWidth.Widen(nextKey.Advance(), headDim, buffer);
                float* k1 = TWidth.Widen(nextKey.Advance(), headDim, buffer + headDim);
                float* k2 = TWidth.Widen(nextKey.Advance(), headDim, buffer + 2 * headDim);
                float* k3 = TWidth.Widen(nextKey.Advance(), headDim, buffer + 3 * headDim);
                for (int m = 0; m < kvMul; m++)
                    (TWidth.Dot4(q + m * headDim, k0, k1, k2, k3, headDim) * scale4).Store(sc + m * n + j);
            }
            for (; j < n; j++)
            {
                float* k = TWidth.Widen(nextKey.Advance(), headDim, buffer);
                for (int m = 0; m < kvMul; m++) sc[m * n + j] = TWidth.Dot(q + m * headDim, k, headDim) * scale;
            }

            Softmax(scores, kvMul, n, scale: 1f, shape.LogitSoftCap);

            // Pass 2: out = Σ_j w_j · v_j in position order, eight positions per load and store of the output.
            groupOut.Clear();
            var nextValue = new KvRowCursor<T>(values, table, bs, kvStride, rows, first, prefetched, headDim * sizeof(T));
            j = 0;
            for (; j + 8 <= n; j += 8)
            {
                float* v0 = TWidth.Widen(nextValue.Advance(), headDim, buffer);
                float* v1 = TWidth.Widen(nextValue.Advance(), headDim, buffer + headDim);
                float* v2 = TWidth.Widen(nextValue.Advance(), headDim, buffer + 2 * headDim);
                float* v3 = TWidth.Widen(nextValue.Advance(), headDim, buffer + 3 * headDim);
                float* v4 = TWidth.Widen(nextValue.Advance(), headDim, buffer + 4 * headDim);
                float* v5 = TWidth.Widen(nextValue.Advance(), headDim, buffer + 5 * headDim);
                float* v6 = TWidth.Widen(nextValue.Advance(), headDim, buffer + 6 * headDim);
                float* v7 = TWidth.Widen(nextValue.Advance(), headDim, buffer + 7 * headDim);
                for (int m = 0; m < kvMul; m++)
                    TWidth.AddWeighted8(o + m * headDim, sc + m * n + j, v0, v1, v2, v3, v4, v5, v6, v7, headDim);
            }
            for (; j < n; j++)
            {
                float* v = TWidth.Widen(nextValue.Advance(), headDim, buffer);
                for (int m = 0; m < kvMul; m++) TWidth.AddWeighted(o + m * headDim, sc[m * n + j], v, headDim);
            }
        }
    }

    /// <summary>
    /// Softmax of each head's scores, [kvMul, contextLength]: scale (unless already scaled: 1), soft-cap (unless
    /// <paramref name="softCap"/> is 0), subtract the max, exponentiate, normalize.
    /// </summary>
    internal static void Softmax(Span<float> scores, int kvMul, int contextLength, float scale, float softCap)
    {
        for (int m = 0; m < kvMul; m++)
        {
            var s = scores.Slice(m * contextLength, contextLength);
            if (scale != 1f) TensorPrimitives.Multiply(s, scale, s);
            if (softCap != 0f)
            {
                TensorPrimitives.Multiply(s, 1f / softCap, s);
                TensorPrimitives.Tanh(s, s);
                TensorPrimitives.Multiply(s, softCap, s);
            }
            float max = TensorPrimitives.Max(s);
            TensorPrimitives.Subtract(s, max, s);
            TensorPrimitives.Exp(s, s);
            float inv = 1f / TensorPrimitives.Sum(s);
            TensorPrimitives.Multiply(s, inv, s);
        }
    }

    private static ReadOnlySpan<float> Row<T>(ReadOnlySpan<T> cache, int offset, int length, Span<float> buffer)
        where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return MemoryMarshal.Cast<T, float>(cache).Slice(offset, length);
        var widened = buffer[..length];
        TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<T, Half>(cache).Slice(offset, length), widened);
        return widened;
    }
}
