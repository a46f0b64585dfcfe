using System.Text.Json;
using Inference.Backends.Cpu;
using Inference.Loading;
using Inference.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Models;

public class LlamaModelTests
{
    [TestCase(1)]
    [TestCase(2)]
    public void Stories260K_GreedyFromBos_MatchesLlama2cTokenIds(int threads)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestData.Path("expected/stories260K-greedy-256.json")));
        var expected = doc.RootElement.GetProperty("expected_token_ids_derived_locally").EnumerateArray().Select(e => e.GetInt32()).ToArray();

        using var gguf = GgufFile.Open(TestData.Stories260K);
        var config = ModelConfig.FromGguf(gguf);
        var model = new LlamaModel(gguf, config);
        var kv = new ContiguousKvCache(config, 512);
        using var pool = new WorkerPool(threads);
        var logits = new float[config.VocabSize];
        var batch = new ModelBatch();
        int token = 1;
        var produced = new List<int>();
        for (int pos = 0; pos < expected.Length; pos++)
        {
            batch.Clear();
            batch.Add(0, [token], pos, wantLogits: true);
            model.Forward(batch, kv, logits, pool);
            token = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);
            produced.Add(token);
        }
        Assert.That(produced, Is.EqualTo(expected));
    }

    [Test]
    public void PrefillInOneBatch_EqualsTokenByToken()
    {
        using var gguf = GgufFile.Open(TestData.Stories260K);
        var config = ModelConfig.FromGguf(gguf);
        var model = new LlamaModel(gguf, config);
        using var pool = new WorkerPool(2);
        int[] prompt = [1, 403, 407, 261, 378, 432, 383, 286, 261];

        var kvA = new ContiguousKvCache(config, 64);
        var batch = new ModelBatch();
        batch.Add(7, prompt, 0, wantLogits: true);
        var a = new float[config.VocabSize];
        model.Forward(batch, kvA, a, pool);

        var kvB = new ContiguousKvCache(config, 64);
        var b = new float[config.VocabSize];
        for (int i = 0; i < prompt.Length; i++)
        {
            batch.Clear();
            batch.Add(7, prompt.AsSpan(i, 1), i, wantLogits: true);
            model.Forward(batch, kvB, b, pool);
        }
        Assert.That(b, Is.EqualTo(a).Within(1e-4f));
    }

    [Test]
    public void PrefillInOneBatch_IsBitIdenticalToTokenByToken_AcrossSwiGluSlices()
    {
        // 2,050 feed-forward values per token: the SwiGLU slices of 2,048 values cut the tokens at different places in
        // a nine-token step and in one-token steps, and each token must still get the same bits.
        string dir = Path.Combine(Path.GetTempPath(), "inference-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string path = Path.Combine(dir, "ffn2056.gguf");
            SyntheticModel.Write(path, new SyntheticModelOptions
            {
                Dimension = 64, LayerCount = 2, HeadCount = 8, KvHeadCount = 2, FeedForwardLength = 2050, ContextLength = 64,
                TensorType = GgmlType.F32, Seed = 11, WeightScale = 0.05f, TokenizerDonorPath = TestData.Stories260K,
            });
            using var gguf = GgufFile.Open(path);
            var config = ModelConfig.FromGguf(gguf);
            var model = new LlamaModel(gguf, config);
            using var pool = new WorkerPool(2);
            int[] prompt = [1, 403, 407, 261, 378, 432, 383, 286, 261];

            var batch = new ModelBatch();
            batch.Add(3, prompt, 0, wantLogits: true);
            var whole = new float[config.VocabSize];
            model.Forward(batch, new ContiguousKvCache(config, 64), whole, pool);

            var kv = new ContiguousKvCache(config, 64);
            var stepwise = new float[config.VocabSize];
            for (int i = 0; i < prompt.Length; i++)
            {
                batch.Clear();
                batch.Add(3, prompt.AsSpan(i, 1), i, wantLogits: true);
                model.Forward(batch, kv, stepwise, pool);
            }
            Assert.That(whole.All(float.IsFinite), Is.True);
            Assert.That(stepwise, Is.EqualTo(whole));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The weight sample behind prefix identities reads the matrices as bound: preparing an F16 model rescales its
    /// subnormal rows (WeightMatrix.HalfShift), and the identity must be the same before and after the first forward pass.
    /// </summary>
    [Test]
    public void WeightSample_IsTheSameBeforeAndAfterPreparing()
    {
        string dir = TestData.TempDir();
        try
        {
            string path = Path.Combine(dir, "f16.gguf");
            SyntheticModel.Write(path, new SyntheticModelOptions
            {
                Dimension = 64, LayerCount = 1, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 128,
                TensorType = GgmlType.F16, Seed = 3, WeightScale = 0.08f, OutputHead = OutputHead.TiedToEmbedding,
                TokenizerDonorPath = TestData.Stories260K,
            });
            using var gguf = GgufFile.Open(path);
            Assert.That(LlamaCppDifferentialTests.HasSubnormalHalves(gguf, "token_embd.weight"), "the table holds subnormal halves, so preparing rescales it");
            var model = new LlamaModel(gguf, ModelConfig.FromGguf(gguf));
            var before = new System.IO.Hashing.XxHash64();
            model.AppendWeightSample(before);
            model.PrepareForCpu();
            var after = new System.IO.Hashing.XxHash64();
            model.AppendWeightSample(after);
            Assert.That(after.GetCurrentHashAsUInt64(), Is.EqualTo(before.GetCurrentHashAsUInt64()));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The bytes the KV pool's memory rule subtracts count every expert of a stacked tensor (they share its name) and the
    /// bytes a decoded token streams (the products' matrices: an untied embedding table, read one row per token, is not
    /// one of them) are the file's, so the decision whether they stream from memory sees the whole model.
    /// </summary>
    [TestCase("llama", 0, OutputHead.Separate)]
    [TestCase("llama", 0, OutputHead.TiedToEmbedding)]
    [TestCase("mixtral", 8, OutputHead.Separate)]
    [TestCase("qwen2moe", 4, OutputHead.Separate)]
    public void WeightBytes_CountEveryExpert_AndMatMulBytesTheProductsMatrices(string arch, int experts, OutputHead head)
    {
        string dir = TestData.TempDir();
        try
        {
            string path = Path.Combine(dir, "m.gguf");
            SyntheticModel.Write(path, new SyntheticModelOptions
            {
                Architecture = arch == "mixtral" ? "llama" : arch, Dimension = 64, LayerCount = 2, HeadCount = 8, KvHeadCount = 2,
                FeedForwardLength = 128, ExpertCount = experts, ExpertUsedCount = experts > 0 ? 2 : 0,
                ExpertFeedForwardLength = experts > 0 ? 96 : 0, SharedExpertFeedForwardLength = arch == "qwen2moe" ? 128 : 0,
                TensorType = GgmlType.Q8_0, Seed = 9, WeightScale = 0.08f, OutputHead = head, TokenizerDonorPath = TestData.Stories260K,
            });
            using var gguf = GgufFile.Open(path);
            var model = new LlamaModel(gguf, ModelConfig.FromGguf(gguf));
            long matrices = 0, vectors = 0, embedding = 0;
            foreach (var t in gguf.Tensors)
            {
                if (t.Dimensions.Length < 2) vectors += 4L * t.Dimensions[0];
                else matrices += t.ByteCount;
                if (t.Name == "token_embd.weight") embedding = t.ByteCount;
            }
            Assert.That(embedding, Is.GreaterThan(0));
            Assert.That(model.WeightBytes, Is.EqualTo(matrices + vectors));
            bool tied = !gguf.Tensors.Any(t => t.Name == "output.weight");
            Assert.That(tied, Is.EqualTo(head == OutputHead.TiedToEmbedding));
            Assert.That(model.MatMulBytes, Is.EqualTo(tied ? matrices : matrices - embedding));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
