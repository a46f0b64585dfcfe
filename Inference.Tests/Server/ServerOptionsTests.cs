using Inference.Engine;
using Inference.KvCache;
using Inference.Server;

namespace Inference.Tests.Server;

/// <summary>The server's command line: the engine options it shares with the CLI, by vLLM's names, and one-line errors.</summary>
public class ServerOptionsTests
{
    [Test]
    public void EngineOptions_ByVllmNames()
    {
        var options = ServerOptions.Parse([
            "--model", "m.gguf", "--urls", "http://127.0.0.1:9", "--model-id", "x", "--threads", "3", "--max-model-len", "777",
            "--max-num-seqs", "5", "--max-num-batched-tokens", "64", "--block-size", "32", "--kv-cache-dtype", "f32",
            "--no-enable-prefix-caching", "--gpu-memory-utilization", "0.5", "--device", "cpu",
        ]);
        Assert.That(options.ModelPath, Is.EqualTo("m.gguf"));
        Assert.That(options.Urls, Is.EqualTo("http://127.0.0.1:9"));
        Assert.That(options.ModelId, Is.EqualTo("x"));
        var e = options.Engine;
        Assert.That((e.Threads, e.ContextLength, e.MaxNumSeqs, e.MaxNumBatchedTokens, e.Device), Is.EqualTo((3, (int?)777, 5, 64, Device.Cpu)));
        Assert.That((e.KvCache.BlockSize, e.KvCache.DataType, e.KvCache.PrefixCaching, e.KvCache.MemoryFraction),
            Is.EqualTo((32, KvCacheDataType.Float32, PrefixCachingMode.Disabled, 0.5)));
    }

