using System.Runtime.InteropServices;
using Inference.Loading;

namespace Inference.Backends.Cpu;

/// <summary>Plain dequantization of GGML blocks to float (the reference the fast kernels are tested against).</summary>
public static class Dequantize
{
    /// <summary>Dequantizes one row of <paramref name="type"/> values into <paramref name="dst"/>.</summary>
    public static void Row(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        switch (type)
        {
            case GgmlType.F32:
                MemoryMarshal.Cast<byte, float>(src)[..dst.Length].CopyTo(dst);
                break;
            case GgmlType.F16:
                var h = MemoryMarshal.Cast<byte, Half>(src);
                for (int i = 0; i < dst.Length; i++) dst[i] = (float)h[i];
                break;
            default:
                throw new NotSupportedException($"dequantization of {type} is not supported");
        }
    }
}
