namespace Inference.Kernels;

/// <summary>Widens a stored element (KV cache entry or weight) to f32 inside a kernel.</summary>
/// <typeparam name="T">The stored element type.</typeparam>
/// <remarks>
/// NOTE: the interface and its two tiny implementations share this file; they are one concept.
/// Kernels are generic over a converter struct rather than over the element alone because ILGPU resolves
/// constrained calls on structs statically; one kernel body then serves f32 and f16 storage with no branches.
/// </remarks>
public interface IElementConverter<T> where T : unmanaged
{
    /// <summary>The value as f32.</summary>
    /// <param name="value">The stored value.</param>
    /// <returns>The widened value.</returns>
    float ToFloat(T value);
}

/// <summary>f32 storage: the identity.</summary>
public readonly partial struct F32Element : IElementConverter<float>
{
    /// <inheritdoc />
    public float ToFloat(float value) => value;
}

/// <summary>f16 storage (IEEE binary16, the same bits as <see cref="System.Half"/>).</summary>
public readonly partial struct F16Element : IElementConverter<ILGPU.Half>
{
    /// <inheritdoc />
    public float ToFloat(ILGPU.Half value) => value;
}
