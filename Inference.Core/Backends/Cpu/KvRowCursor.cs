using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Position by position through a sequence's block table: the row of the next position for one KV head, with the table
/// read once per block (no division by the block size per row). Optionally, with each row it returns, it asks for the
/// row of the same slot <see cref="PrefetchPositions"/> positions (whole blocks) further on.
/// </summary>
/// <remarks>
/// NOTE: in a decode step a layer's cache rows come from memory (the other layers and the weights pass through the caches
/// between two visits), and one head's part of a row is a few lines of every row of every block, in blocks that need not
/// follow each other: the hardware prefetchers do not run far enough ahead. Asking for the lines
/// <see cref="PrefetchPositions"/> ahead took one layer of the benchmark model at 1,024 positions with the cache rows out
/// of every cache from 463–470 to 281–282 µs (<c>attention --context 1024 --threads 2 --cold --evict-mb 64</c>; 180–184 µs
/// with the rows in the last-level cache, before and after). In a
/// prefill chunk the rows stay in the cache from one token to the next, and the requests only cost time: callers ask
/// for them for decode tokens alone.
/// </remarks>
internal unsafe struct KvRowCursor<T> where T : unmanaged
{
    /// <summary>How far ahead of the reads the rows are asked for, in positions (rounded up to whole blocks).</summary>
    public const int PrefetchPositions = 32;

    private readonly T* _cache;
    private readonly int* _table;
    private readonly int _blockSize, _kvStride, _prefetchBytes, _blocksAhead, _lastBlock;
    private readonly long _rows;
    private int _block, _left;
    private T* _row, _ahead;

    /// <summary>A cursor at position <paramref name="first"/>; rows start <paramref name="rows"/> elements into each
    /// position's <paramref name="kvStride"/> elements.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public KvRowCursor(T* cache, int* table, int blockSize, int kvStride, long rows, int first)
        : this(cache, table, blockSize, kvStride, rows, first, 0, 0)
    {
    }

    /// <summary>
    /// A cursor at position <paramref name="first"/> that also asks for the <paramref name="prefetchBytes"/> bytes of
    /// each row of the positions before <paramref name="positions"/>, a row per read about <see cref="PrefetchPositions"/>
    /// positions ahead of it (none when <paramref name="prefetchBytes"/> or <paramref name="positions"/> is 0).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public KvRowCursor(T* cache, int* table, int blockSize, int kvStride, long rows, int first, int positions, int prefetchBytes)
    {
        _cache = cache;
        _table = table;
        _blockSize = blockSize;
        _kvStride = kvStride;
        _rows = rows;
        // NOTE: a window that starts inside a block enters that block part-way: the first Advance then needs no table read.
        int skip = first % blockSize;
        _block = first / blockSize - (skip == 0 ? 1 : 0);
        if (skip != 0)
        {
            _left = blockSize - skip;
            _row = RowOf(_block) + (long)skip * kvStride;
        }
        _prefetchBytes = Sse.IsSupported && positions > first ? prefetchBytes : 0;
        if (_prefetchBytes == 0) return;
        _blocksAhead = (PrefetchPositions + blockSize - 1) / blockSize;
        _lastBlock = (positions - 1) / blockSize;
        // The first blocks at once: they are read right away.
        for (int b = first / blockSize; b < first / blockSize + _blocksAhead && b <= _lastBlock; b++)
        {
            T* row = RowOf(b);
            for (int r = 0; r < blockSize; r++, row += kvStride) Prefetch((byte*)row, _prefetchBytes);
        }
        if (skip != 0) _ahead = (_block + _blocksAhead <= _lastBlock ? RowOf(_block + _blocksAhead) : RowOf(_block)) + (long)skip * kvStride;
    }

    /// <summary>The row of the next position.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public T* Advance()
    {
        if (_left == 0)
        {
            _block++;
            _left = _blockSize;
            _row = RowOf(_block);
            // Rows past the last block to prefetch are not asked for: the reads' own block stands in (already there).
            if (_prefetchBytes > 0) _ahead = _block + _blocksAhead <= _lastBlock ? RowOf(_block + _blocksAhead) : _row;
        }
        T* row = _row;
        // NOTE: inlined, a row per read: any call inside the caller's loop would have its vector accumulators saved
        // to the stack around it (all vector registers are caller-saved), and a block's rows asked for at once
        // (hundreds of lines) measured slower than one row per read.
        if (_prefetchBytes > 0)
        {
            Prefetch((byte*)_ahead, _prefetchBytes);
            _ahead += _kvStride;
        }
        _row += _kvStride;
        _left--;
        return row;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private readonly T* RowOf(int block) => _cache + (long)_table[block] * _blockSize * _kvStride + _rows;

    /// <summary>Asks for every cache line of [<paramref name="p"/>, <paramref name="p"/> + <paramref name="bytes"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(byte* p, int bytes)
    {
        for (int b = 0; b < bytes; b += 64) Sse.Prefetch0(p + b);
        if (((bytes | (int)(nint)p) & 63) != 0) Sse.Prefetch0(p + bytes - 1);
    }
}
