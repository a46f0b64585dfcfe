namespace Inference.Loading;

/// <summary>The value types a GGUF metadata entry can hold (the numeric values are the on-disk codes).</summary>
public enum GgufValueType : uint
{
    /// <summary>uint8.</summary>
    UInt8 = 0,
    /// <summary>int8.</summary>
    Int8 = 1,
    /// <summary>uint16.</summary>
    UInt16 = 2,
    /// <summary>int16.</summary>
    Int16 = 3,
    /// <summary>uint32.</summary>
    UInt32 = 4,
    /// <summary>int32.</summary>
    Int32 = 5,
    /// <summary>float32.</summary>
    Float32 = 6,
    /// <summary>bool (one byte, 0 or 1).</summary>
    Bool = 7,
    /// <summary>UTF-8 string with a uint64 length.</summary>
    String = 8,
    /// <summary>Typed array with a uint64 count.</summary>
    Array = 9,
    /// <summary>uint64.</summary>
    UInt64 = 10,
    /// <summary>int64.</summary>
    Int64 = 11,
    /// <summary>float64.</summary>
    Float64 = 12,
}

/// <summary>
/// One GGUF metadata value. Scalars are boxed .NET values; arrays are typed .NET arrays
/// (<c>string[]</c>, <c>float[]</c>, <c>int[]</c>, …; nested arrays are <c>GgufValue[]</c>).
/// </summary>
public sealed class GgufValue
{
    internal GgufValue(GgufValueType type, GgufValueType elementType, object value, long offset)
    {
        Type = type;
        ElementType = elementType;
        Value = value;
        Offset = offset;
    }

    /// <summary>The value's type.</summary>
    public GgufValueType Type { get; }

    /// <summary>For arrays, the element type; otherwise equal to <see cref="Type"/>.</summary>
    public GgufValueType ElementType { get; }

    /// <summary>The value: a boxed scalar, a string, or a typed array.</summary>
    public object Value { get; }

    /// <summary>Byte offset of the value in the file (for error messages).</summary>
    public long Offset { get; }

    /// <summary>Number of elements when this is an array, else 1.</summary>
    public long Count => Value is Array a ? a.LongLength : 1;

    /// <summary>True when the value is an integer scalar of any width.</summary>
    public bool IsInteger => Type is GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.UInt16 or GgufValueType.Int16
        or GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.UInt64 or GgufValueType.Int64;

    /// <inheritdoc />
    public override string ToString() => Value switch
    {
        Array a => $"[{ElementType} x {a.LongLength}]",
        _ => Convert.ToString(Value, System.Globalization.CultureInfo.InvariantCulture) ?? "",
    };
}
