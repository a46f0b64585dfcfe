using Inference.Cuda.Diagnostics;

namespace Inference.Tests.Cuda;

/// <summary>
/// PTX vs ILGPU vs reference paged attention on a CUDA device: MHA/GQA/MQA, head dims 64/128, f32/f16 KV, decode and
/// prefill. Skipped (ignored) where no CUDA device exists.
/// </summary>
[Category("Gpu")]
public class PtxAttentionGpuTests
{
    private static IEnumerable<string> Cases => AttentionSelfCheck.StandardCases.Select(c => c.Name);

    [TestCaseSource(nameof(Cases))]
    public void PtxAndIlgpuMatchReference(string name)
    {
        var c = AttentionSelfCheck.StandardCases.Single(x => x.Name == name);
        var backend = GpuTestBackend.RequireDevice();
        var results = AttentionSelfCheck.Run(backend, c);
        Assert.That(results, Has.Count.EqualTo(3));
        foreach (var r in results)
            Assert.That(r.Passed, Is.True, $"{r.Case} {r.Kernel}: max abs error {r.MaxAbsError}; {r.Detail}");
    }
}
