using Inference.Engine;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>Log-probabilities of generated and prompt tokens against a float64 log-softmax of the engine's own logits.</summary>
public class LogprobsTests
{
    private static double[] LogSoftmax(float[] logits, double temperature = 1)
    {
        double max = logits.Max();
        double logZ = Math.Log(logits.Sum(x => Math.Exp((x - max) / temperature)));
        return logits.Select(x => (x - max) / temperature - logZ).ToArray();
    }

    [Test]
    public async Task GeneratedTokens_CarryTheLogprobsOfTheirDistribution_StreamedAndInTheCompletion()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        var prompt = engine.Tokenize("Once upon a time");
        var sampling = new SamplingOptions { Temperature = 0.8f, Seed = 5, MaxTokens = 12, Logprobs = 3, EndOfSequence = EndOfSequenceHandling.Ignore };
        var stream = engine.GenerateAsync(prompt, sampling);
        var streamed = new List<TokenLogprobs>();
        await foreach (var t in stream)
            if (t.Logprobs is { } lp) streamed.Add(lp);
        var completion = await stream.Completion;
        Assert.That(completion.Logprobs, Is.Not.Null);
        Assert.That(completion.Logprobs!, Has.Count.EqualTo(completion.TokenIds.Count));
        Assert.That(streamed, Is.EqualTo(completion.Logprobs).AsCollection);

        var context = prompt.ToList();
        for (int i = 0; i < completion.TokenIds.Count; i++)
        {
            var expected = LogSoftmax(await engine.GetLogitsAsync(context), 0.8);
            var lp = completion.Logprobs![i];
            Assert.That(lp.TokenId, Is.EqualTo(completion.TokenIds[i]));
            Assert.That(lp.Logprob, Is.EqualTo(expected[lp.TokenId]).Within(1e-4), $"token {i}");
            Assert.That(lp.Top, Has.Count.EqualTo(3));
            var best = Enumerable.Range(0, expected.Length).OrderByDescending(j => expected[j]).Take(3).ToArray();
            Assert.That(lp.Top.Select(a => a.TokenId), Is.EqualTo(best));
            for (int j = 0; j < 3; j++) Assert.That(lp.Top[j].Logprob, Is.EqualTo(expected[best[j]]).Within(1e-4));
            context.Add(completion.TokenIds[i]);
        }

        var plain = await engine.CompleteAsync(prompt, sampling with { Logprobs = null });
        Assert.That(plain.TokenIds, Is.EqualTo(completion.TokenIds), "asking for logprobs does not change the draw");
        Assert.That(plain.Logprobs, Is.Null);
    }

    [Test]
    public async Task PromptLogprobs_ScoreEachTokenGivenTheOnesBefore_EvenWhenThePrefixIsCached()
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions
        {
            Threads = 1,
            KvCache = new Inference.KvCache.KvCacheOptions { BlockSize = 16 },
        });
        var prompt = engine.Tokenize("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends.");
        Assert.That(prompt.Length, Is.GreaterThan(32));
        // A first run fills the prefix cache; the scored run must still compute every position.
        await engine.CompleteAsync(prompt, SamplingOptions.Greedy with { MaxTokens = 2 });
        var scored = await engine.CompleteAsync(prompt, SamplingOptions.Greedy with { MaxTokens = 2, PromptLogprobs = 2 });
        Assert.That(scored.PromptLogprobs, Has.Count.EqualTo(prompt.Length - 1));
        for (int p = 1; p < prompt.Length; p++)
        {
            var expected = LogSoftmax(await engine.GetLogitsAsync(prompt[..p]));
            var lp = scored.PromptLogprobs![p - 1];
            Assert.That(lp.TokenId, Is.EqualTo(prompt[p]));
            Assert.That(lp.Logprob, Is.EqualTo(expected[prompt[p]]).Within(1e-4), $"position {p}");
            Assert.That(lp.Top.Select(a => a.TokenId), Is.EqualTo(Enumerable.Range(0, expected.Length).OrderByDescending(j => expected[j]).Take(2)));
        }
        var stats = await engine.GetStatsAsync();
        Assert.That(stats.KvCache.UsedBlockCount, Is.Zero, "scoring leaves no block in use");
    }
}
