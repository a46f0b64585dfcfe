using System.Reflection;

namespace Inference.Kernels;

/// <summary>One ILGPU kernel instantiation: a stable name, its method and how it is grouped.</summary>
/// <param name="Name">File-system friendly name, e.g. <c>paged_decode_partial_f16</c>.</param>
/// <param name="Method">The closed static kernel method.</param>
/// <param name="Grouping">Implicit or explicit grouping.</param>
public sealed record KernelEntry(string Name, MethodInfo Method, KernelGrouping Grouping);
