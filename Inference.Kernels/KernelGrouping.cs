namespace Inference.Kernels;

/// <summary>How a kernel computes its thread indices.</summary>
public enum KernelGrouping
{
    /// <summary>The kernel takes an <c>Index1D</c>/<c>Index2D</c> and ILGPU picks the group size.</summary>
    Implicit,

    /// <summary>The kernel reads <c>Grid</c>/<c>Group</c> indices and is launched with an explicit <c>KernelConfig</c>.</summary>
    Explicit,
}
