using Inference.Loading;
using Inference.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

/// <summary>
/// A BF16 checkpoint (the dtype most HF models ship in) bound in place, against llama.cpp on its BF16 GGUF conversion.
/// </summary>
/// <remarks>
/// NOTE: compared through <see cref="HfReferenceForward"/> only: the CPU matmul of this branch has no BF16 row
/// dequantization yet, so <see cref="LlamaModel"/> cannot run BF16 weights.
/// </remarks>
[NonParallelizable]
public class HfCheckpointBf16Tests
{
    [Test]
    public void Bf16InPlace_MatchesLlamaCppOnTheConvertedGguf()
    {
        string dir = TestData.TempDir();
        try
        {
            string hf = Path.Combine(dir, "hf");
            HfTestCheckpoint.Write(hf, new HfTestCheckpointOptions { DType = SafetensorsDType.BF16 });
            using var checkpoint = HfCheckpoint.Open(hf);
            Assert.That(checkpoint.TorchDType, Is.EqualTo("bfloat16"));
            Assert.That(checkpoint.Weights.GetMatrix("blk.0.attn_q.weight", 128, 128).Type, Is.EqualTo(GgmlType.BF16));
            string gguf = Path.Combine(dir, "bf16.gguf");
            checkpoint.ConvertToGguf(gguf);
            using (var file = GgufFile.Open(gguf))
            {
                Assert.That(file.GetInteger("general.file_type"), Is.EqualTo(32), "LLAMA_FTYPE_MOSTLY_BF16");
                Assert.That(file.GetTensor("blk.1.ffn_up.weight").Type, Is.EqualTo(GgmlType.BF16));
                Assert.That(file.GetTensor("blk.1.ffn_norm.weight").Type, Is.EqualTo(GgmlType.F32));
            }
            using var reference = LlamaCpp.Load(gguf);
            int[] prompt = [1, 403, 407, 261, 378, 17, 300, 45, 99, 310, 511];
            var expected = reference.EvaluateLastLogits(prompt);
            var actual = HfReferenceForward.LastLogits(checkpoint.Weights, checkpoint.Config, prompt);
            double num = 0, den = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                num += Math.Pow(actual[i] - expected[i], 2);
                den += (double)expected[i] * expected[i];
            }
            double err = Math.Sqrt(num / den);
            TestContext.Out.WriteLine($"BF16 in place vs llama.cpp: relative L2 {err:E2}");
            // NOTE: llama.cpp rounds activations to BF16 for BF16 weights (8 mantissa bits); the reference keeps them exact.
            Assert.That(err, Is.LessThan(1e-2));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
