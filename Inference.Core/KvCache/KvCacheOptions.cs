namespace Inference.KvCache;

/// <summary>
/// How the paged KV cache is sized and used. Immutable; every property is validated when set.
/// </summary>
/// <remarks>
/// The pool size is <see cref="PoolBytes"/> when given, otherwise <see cref="MemoryFraction"/> of
/// <see cref="GCMemoryInfo.TotalAvailableMemoryBytes"/> (the memory this process may use, container limits included).
/// </remarks>
public sealed record KvCacheOptions
{
    /// <summary>Largest supported <see cref="BlockSize"/>.</summary>
    public const int MaxBlockSize = 256;

    /// <summary>Tokens per block, 1 to <see cref="MaxBlockSize"/>. Default 16.</summary>
    public int BlockSize
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, MaxBlockSize);
            field = value;
        }
    } = 16;

    /// <summary>Byte budget for keys and values of all layers; null to use <see cref="MemoryFraction"/>.</summary>
    public long? PoolBytes
    {
        get;
        init
        {
            if (value is { } v) ArgumentOutOfRangeException.ThrowIfLessThan(v, 1L);
            field = value;
        }
    }

    /// <summary>
    /// Fraction (0, 1] of the memory the engine may use when <see cref="PoolBytes"/> is null (vLLM's
    /// <c>gpu_memory_utilization</c>): the device's memory on a GPU, the memory available to the process on the CPU. The
    /// engine's pool gets fraction × total − weights − activations (<see cref="KvMemoryPlan"/>). Default 0.25.
    /// </summary>
    public double MemoryFraction
    {
        get;
        init
        {
            if (!(value > 0 && value <= 1)) throw new ArgumentOutOfRangeException(nameof(value), value, "MemoryFraction must be in (0, 1].");
            field = value;
        }
    } = 0.25;

    /// <summary>Element type of stored keys and values. Default <see cref="KvCacheDataType.Float16"/>.</summary>
    public KvCacheDataType DataType
    {
        get;
        init
        {
            if (!Enum.IsDefined(value)) throw new ArgumentOutOfRangeException(nameof(value), value, "Unknown KV cache data type.");
            field = value;
        }
    } = KvCacheDataType.Float16;

    /// <summary>Whether full blocks are shared between sequences with equal prefixes. Default enabled.</summary>
    public PrefixCachingMode PrefixCaching
    {
        get;
        init
        {
            if (!Enum.IsDefined(value)) throw new ArgumentOutOfRangeException(nameof(value), value, "Unknown prefix caching mode.");
            field = value;
        }
    } = PrefixCachingMode.Enabled;

    /// <summary>The byte budget these options resolve to on this machine now.</summary>
    public long ResolvePoolBytes() =>
        PoolBytes ?? (long)(MemoryFraction * GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
}
