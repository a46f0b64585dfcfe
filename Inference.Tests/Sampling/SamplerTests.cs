using Inference.Sampling;

namespace Inference.Tests.Sampling;

public class SamplerTests
{
    private static float[] RandomLogits(int n, int seed)
    {
        var r = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(r.NextDouble() * 8 - 4);
        return a;
    }

    [Test]
    public void Greedy_PicksArgmax()
    {
        var logits = RandomLogits(512, 1);
        int expected = Array.IndexOf(logits, logits.Max());
        Assert.That(new Sampler(SamplingOptions.Greedy, 512).Sample(logits, []), Is.EqualTo(expected));
    }

    [Test]
    public void SameSeed_SameSequence_DifferentSeed_Differs()
    {
        var opts = new SamplingOptions { Temperature = 1.5f, TopK = 0, TopP = 1, MinP = 0, Seed = 42 };
        int[] Run(SamplingOptions o)
        {
            var s = new Sampler(o, 256);
            return Enumerable.Range(0, 64).Select(i => s.Sample(RandomLogits(256, i), [])).ToArray();
        }
        Assert.That(Run(opts), Is.EqualTo(Run(opts)));
        Assert.That(Run(opts with { Seed = 43 }), Is.Not.EqualTo(Run(opts)));
    }

    [Test]
    public void TopK1_IsGreedy()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 1, TopK = 1, Seed = 3 }, 300);
        for (int i = 0; i < 20; i++)
        {
            var l = RandomLogits(300, 100 + i);
            int expected = Array.IndexOf(l, l.Max());
            Assert.That(s.Sample(l, []), Is.EqualTo(expected));
        }
    }

    [Test]
    public void TopK_OnlyReturnsTopCandidates()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 5, TopK = 5, TopP = 1, MinP = 0, Seed = 9 }, 1000);
        for (int i = 0; i < 200; i++)
        {
            var l = RandomLogits(1000, i);
            var top5 = l.Select((v, id) => (v, id)).OrderByDescending(x => x.v).Take(5).Select(x => x.id).ToHashSet();
            Assert.That(top5, Does.Contain(s.Sample(l, [])));
        }
    }

    [Test]
    public void TopP_KeepsSmallestNucleus()
    {
        // Probabilities 0.5, 0.3, 0.2 (before temperature): top-p 0.7 keeps the first two.
        var l = new[] { MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.2f) };
        var s = new Sampler(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 0.7f, MinP = 0, Seed = 5 }, 3);
        var seen = new HashSet<int>();
        for (int i = 0; i < 500; i++) seen.Add(s.Sample((float[])l.Clone(), []));
        Assert.That(seen, Is.EquivalentTo(new[] { 0, 1 }));
    }

    [Test]
    public void MinP_DropsUnlikely()
    {
        var l = new[] { MathF.Log(0.6f), MathF.Log(0.35f), MathF.Log(0.05f) };
        var s = new Sampler(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0.1f, Seed = 5 }, 3);
        var seen = new HashSet<int>();
        for (int i = 0; i < 500; i++) seen.Add(s.Sample((float[])l.Clone(), []));
        Assert.That(seen, Is.EquivalentTo(new[] { 0, 1 }));
    }

    [Test]
    public void Frequencies_FollowTemperedDistribution()
    {
        var p = new[] { 0.5, 0.25, 0.125, 0.125 };
        var l = p.Select(x => (float)Math.Log(x)).ToArray();
        var s = new Sampler(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0, Seed = 11 }, 4);
        var counts = new int[4];
        const int n = 20000;
        for (int i = 0; i < n; i++) counts[s.Sample((float[])l.Clone(), [])]++;
        for (int i = 0; i < 4; i++) Assert.That(counts[i] / (double)n, Is.EqualTo(p[i]).Within(0.015));
    }

    [Test]
    public void RepetitionPenalty_ChangesGreedyChoice()
    {
        var l = new[] { 2.0f, 1.9f, -1f };
        var s = new Sampler(SamplingOptions.Greedy with { RepetitionPenalty = 1.5f }, 3);
        Assert.That(s.Sample((float[])l.Clone(), [0]), Is.EqualTo(1));
        var f = new Sampler(SamplingOptions.Greedy with { FrequencyPenalty = 0.06f }, 3);
        Assert.That(f.Sample((float[])l.Clone(), [0, 0]), Is.EqualTo(1));
        var pr = new Sampler(SamplingOptions.Greedy with { PresencePenalty = 0.2f }, 3);
        Assert.That(pr.Sample((float[])l.Clone(), [0]), Is.EqualTo(1));
    }

    [Test]
    public void InvalidOptions_ThrowNamingTheOption()
    {
        Assert.That(() => new SamplingOptions { Temperature = -1 }, Throws.TypeOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("Temperature"));
        Assert.That(() => new SamplingOptions { TopP = 0 }, Throws.TypeOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("TopP"));
        Assert.That(() => new SamplingOptions { TopK = -2 }, Throws.TypeOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("TopK"));
        Assert.That(() => new SamplingOptions { MinP = 1.5f }, Throws.TypeOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("MinP"));
        Assert.That(() => new SamplingOptions { MaxTokens = 0 }, Throws.TypeOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("MaxTokens"));
        Assert.That(() => new SamplingOptions { Temperature = float.NaN }, Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => new SamplingOptions { StopStrings = [""] }, Throws.TypeOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("StopStrings"));
    }

    [Test]
    public void FrequencyAndPresencePenalties_CountGeneratedTokensOnly()
    {
        // Token 0 leads by 0.1; it appears twice in the prompt and never in the output: no penalty.
        var l = new[] { 1.1f, 1.0f, 0.5f };
        var f = new Sampler(SamplingOptions.Greedy with { FrequencyPenalty = 0.06f, PresencePenalty = 0.02f }, 3);
        Assert.That(f.Sample((float[])l.Clone(), [0, 0], promptLength: 2), Is.EqualTo(0));
        // Once generated twice, 2 · 0.06 + 0.02 = 0.14 > 0.1 turns the choice.
        Assert.That(f.Sample((float[])l.Clone(), [2, 0, 0], promptLength: 1), Is.EqualTo(1));
        var penalized = (float[])l.Clone();
        f.Sample(penalized, [2, 0, 0, 1], promptLength: 1);
        Assert.That(penalized, Is.EqualTo(new[] { 1.1f - 0.14f, 1.0f - 0.08f, 0.5f }).Within(1e-6f));
    }

    [Test]
    public void RepetitionPenalty_LooksAtTheLastNTokens_PromptIncluded()
    {
        var l = new[] { 1.2f, 1.0f, -0.5f };
        var s = new Sampler(SamplingOptions.Greedy with { RepetitionPenalty = 1.5f, PenaltyLastN = 2 }, 3);
        // Token 0 is in the prompt and within the last two: 1.2 / 1.5 = 0.8 < 1.0.
        Assert.That(s.Sample((float[])l.Clone(), [2, 0], promptLength: 2), Is.EqualTo(1));
        // Out of the window: unpenalized; counted once however often it occurs.
        Assert.That(s.Sample((float[])l.Clone(), [0, 2, 2], promptLength: 3), Is.EqualTo(0));
        var penalized = (float[])l.Clone();
        s.Sample(penalized, [0, 2, 2], promptLength: 3);
        Assert.That(penalized, Is.EqualTo(new[] { 1.2f, 1.0f, -0.75f }).Within(1e-6f));
        var off = new Sampler(SamplingOptions.Greedy with { RepetitionPenalty = 1.5f, PenaltyLastN = 0 }, 3);
        Assert.That(off.Sample((float[])l.Clone(), [0, 0], promptLength: 2), Is.EqualTo(0));
    }

    [TestCase(0f, 0)]
    [TestCase(0.7f, 5)]
    [TestCase(1.3f, 20)]
    public void Logprobs_AreTheLogSoftmaxOfThePenalizedTemperedLogits(float temperature, int top)
    {
        const int vocab = 300;
        var options = new SamplingOptions { Temperature = temperature, TopK = 10, FrequencyPenalty = 0.5f, Seed = 11 };
        var sampler = new Sampler(options, vocab);
        int[] history = [5, 7, 7, 9];
        for (int step = 0; step < 10; step++)
        {
            var logits = RandomLogits(vocab, 40 + step);
            var expected = (float[])logits.Clone();
            for (int i = 1; i < history.Length; i++) expected[history[i]] -= 0.5f; // generated tokens after a one-token prompt
            int token = sampler.Sample(logits, history, promptLength: 1);
            var lp = sampler.GetLogprobs(logits, token, top);

            double t = temperature > 0 ? temperature : 1, max = expected.Max();
            double logZ = Math.Log(expected.Sum(x => Math.Exp((x - max) / t)));
            double Ref(int id) => (expected[id] - max) / t - logZ;
            Assert.That(lp.TokenId, Is.EqualTo(token));
            Assert.That(lp.Logprob, Is.EqualTo(Ref(token)).Within(1e-5));
            var order = Enumerable.Range(0, vocab).OrderByDescending(i => expected[i]).ThenBy(i => i).Take(top).ToArray();
            Assert.That(lp.Top.Select(a => a.TokenId), Is.EqualTo(order));
            foreach (var a in lp.Top) Assert.That(a.Logprob, Is.EqualTo(Ref(a.TokenId)).Within(1e-5));
            if (temperature == 0) Assert.That(token, Is.EqualTo(order.Length > 0 ? order[0] : Array.IndexOf(expected, expected.Max())));
        }
    }

    [Test]
    public void Distribution_MatchesTheSampledFrequencies()
    {
        const int vocab = 8, draws = 40000;
        var options = new SamplingOptions { Temperature = 0.9f, TopK = 6, TopP = 0.9f, MinP = 0.02f, Seed = 3 };
        var logits = RandomLogits(vocab, 77);
        var probs = new float[vocab];
        new Sampler(options, vocab).GetDistribution((float[])logits.Clone(), [], 0, probs);
        Assert.That(probs.Sum(), Is.EqualTo(1).Within(1e-5));
        var sampler = new Sampler(options, vocab);
        var counts = new int[vocab];
        for (int i = 0; i < draws; i++) counts[sampler.Sample((float[])logits.Clone(), [])]++;
        for (int i = 0; i < vocab; i++)
        {
            double sd = Math.Sqrt(draws * probs[i] * (1 - probs[i]));
            Assert.That(counts[i], Is.EqualTo(draws * probs[i]).Within(5 * sd + 1), $"token {i}");
        }
    }
}
