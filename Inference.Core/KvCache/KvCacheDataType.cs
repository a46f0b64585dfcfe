namespace Inference.KvCache;

/// <summary>Element type of the keys and values held in <see cref="KvCacheStorage"/>.</summary>
public enum KvCacheDataType
{
    /// <summary>32-bit IEEE floats: exact, twice the memory of <see cref="Float16"/>.</summary>
    Float32,

    /// <summary>16-bit IEEE half floats (<see cref="Half"/>): half the memory, about 3 significant digits.</summary>
    Float16,
}
