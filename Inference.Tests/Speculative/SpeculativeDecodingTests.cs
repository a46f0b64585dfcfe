using Inference.Constraints;
using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Sampling;
using Inference.Speculative;
using Inference.Tests.Support;

namespace Inference.Tests.Speculative;

/// <summary>
/// Speculative decoding in the engine loop: greedy output equal to plain decoding under concurrent load (continuous
/// batching, chunked prefill, preemption, prefix caching), sampled output distributed as the model's, KV rolled back.
/// </summary>
[NonParallelizable]
public class SpeculativeDecodingTests
{
    private static string _dir = "";

    /// <summary>A random-weight draft with stories260K's vocabulary: its proposals are mostly rejected.</summary>
    private static string RandomDraft => Path.Combine(_dir, "random-draft.gguf");

    [OneTimeSetUp]
    public void WriteDraft()
    {
        _dir = TestData.TempDir();
        SyntheticModel.Write(RandomDraft, new SyntheticModelOptions
        {
            Dimension = 64, LayerCount = 2, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 128, Seed = 3,
            TokenizerDonorPath = TestData.Stories260K,
        });
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    private static SpeculativeOptions Speculation(string proposer, int k) => proposer switch
    {
        "ngram" => SpeculativeOptions.NGram(k),
        "self" => SpeculativeOptions.Draft(TestData.Stories260K, k),
        "random" => SpeculativeOptions.Draft(RandomDraft, k),
        // The draft stops at tokens it is unsure of: fewer, likelier proposals.
        "self-pmin" => SpeculativeOptions.Draft(TestData.Stories260K, k) with { DraftMinProbability = 0.6f },
        // The draft stops after a near tie of its two likeliest tokens.
        "self-margin" => SpeculativeOptions.Draft(TestData.Stories260K, k) with { DraftStopMargin = 1f },
        _ => throw new ArgumentException(proposer),
    };

    private static readonly string Story =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. One day, she saw a big " +
        "red ball in the park. She ran to the ball and kicked it. The ball went very high. Lily was happy. ";

    private static string[] Prompts() =>
    [
        "Once upon a time", "Tom had a dog", "The sun was hot", "Lily and Ben", "One day", "A big cat sat", "She said", "",
        // Long prompts sharing a prefix: chunked prefill, and prefix-cache hits for the later ones.
        Story + Story + "Then", Story + Story + "The next day", Story + "Tom",
    ];

    [TestCase("ngram", 4)]
    [TestCase("self", 3)]
    [TestCase("random", 5)]
    [TestCase("self-pmin", 6)]
    [TestCase("self-margin", 8)]
    public async Task Greedy_SameTokensAsPlainDecoding_UnderLoad_NoLeakedBlocks(string proposer, int k)
    {
        var prompts = Prompts();
        var sampling = SamplingOptions.Greedy with { MaxTokens = 60, EndOfSequence = EndOfSequenceHandling.Ignore };
        var baseOptions = new EngineOptions
        {
            Threads = 2,
            MaxNumSeqs = 16,
            MaxNumBatchedTokens = 64,
            ContextLength = 256,
            Device = Device.Cpu,
            // 48 blocks of 8 tokens for 22 requests of up to 160 tokens: requests queue and get preempted.
            KvCache = new KvCacheOptions { BlockSize = 8, PoolBytes = 48 * KvCacheStorage.GetBlockByteCount(5, 8, 4, 8, KvCacheDataType.Float16) },
        };
        var expected = new List<IReadOnlyList<int>>();
        await using (var plain = await InferenceEngine.LoadAsync(TestData.Stories260K, baseOptions with { KvCache = baseOptions.KvCache with { PoolBytes = null } }))
            foreach (var p in prompts) expected.Add((await plain.CompleteAsync(p, sampling)).TokenIds);

        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, baseOptions with { Speculative = Speculation(proposer, k) });
        var results = await Task.WhenAll(Enumerable.Range(0, 2 * prompts.Length).Select(i => engine.CompleteAsync(prompts[i % prompts.Length], sampling)));
        for (int i = 0; i < results.Length; i++)
            Assert.That(results[i].TokenIds, Is.EqualTo(expected[i % prompts.Length]), $"request {i}: '{prompts[i % prompts.Length]}'");

        var stats = await engine.GetStatsAsync();
        var spec = stats.Speculation!;
        TestContext.Out.WriteLine($"{proposer} k={k}: steps {spec.Steps}, proposed {spec.ProposedTokens}, accepted {spec.AcceptedTokens} " +
            $"(rate {spec.AcceptanceRate:F2}, mean {spec.MeanAcceptedTokens:F2}), preemptions {stats.PreemptionCount}, prefix hits {stats.KvCache.PrefixHitTokenCount}");
        Assert.That(stats.PreemptionCount, Is.GreaterThan(0), "the pool was small enough to force preemption");
        Assert.That(stats.KvCache.PrefixHitTokenCount, Is.GreaterThan(0), "prompts hit the prefix cache");
        Assert.That(spec.Steps, Is.GreaterThan(0));
        Assert.That(spec.AcceptedTokens, Is.GreaterThan(0));
        if (proposer == "random") Assert.That(spec.AcceptedTokens, Is.LessThan(spec.ProposedTokens), "proposals were rejected and rolled back");
        Assert.That(results.Where(r => r.Metrics.Speculation is not null), Is.Not.Empty);
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "every KV block is free again");
        Assert.That(stats.RunningCount + stats.WaitingCount, Is.Zero);
        await engine.Loop.InvokeAsync(l =>
        {
            l.KvCache.CheckInvariants();
            if (l.Proposer is DraftModelProposer draft)
            {
                draft.KvCache.CheckInvariants();
                Assert.That(draft.KvCache.UsedBlockCount, Is.Zero, "every draft KV block is free again");
            }
            return 0;
        });
    }

    [TestCase(0f)]
    [TestCase(1.5f)]
    [TestCase(1e30f)]
    public async Task DraftStopMargin_EndsTheProposalsAfterANearTie(float margin)
    {
        // The random draft's logits are nearly flat (its top two tokens within a few hundredths of a nat), so any margin
        // above that stops it after its first proposal; without a margin it proposes k tokens every step.
        const int k = 5;
        var sampling = SamplingOptions.Greedy with { MaxTokens = 40, EndOfSequence = EndOfSequenceHandling.Ignore };
        var options = new EngineOptions { Threads = 1, ContextLength = 256, Device = Device.Cpu };
        IReadOnlyList<int> expected;
        await using (var plain = await InferenceEngine.LoadAsync(TestData.Stories260K, options))
            expected = (await plain.CompleteAsync("Once upon a time", sampling)).TokenIds;
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, options with
        {
            Speculative = Speculation("random", k) with { DraftStopMargin = margin },
        });
        var result = await engine.CompleteAsync("Once upon a time", sampling);
        Assert.That(result.TokenIds, Is.EqualTo(expected));
        var spec = result.Metrics.Speculation!;
        TestContext.Out.WriteLine($"margin {margin}: steps {spec.Steps}, proposed {spec.ProposedTokens}, accepted {spec.AcceptedTokens}");
        Assert.That(spec.Steps, Is.GreaterThan(10));
        if (margin == 0)
            Assert.That(spec.ProposedTokens, Is.GreaterThan(3 * spec.Steps), "k tokens per step, fewer only near the end");
        else
            Assert.That(spec.ProposedTokens, Is.EqualTo(spec.Steps), "one proposal per step: the first is a near tie");
    }

    [Test]
    public async Task DraftComputesEachPromptChunk_InTheStepThatComputesItForTheModel()
    {
        // A 16-token step budget: the story's prompt takes several chunks; the second request hits the prefix cache.
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions
        {
            Threads = 1, ContextLength = 256, MaxNumBatchedTokens = 16, Device = Device.Cpu,
            KvCache = new KvCacheOptions { BlockSize = 8 }, Speculative = Speculation("self", 3),
        });
        var draft = (DraftModelProposer)engine.Loop.Proposer!;
        int promptChunks = 0, mismatches = 0;
        engine.Loop.StepCompleted = output =>
        {
            foreach (ref readonly var chunk in output.Chunks)
            {
                int end = chunk.StartPosition + chunk.TokenCount;
                if (end > chunk.Request.PromptTokenCount) continue;
                promptChunks++;
                // The draft holds exactly the prompt up to the chunk's end (from position 0, whatever the model's prefix hit).
                if (!draft.KvCache.Contains(chunk.RequestId) || draft.KvCache.GetTokenCount(chunk.RequestId) != end) mismatches++;
            }
        };
        var sampling = SamplingOptions.Greedy with { MaxTokens = 12, EndOfSequence = EndOfSequenceHandling.Ignore };
        var first = await engine.CompleteAsync(Story + "Then", sampling);
        var second = await engine.CompleteAsync(Story + "Then", sampling);
        engine.Loop.StepCompleted = null;
        Assert.That(second.TokenIds, Is.EqualTo(first.TokenIds));
        Assert.That(second.Metrics.PrefixHitTokens, Is.GreaterThan(0), "the second prompt hit the model's prefix cache");
        Assert.That(promptChunks, Is.GreaterThan(4), "prompts took several chunks");
        Assert.That(mismatches, Is.Zero);
        Assert.That(first.Metrics.Speculation!.AcceptedTokens, Is.GreaterThan(0));
    }

    [TestCase("ngram")]
    [TestCase("random")]
    public async Task Greedy_WithPenaltiesLogprobsAndAConstraint_SameAsPlainDecoding(string proposer)
    {
        var options = new EngineOptions { Threads = 1, ContextLength = 256, Device = Device.Cpu };
        SamplingOptions[] samplings =
        [
            SamplingOptions.Greedy with { MaxTokens = 50, EndOfSequence = EndOfSequenceHandling.Ignore, RepetitionPenalty = 1.3f, PenaltyLastN = 16, FrequencyPenalty = 0.4f, PresencePenalty = 0.2f, Logprobs = 3 },
            SamplingOptions.Greedy with { MaxTokens = 50, Constraint = new RegexConstraint("( ?(the|a|big|little|dog|cat|was|happy|and))+\\.") , Logprobs = 1 },
            SamplingOptions.Greedy with { MaxTokens = 40, StopStrings = ["ball"] },
        ];
        var expected = new List<Completion>();
        await using (var plain = await InferenceEngine.LoadAsync(TestData.Stories260K, options))
            foreach (var s in samplings) expected.Add(await plain.CompleteAsync(Story, s));
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, options with { Speculative = Speculation(proposer, 4) });
        for (int i = 0; i < samplings.Length; i++)
        {
            var got = await engine.CompleteAsync(Story, samplings[i]);
            Assert.That(got.TokenIds, Is.EqualTo(expected[i].TokenIds), $"sampling {i}");
            Assert.That(got.Text, Is.EqualTo(expected[i].Text), $"sampling {i}");
            Assert.That(got.FinishReason, Is.EqualTo(expected[i].FinishReason), $"sampling {i}");
            if (expected[i].Logprobs is { } lp)
                Assert.That(got.Logprobs!.Select(l => l.Logprob), Is.EqualTo(lp.Select(l => l.Logprob)).Within(1e-4f), $"sampling {i}");
        }
        Assert.That((await engine.GetStatsAsync()).Speculation!.Steps, Is.GreaterThan(0));
    }

    /// <summary>
    /// Temperature 1, top-k 3: the joint distribution of the first four generated tokens (3⁴ = 81 outcomes; tokens 2 to
    /// 4 come from verification steps) over 3,000 seeds against the model's own distribution computed from its logits,
    /// by a chi-square test and a total-variation bound. Each seeded output also equals plain decoding's with that seed.
    /// </summary>
    [TestCase("ngram")]
    [TestCase("self")]
    public async Task Sampling_FollowsTheModelsDistribution(string proposer)
    {
        const int runs = 3000, topK = 3;
        // All the runs are queued at once.
        var options = new EngineOptions { Threads = 2, ContextLength = 128, MaxNumSeqs = 64, Device = Device.Cpu, MaxWaitingRequests = runs };
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, options with { Speculative = Speculation(proposer, 2) });
        // The start, its greedy continuation and the start again: prompt lookup then proposes the continuation.
        var start = engine.Tokenize("Lily saw a");
        var continuation = (await engine.CompleteAsync(start, SamplingOptions.Greedy with { MaxTokens = 12, EndOfSequence = EndOfSequenceHandling.Ignore })).TokenIds;
        int[] prompt = [.. start, .. continuation, .. start[1..]];
        var sampling = new SamplingOptions { Temperature = 1, TopK = topK, TopP = 1, MinP = 0, MaxTokens = 4, EndOfSequence = EndOfSequenceHandling.Ignore };

        // The model's distribution of (t1, t2, t3, t4), from its logits with the sampler's own transform.
        var expected = new Dictionary<string, double>();
        var sampler = new Sampler(sampling, engine.Config.VocabSize);
        var probs = new float[engine.Config.VocabSize];
        async Task Expand(int[] tokens, int depth, string key, double p)
        {
            if (depth == 4)
            {
                expected[key] = p;
                return;
            }
            var logits = await engine.GetLogitsAsync(tokens);
            sampler.GetDistribution(logits, tokens, prompt.Length, probs);
            var support = probs.Select((q, t) => (t, (double)q)).Where(x => x.Item2 > 0).ToArray();
            foreach (var (t, q) in support) await Expand([.. tokens, t], depth + 1, key + "," + t, p * q);
        }
        await Expand(prompt, 0, "", 1);
        Assert.That(expected.Values.Sum(), Is.EqualTo(1).Within(1e-3));

        var results = await Task.WhenAll(Enumerable.Range(0, runs).Select(i => engine.CompleteAsync(prompt, sampling with { Seed = (ulong)(1000 + i) })));
        var observed = results.GroupBy(r => "," + string.Join(",", r.TokenIds)).ToDictionary(g => g.Key, g => g.Count());
        Assert.That(observed.Keys.Where(key => !expected.ContainsKey(key)), Is.Empty, "no outcome outside the model's support");

        // Chi-square over outcomes with expected count ≥ 5 (the rest pooled into one cell).
        double chi = 0, pooledExpected = 0, pooledObserved = 0;
        int cells = 0;
        foreach (var (key, p) in expected)
        {
            double e = p * runs;
            int o = observed.GetValueOrDefault(key);
            if (e < 5)
            {
                pooledExpected += e;
                pooledObserved += o;
                continue;
            }
            chi += (o - e) * (o - e) / e;
            cells++;
        }
        if (pooledExpected > 0)
        {
            chi += (pooledObserved - pooledExpected) * (pooledObserved - pooledExpected) / pooledExpected;
            cells++;
        }
        double tv = 0.5 * expected.Sum(kv => Math.Abs(kv.Value - observed.GetValueOrDefault(kv.Key) / (double)runs));
        var spec = (await engine.GetStatsAsync()).Speculation!;
        TestContext.Out.WriteLine($"{proposer}: chi-square {chi:F1} over {cells} cells, TV {tv:F3}, acceptance {spec.AcceptanceRate:F2} ({spec.AcceptedTokens}/{spec.ProposedTokens})");
        // df = cells − 1; the 0.999 quantile of chi-square is below df + 3.1·sqrt(2·df) + 10 for these df.
        int df = cells - 1;
        Assert.That(chi, Is.LessThan(df + 3.1 * Math.Sqrt(2 * df) + 10), "chi-square at the 0.1% level");
        Assert.That(tv, Is.LessThan(0.08));
        Assert.That(spec.AcceptedTokens, Is.GreaterThan(0));
        Assert.That(spec.AcceptedTokens, Is.LessThan(spec.ProposedTokens), "both acceptance and rejection happened");

        // Point-mass proposals draw once per position, as plain decoding does: a seed gives the same tokens.
        await using var plain = await InferenceEngine.LoadAsync(TestData.Stories260K, options);
        for (int i = 0; i < 50; i++)
            Assert.That((await plain.CompleteAsync(prompt, sampling with { Seed = (ulong)(1000 + i) })).TokenIds, Is.EqualTo(results[i].TokenIds), $"seed {1000 + i}");
    }

    [Test]
    public void DraftWithAnotherVocabulary_IsRefused()
    {
        var e = Assert.ThrowsAsync<DraftModelMismatchException>(async () =>
        {
            await using var _ = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions
            {
                Device = Device.Cpu,
                Speculative = SpeculativeOptions.Draft(TestData.Path("llama-2-tiny-random/llama-2-tiny-random.gguf")),
            });
        });
        Assert.That(e!.Message, Does.Contain("same vocabulary"));
    }

    [Test]
    public void Options_AreValidated()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SpeculativeOptions { NumSpeculativeTokens = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SpeculativeOptions { NumSpeculativeTokens = 33 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SpeculativeOptions { PromptLookupMin = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SpeculativeOptions { DraftMinProbability = 1.5f });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SpeculativeOptions { DraftStopMargin = -0.1f });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SpeculativeOptions { DraftStopMargin = float.NaN });
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SpeculativeOptions { DraftStopMargin = float.PositiveInfinity });
        Assert.Throws<ArgumentException>(() => new SpeculativeOptions { Method = SpeculativeMethod.DraftModel }.Validate());
        Assert.Throws<ArgumentException>(() => new SpeculativeOptions { PromptLookupMin = 4, PromptLookupMax = 2 }.Validate());
        Assert.Throws<ArgumentException>(() => new SpeculativeOptions { DraftModel = "x.gguf" }.Validate());
        Assert.ThrowsAsync<FileNotFoundException>(async () => await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cpu, Speculative = SpeculativeOptions.Draft(Path.Combine(_dir, "missing.gguf")) }));
    }

    [Test]
    public void PromptLookup_FindsTheLatestLongestMatch()
    {
        int[] tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3];
        // Suffix [2, 3] (n = 2) last occurred at 5..6, followed by 7, 8, 5, 2, 3.
        Assert.That(NGramProposer.Find(tokens, 1, 2, out int length), Is.EqualTo(7));
        Assert.That(length, Is.EqualTo(5));
        // n = 3 ([5, 2, 3]) does not occur earlier; n = 2 is used.
        Assert.That(NGramProposer.Find(tokens, 2, 3, out _), Is.EqualTo(7));
        Assert.That(NGramProposer.Find([4, 5, 6], 1, 3, out length), Is.EqualTo(-1));
        Assert.That(length, Is.Zero);
        Assert.That(NGramProposer.Find([4, 4], 1, 3, out length), Is.EqualTo(1));
        Assert.That(length, Is.EqualTo(1));
    }
}
