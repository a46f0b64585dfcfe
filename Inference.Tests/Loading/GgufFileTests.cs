using Inference.Loading;
using Inference.Tests.Support;

namespace Inference.Tests.Loading;

public class GgufFileTests
{
    [Test]
    public void Stories260K_HeaderMatchesKnownFacts()
    {
        using var f = GgufFile.Open(TestData.Stories260K);
        Assert.That(f.Version, Is.EqualTo(3u));
        Assert.That(f.Tensors, Has.Count.EqualTo(48));
        Assert.That(f.MetadataKeys, Has.Count.EqualTo(19));
        Assert.That(f.DataSectionOffset, Is.EqualTo(14176));
        Assert.That(f.GetString("general.architecture"), Is.EqualTo("llama"));
        Assert.That(f.GetInteger("llama.embedding_length"), Is.EqualTo(64));
        Assert.That(f.GetInteger("llama.attention.head_count_kv"), Is.EqualTo(4));
        Assert.That(f.GetArray<string>("tokenizer.ggml.tokens"), Has.Length.EqualTo(512));
        var q = f.GetTensor("blk.0.attn_k.weight");
        Assert.That(q.Dimensions, Is.EqualTo(new long[] { 64, 32 }));
        Assert.That(q.Type, Is.EqualTo(GgmlType.F32));
        Assert.That(f.GetTensorBytes(f.GetTensor("token_embd.weight")).SequenceEqual(f.GetTensorBytes(f.GetTensor("output.weight"))), Is.True);
    }

    [TestCase("vocab/ggml-vocab-llama-spm.gguf", 32000)]
    [TestCase("vocab/ggml-vocab-gpt-2.gguf", 50257)]
    [TestCase("vocab/ggml-vocab-phi-3.gguf", 32064)]
    [TestCase("vocab/ggml-vocab-deepseek-llm.gguf", 102400)]
    public void VocabOnlyFiles_Load(string file, int tokens)
    {
        using var f = GgufFile.Open(TestData.Path(file));
        Assert.That(f.Tensors, Is.Empty);
        Assert.That(f.GetArray<string>("tokenizer.ggml.tokens"), Has.Length.EqualTo(tokens));
    }

    [Test]
    public void TinyRandom_MixedF16F32()
    {
        using var f = GgufFile.Open(TestData.Path("llama-2-tiny-random/llama-2-tiny-random.gguf"));
        Assert.That(f.GetTensor("token_embd.weight").Type, Is.EqualTo(GgmlType.F16));
        Assert.That(f.GetTensor("output_norm.weight").Type, Is.EqualTo(GgmlType.F32));
    }
}
