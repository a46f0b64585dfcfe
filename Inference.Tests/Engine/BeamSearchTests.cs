using Inference.Engine;
using Inference.KvCache;
using Inference.Search;
using Inference.Tests.Support;

namespace Inference.Tests.Engine;

/// <summary>Beam search on forked KV against a plain beam search that recomputes every beam's full logits.</summary>
public class BeamSearchTests
{
    /// <summary>The same search, written plainly: each beam's logits from the whole sequence, log-softmax in double.</summary>
    private static async Task<List<(int[] Tokens, double Logprob, bool Finished)>> Reference(InferenceEngine engine, int[] prompt, BeamSearchOptions o)
    {
        var parents = new List<(int[] Tokens, double Logprob)> { ([], 0) };
        var complete = new List<(int[] Tokens, double Logprob, bool Finished)>();
        var live = new List<(int[] Tokens, double Logprob)>();
        for (int step = 0; ; step++)
        {
            var candidates = new List<(double Logprob, int Parent, int Token)>();
            for (int p = 0; p < parents.Count; p++)
            {
                var logits = await engine.GetLogitsAsync([.. prompt, .. parents[p].Tokens]);
                double max = logits.Max();
                double logZ = Math.Log(logits.Sum(x => Math.Exp(x - max)));
                var best = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(o.BeamWidth);
                foreach (int t in best) candidates.Add((parents[p].Logprob + (logits[t] - max - logZ), p, t));
            }
            live = [];
            foreach (var (lp, p, t) in candidates.OrderByDescending(c => c.Logprob).ThenBy(c => c.Parent).ThenBy(c => c.Token))
            {
                if (live.Count == o.BeamWidth) break;
                int[] tokens = [.. parents[p].Tokens, t];
                if (o.StopAtEndOfSequence && engine.Tokenizer.IsEndOfGeneration(t)) complete.Add((tokens, lp, true));
                else live.Add((tokens, lp));
            }
            parents = live;
            if (complete.Count >= o.BeamWidth || live.Count == 0 || step + 1 >= o.MaxTokens) break;
        }
        return [.. complete.Concat(live.Select(l => (l.Tokens, l.Logprob, false))).OrderByDescending(b => o.Score(b.Item2, b.Item1.Length)).Take(o.BeamWidth)];
    }

    [TestCase(4, 1f)]
    [TestCase(3, 0.5f)]
    public async Task SameBeamsAndScoresAsAPlainReference(int width, float lengthPenalty)
    {
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1, KvCache = new KvCacheOptions { BlockSize = 16 } });
        var prompt = engine.Tokenize("Once upon a time, there was a little");
        var options = new BeamSearchOptions { BeamWidth = width, MaxTokens = 12, LengthPenalty = lengthPenalty };
        var result = await engine.BeamSearchAsync(prompt, options);
        var expected = await Reference(engine, prompt, options);
        Assert.That(result.Beams.Select(b => b.TokenIds), Is.EqualTo(expected.Select(e => e.Tokens)));
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.That(result.Beams[i].CumulativeLogprob, Is.EqualTo(expected[i].Logprob).Within(1e-3), $"beam {i}");
            Assert.That(result.Beams[i].Score, Is.EqualTo(options.Score(expected[i].Logprob, expected[i].Tokens.Length)).Within(1e-3));
            Assert.That(result.Beams[i].Finished, Is.EqualTo(expected[i].Finished));
        }
        Assert.That(result.Beams.Select(b => b.Score), Is.Ordered.Descending);
        Assert.That((await engine.GetStatsAsync()).KvCache.UsedBlockCount, Is.Zero);
    }

    [Test]
    public async Task FourBeamsOverA496TokenPrompt_ShareThePromptBlocks()
    {
        const int blockSize = 16, promptLength = 496, maxTokens = 16;
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions
        {
            Threads = 1,
            KvCache = new KvCacheOptions { BlockSize = blockSize, PrefixCaching = PrefixCachingMode.Disabled },
        });
        var rng = new Random(3);
        var prompt = Enumerable.Range(0, promptLength).Select(i => i == 0 ? 1 : 3 + rng.Next(engine.Config.VocabSize - 3)).ToArray();
        var result = await engine.BeamSearchAsync(prompt, new BeamSearchOptions { BeamWidth = 4, MaxTokens = maxTokens, StopAtEndOfSequence = false });
        Assert.That(result.Beams, Has.Count.EqualTo(4));
        Assert.That(result.Beams.Select(b => b.TokenIds.Count), Has.All.EqualTo(maxTokens));
        int promptBlocks = promptLength / blockSize, newBlocks = (maxTokens + blockSize - 1) / blockSize;
        TestContext.Out.WriteLine($"peak blocks {result.PeakUsedBlockCount}; prompt {promptBlocks}; bound {promptBlocks + 4 * (newBlocks + 1)}");
        Assert.That(result.PeakUsedBlockCount, Is.LessThanOrEqualTo(promptBlocks + 4 * (newBlocks + 1)));
        Assert.That((await engine.GetStatsAsync()).KvCache.UsedBlockCount, Is.Zero);
    }
}
