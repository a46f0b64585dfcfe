using Inference.Kernels.Reference;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Sampling;
using Inference.Tests.Models;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>A Hugging Face checkpoint folder through the public API, against its GGUF conversion and llama.cpp.</summary>
public class HfCheckpointEngineTests
{
    [TestCase("llama", false)]
    [TestCase("qwen2", true)]
    public async Task CheckpointFolder_SameLogitsAndText_AsConvertedGguf_AndLlamaCpp(string type, bool tied)
    {
        string dir = TestData.TempDir();
        try
        {
            string hf = Path.Combine(dir, "hf");
            HfTestCheckpoint.Write(hf, new HfTestCheckpointOptions { ModelType = type, TieWordEmbeddings = tied, Shards = 2 });
            string gguf = Path.Combine(dir, "converted.gguf");
            using (var checkpoint = HfCheckpoint.Open(hf)) checkpoint.ConvertToGguf(gguf);

            var options = new EngineOptions { Threads = 2, KvCache = new KvCacheOptions { DataType = KvCacheDataType.Float32 } };
            int[] prompt = [1, 17, 300, 45, 99, 310, 511, 260, 7, 402, 388, 129, 64, 250, 333, 480, 21, 5, 290, 301, 44];
            await using var fromFolder = await InferenceEngine.LoadAsync(hf, options);
            await using var fromGguf = await InferenceEngine.LoadAsync(gguf, options);
            var a = await fromFolder.GetLogitsAsync(prompt);
            var b = await fromGguf.GetLogitsAsync(prompt);
            float[] c;
            using (var reference = LlamaCpp.Load(gguf)) c = reference.EvaluateLastLogits(prompt);
            Assert.That(ReferenceCompare.RelativeL2(a, b), Is.LessThan(1e-4), "folder vs converted GGUF");
            Assert.That(ReferenceCompare.RelativeL2(a, c), Is.LessThan(1e-3), "folder vs llama.cpp");

            var sampling = SamplingOptions.Greedy with { MaxTokens = 24, EndOfSequence = EndOfSequenceHandling.Ignore };
            var textA = await fromFolder.CompleteAsync(prompt, sampling);
            var textB = await fromGguf.CompleteAsync(prompt, sampling);
            Assert.That(textA.TokenIds, Is.EqualTo(textB.TokenIds));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

}
