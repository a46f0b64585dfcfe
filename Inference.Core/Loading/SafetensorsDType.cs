namespace Inference.Loading;

/// <summary>Element types of a safetensors file that this library reads.</summary>
public enum SafetensorsDType
{
    /// <summary>IEEE 754 single precision (<c>"F32"</c>).</summary>
    F32,
    /// <summary>IEEE 754 half precision (<c>"F16"</c>).</summary>
    F16,
    /// <summary>bfloat16: the upper 16 bits of an F32 (<c>"BF16"</c>).</summary>
    BF16,
}

/// <summary>Names, sizes and GGML equivalents of <see cref="SafetensorsDType"/>.</summary>
public static class SafetensorsDTypeInfo
{
    /// <summary>dtype names of the safetensors format that are known but not supported here (refused with a clear message).</summary>
    internal static readonly string[] KnownUnsupported =
        ["F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"];

    /// <summary>Bytes per element.</summary>
    public static int ElementBytes(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F32 => 4,
        SafetensorsDType.F16 or SafetensorsDType.BF16 => 2,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>The name written in the header (<c>"F32"</c>, <c>"F16"</c>, <c>"BF16"</c>).</summary>
    public static string Name(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F32 => "F32",
        SafetensorsDType.F16 => "F16",
        SafetensorsDType.BF16 => "BF16",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>Parses a header dtype name; false for names that are unknown or not supported.</summary>
    public static bool TryParse(string name, out SafetensorsDType dtype)
    {
        switch (name)
        {
            case "F32": dtype = SafetensorsDType.F32; return true;
            case "F16": dtype = SafetensorsDType.F16; return true;
            case "BF16": dtype = SafetensorsDType.BF16; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>The GGML type with the same element encoding (a row of either can be read by the same kernels).</summary>
    public static GgmlType ToGgmlType(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F32 => GgmlType.F32,
        SafetensorsDType.F16 => GgmlType.F16,
        SafetensorsDType.BF16 => GgmlType.BF16,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };
}
