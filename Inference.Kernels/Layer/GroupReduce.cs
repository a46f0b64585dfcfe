using ILGPU;

namespace Inference.Kernels.Layer;

/// <summary>Tree reductions across one thread group through shared memory (group size a power of two ≤ 64).</summary>
internal static class GroupReduce
{
    /// <summary>The largest group these helpers support (the size of their shared scratch).</summary>
    public const int MaxGroupSize = 64;

    /// <summary>Sum of <paramref name="value"/> over the group; every thread gets the result.</summary>
    public static float Sum(float value)
    {
        var scratch = SharedMemory.Allocate<float>(MaxGroupSize);
        int t = Group.IdxX;
        scratch[t] = value;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (t < stride) scratch[t] += scratch[t + stride];
            Group.Barrier();
        }
        float result = scratch[0];
        Group.Barrier();   // scratch may be reused right after
        return result;
    }

    /// <summary>
    /// The (value, index) pair with the largest value over the group, the lowest index on ties; index -1 means none.
    /// Every thread gets the result.
    /// </summary>
    public static void ArgMax(ref float value, ref int index)
    {
        var values = SharedMemory.Allocate<float>(MaxGroupSize);
        var indices = SharedMemory.Allocate<int>(MaxGroupSize);
        int t = Group.IdxX;
        values[t] = value;
        indices[t] = index;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (t < stride && Better(values[t + stride], indices[t + stride], values[t], indices[t]))
            {
                values[t] = values[t + stride];
                indices[t] = indices[t + stride];
            }
            Group.Barrier();
        }
        value = values[0];
        index = indices[0];
        Group.Barrier();
    }

    /// <summary>Whether candidate (v, i) ranks before (bestV, bestI): larger value, then lower index; -1 never wins.</summary>
    public static bool Better(float v, int i, float bestV, int bestI) =>
        i >= 0 && (bestI < 0 || v > bestV || (v == bestV && i < bestI));
}
