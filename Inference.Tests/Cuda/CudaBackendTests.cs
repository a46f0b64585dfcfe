using Inference.Cuda;

namespace Inference.Tests.Cuda;

/// <summary>Device probing and PTX resources; these run everywhere, with or without a GPU.</summary>
public class CudaBackendTests
{
    [Test]
    public void ProbeNeverThrowsAndIsConsistent()
    {
        var probe = CudaBackend.Probe();
        if (probe.IsAvailable)
        {
            Assert.That(probe.DeviceCount, Is.GreaterThan(0));
            Assert.That(probe.Reason, Is.Null);
        }
        else
        {
            Assert.That(probe.DeviceCount, Is.EqualTo(0));
            Assert.That(probe.Reason, Is.Not.Null.And.Not.Empty);
        }
    }

    [TestCase("paged_attention_f32", "paged_attention_f32")]
    [TestCase("paged_attention_f16", "paged_attention_f16")]
    [TestCase("paged_attention_reduce", "paged_attention_reduce")]
    public void PtxModulesAreEmbedded(string module, string entry)
    {
        var source = PtxModule.ReadSource(module);
        Assert.That(source, Does.Contain($".visible .entry {entry}("));
        Assert.That(source, Does.Contain(".target sm_80"));
    }

    [Test]
    public void MissingModuleFailsLoudly() =>
        Assert.Throws<InvalidOperationException>(() => PtxModule.ReadSource("no_such_module"));
}
