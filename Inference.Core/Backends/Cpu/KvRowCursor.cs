using System.Runtime.CompilerServices;

namespace Inference.Backends.Cpu;

/// <summary>
/// Position by position through a sequence's block table: the row of the next position for one KV head, with the table
/// read once per block (no division by the block size per row).
/// </summary>
internal unsafe struct KvRowCursor<T>(T* cache, int* table, int blockSize, int kvStride, long rows) where T : unmanaged
{
    private int _block = -1, _left;
    private T* _row;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public T* Advance()
    {
        if (_left == 0)
        {
            _block++;
            _left = blockSize;
            _row = cache + (long)table[_block] * blockSize * kvStride + rows;
        }
        T* row = _row;
        _row += kvStride;
        _left--;
        return row;
    }
}