    [Test]
    public void Defaults_AreTheEngineDefaults_AndOldNamesStillWork()
    {
        var options = ServerOptions.Parse(["--model", "m.gguf"]);
        Assert.That(options.Engine, Is.EqualTo(new EngineOptions()));
        Assert.That(ServerOptions.Parse(["-m", "m.gguf", "--ctx-size", "99"]).Engine.ContextLength, Is.EqualTo(99));
        Assert.That(ServerOptions.Parse(["--model=m.gguf", "-c", "98", "-t", "1"]).Engine.ContextLength, Is.EqualTo(98));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--enable-prefix-caching", "--kv-cache-dtype", "auto"]).Engine.KvCache,
            Is.EqualTo(new KvCacheOptions()));
    }

    [TestCase("--bogus", "--bogus")]
    [TestCase("--threads", "threads")]
    [TestCase("--threads 0", "Threads")]
    [TestCase("--block-size 1000", "1000")]
    [TestCase("--kv-cache-dtype q9", "q9")]
    [TestCase("--gpu-memory-utilization 2", "MemoryFraction")]
    [TestCase("--max-num-seqs x", "x")]
    [TestCase("--enable-prefix-caching --no-enable-prefix-caching", "contradict")]
    [TestCase("--draft-model d.gguf --ngram-speculation", "contradict")]
    [TestCase("--num-speculative-tokens 3", "--draft-model")]
    [TestCase("--ngram-speculation --num-speculative-tokens 0", "NumSpeculativeTokens")]
    [TestCase("--ngram-speculation --prompt-lookup-min 5 --prompt-lookup-max 2", "PromptLookupMin")]
    [TestCase("--prompt-lookup-max 2", "--ngram-speculation")]
    [TestCase("--ngram-speculation --draft-stop-margin 0.05", "--draft-model")]
    [TestCase("--draft-model d.gguf --draft-stop-margin -1", "DraftStopMargin")]
    [TestCase("--speculative-config {\"model\":", "--speculative-config")]
    [TestCase("--speculative-config [4]", "JSON object")]
    [TestCase("--speculative-config {\"method\":\"eagle\",\"model\":\"e\"}", "eagle")]
    [TestCase("--speculative-config {\"model\":\"d.gguf\",\"draft_tensor_parallel_size\":1}", "draft_tensor_parallel_size")]
    [TestCase("--speculative-config {\"num_speculative_tokens\":3}", "\"model\"")]
    [TestCase("--speculative-config {\"model\":\"d.gguf\",\"num_speculative_tokens\":0}", "NumSpeculativeTokens")]
    [TestCase("--speculative-config {\"model\":\"d.gguf\",\"num_speculative_tokens\":\"3\"}", "integer")]
    [TestCase("--speculative-config {\"method\":\"ngram\",\"model\":\"d.gguf\"}", "no \"model\"")]
    [TestCase("--speculative-config {\"method\":\"ngram\",\"prompt_lookup_min\":4,\"prompt_lookup_max\":2}", "PromptLookupMin")]
    [TestCase("--speculative-config {\"model\":\"d.gguf\",\"prompt_lookup_max\":2}", "ngram")]
    [TestCase("--speculative-config {\"method\":\"ngram\"} --num-speculative-tokens 3", "contradicts")]
    [TestCase("--speculative-config {\"method\":\"ngram\"} --draft-model d.gguf", "contradicts")]
    [TestCase("--kv-eviction lru", "lru")]
    [TestCase("--kv-recent-tokens 100", "--kv-eviction")]
    [TestCase("--kv-eviction sinks --kv-heavy-hitter-tokens 8", "h2o")]
    [TestCase("--kv-eviction sinks --kv-recent-tokens 0", "RecentTokens")]
    [TestCase("--weight-hash-cache-dir", "weight-hash-cache-dir")]
    [TestCase("--weight-hash-cache-dir d --no-weight-hash-cache", "contradict")]
    public void BadOptions_AreOneLineArgumentErrors(string extra, string mention)
    {
        var e = Assert.Throws<ArgumentException>(() => ServerOptions.Parse(["--model", "m.gguf", .. extra.Split(' ')]))!;
        Assert.That(e.Message, Does.Contain(mention));
        Assert.That(e.Message, Does.Not.Contain('\n'));
    }

    [Test]
    public void WeightHashCacheFolder_IsAnOption()
    {
        Assert.That(ServerOptions.Parse(["--model", "m.gguf"]).Engine.WeightHashCacheDirectory, Is.Null, "default: the user's cache folder");
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--weight-hash-cache-dir", "/var/cache/x"]).Engine.WeightHashCacheDirectory, Is.EqualTo("/var/cache/x"));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--no-weight-hash-cache"]).Engine.WeightHashCacheDirectory, Is.EqualTo(""));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--weight-hash-cache-dir", ""]).Engine.WeightHashCacheDirectory, Is.EqualTo(""), "an empty folder turns it off, as in EngineOptions");
    }

    [Test]
    public void WeightHashCacheFolder_ThatIsAFile_IsRefused()
    {
        string file = Path.GetTempFileName();
        try
        {
            var e = Assert.Throws<ArgumentException>(() => ServerOptions.Parse(["--model", "m.gguf", "--weight-hash-cache-dir", file]))!;
            Assert.That(e.Message, Does.Contain("is a file, not a folder"));
        }
        finally
        {
            File.Delete(file);
        }
    }

    [TestCase("  ", "white space")]
    [TestCase("a\u0001\0b", "not allowed in paths")]
    public void WeightHashCacheFolder_Unusable_IsRefused(string directory, string mention)
    {
        var parse = Assert.Throws<ArgumentException>(() => ServerOptions.Parse(["--model", "m.gguf", "--weight-hash-cache-dir", directory]))!;
        Assert.That(parse.Message, Does.Contain("--weight-hash-cache-dir").And.Contain(mention));
        Assert.That(parse.Message, Does.Not.Contain('\n').And.Not.Contain('\0'));
        var e = Assert.Throws<ArgumentException>(() => _ = new EngineOptions { WeightHashCacheDirectory = directory })!;
        Assert.That(e.Message, Does.Contain(mention));
        Assert.That(e.ParamName, Is.EqualTo(nameof(EngineOptions.WeightHashCacheDirectory)));
        Assert.That(e.Message, Does.Not.Contain('\n'));
        Assert.That(new EngineOptions { WeightHashCacheDirectory = "" }.WeightHashCacheDirectory, Is.Empty);
    }

    [Test]
    public void SpeculativeDecoding_ByVllmNames()
    {
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--draft-model", "d.gguf", "--num-speculative-tokens", "5"]).Engine.Speculative,
            Is.EqualTo(new Inference.Speculative.SpeculativeOptions { Method = Inference.Speculative.SpeculativeMethod.DraftModel, DraftModel = "d.gguf", NumSpeculativeTokens = 5 }));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--ngram-speculation", "--prompt-lookup-max", "4", "--prompt-lookup-min", "2"]).Engine.Speculative,
            Is.EqualTo(new Inference.Speculative.SpeculativeOptions { PromptLookupMin = 2, PromptLookupMax = 4 }));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--draft-model", "d.gguf", "--num-speculative-tokens", "7", "--draft-stop-margin", "0.05"]).Engine.Speculative,
            Is.EqualTo(Inference.Speculative.SpeculativeOptions.Draft("d.gguf", 7) with { DraftStopMargin = 0.05f }));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf"]).Engine.Speculative, Is.Null);
    }

    [Test]
    public void SpeculativeConfig_JsonAsVllmTakesIt()
    {
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--speculative-config", "{\"model\": \"d.gguf\", \"num_speculative_tokens\": 5}"]).Engine.Speculative,
            Is.EqualTo(Inference.Speculative.SpeculativeOptions.Draft("d.gguf", 5)));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--speculative-config", "{\"method\": \"draft_model\", \"model\": \"d.gguf\"}"]).Engine.Speculative,
            Is.EqualTo(Inference.Speculative.SpeculativeOptions.Draft("d.gguf")));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--speculative-config",
                "{\"method\": \"ngram\", \"num_speculative_tokens\": 3, \"prompt_lookup_min\": 2, \"prompt_lookup_max\": 5}"]).Engine.Speculative,
            Is.EqualTo(new Inference.Speculative.SpeculativeOptions { NumSpeculativeTokens = 3, PromptLookupMin = 2, PromptLookupMax = 5 }));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--speculative-config={\"method\":\"ngram\"}"]).Engine.Speculative,
            Is.EqualTo(Inference.Speculative.SpeculativeOptions.NGram()));
    }

    [Test]
    public void KvEviction_Options()
    {
        var sinks = ServerOptions.Parse(["--model", "m.gguf", "--max-model-len", "512", "--block-size", "16", "--kv-eviction", "sinks"]).Engine.KvEviction;
        Assert.That(sinks, Is.EqualTo(new KvEvictionOptions { SinkTokens = 4, RecentTokens = 512 - 4 - 16 }), "the context filled: sinks + recent + a block");
        var h2o = ServerOptions.Parse(["--model", "m.gguf", "--kv-eviction", "h2o", "--kv-sink-tokens", "0", "--kv-recent-tokens", "64", "--kv-heavy-hitter-tokens", "32"]).Engine.KvEviction;
        Assert.That(h2o, Is.EqualTo(new KvEvictionOptions { Policy = KvEvictionPolicy.HeavyHitters, SinkTokens = 0, RecentTokens = 64, HeavyHitterTokens = 32 }));
        Assert.That(ServerOptions.Parse(["--model", "m.gguf", "--kv-eviction", "none"]).Engine.KvEviction, Is.Null);
    }

    [Test]
    public void ModelIsRequired()
    {
        var e = Assert.Throws<ArgumentException>(() => ServerOptions.Parse(["--threads", "2"]))!;
        Assert.That(e.Message, Does.Contain("--model"));
    }
}
