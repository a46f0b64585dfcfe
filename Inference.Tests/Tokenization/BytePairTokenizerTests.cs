using Inference.Loading;
using Inference.Tests.Support;
using Inference.Tokenization;

namespace Inference.Tests.Tokenization;

/// <summary>The GPT-2-style byte-level BPE (<c>gpt2</c>) tokenizer against llama.cpp's test vectors.</summary>
public class BytePairTokenizerTests
{
    private static IEnumerable<TestCaseData> Gpt2Cases() => VocabTestVectors.Cases("gpt-2");
    private static IEnumerable<TestCaseData> DeepSeekLlmCases() => VocabTestVectors.Cases("deepseek-llm");

    [TestCaseSource(nameof(Gpt2Cases))]
    [TestCaseSource(nameof(DeepSeekLlmCases))]
    public void Encode_MatchesLlamaCppVector(string vocab, int index)
    {
        var c = VocabTestVectors.Load(vocab)[index];
        Assert.That(VocabTestVectors.Tokenizer(vocab).Encode(c.Text, addSpecial: false), Is.EqualTo(c.Expected));
    }

    [TestCase("gpt-2", 46)]
    [TestCase("deepseek-llm", 46)]
    public void Encode_PassCount(string vocab, int expectedPasses)
    {
        Assert.That(VocabTestVectors.CountPasses(vocab), Is.EqualTo(expectedPasses));
    }

    [TestCase("gpt-2")]
    [TestCase("deepseek-llm")]
    public void Decode_RoundTripsEveryVector(string vocab)
    {
        var t = VocabTestVectors.Tokenizer(vocab);
        foreach (var c in VocabTestVectors.Load(vocab))
            Assert.That(t.Decode(t.Encode(c.Text, addSpecial: false)), Is.EqualTo(c.Text), $"case #{c.Index}");
    }

    [Test]
    public void Metadata_Gpt2()
    {
        var t = VocabTestVectors.Tokenizer("gpt-2");
        Assert.That(t.Kind, Is.EqualTo(TokenizerKind.BytePair));
        Assert.That(t.VocabularySize, Is.EqualTo(50257));
        Assert.That(t.BosId, Is.EqualTo(50256));
        Assert.That(t.EosId, Is.EqualTo(50256));
        Assert.That(t.AddBos, Is.False); // no add_bos key: the gpt2 default
        Assert.That(t.Encode("Hello", addSpecial: true), Is.EqualTo(new[] { 15496 }));
        Assert.That(t.IsEndOfGeneration(50256), Is.True);
        Assert.That(t.GetTokenBytes(50256).IsEmpty, Is.True, "<|endoftext|> is a control token");
        Assert.That(t.GetTokenBytes(15496).ToArray(), Is.EqualTo("Hello"u8.ToArray()));
        Assert.That(t.GetTokenBytes(18435).ToArray(), Is.EqualTo(" Hello"u8.ToArray())); // "ĠHello"
    }

    [Test]
    public void Metadata_DeepSeekLlm_AddsBos()
    {
        var t = VocabTestVectors.Tokenizer("deepseek-llm");
        Assert.That(t.BosId, Is.EqualTo(100000));
        Assert.That(t.EosId, Is.EqualTo(100001));
        Assert.That(t.AddBos, Is.True);
        int[] ids = t.Encode("Hello world", addSpecial: true);
        Assert.That(ids, Is.EqualTo(new[] { 100000, 17464, 1843 }));
        Assert.That(t.Decode(ids), Is.EqualTo("Hello world"));
    }
    [Test]
    public void DeepSeekLlm_UserDefinedTokensAreRawText()
    {
        // deepseek-llm lists 'ö' (id 100003) as a user-defined token stored as the text "ö", not in byte-level form.
        var t = VocabTestVectors.Tokenizer("deepseek-llm");
        Assert.That(t.GetTokenBytes(100003).ToArray(), Is.EqualTo("ö"u8.ToArray()));
        int[] ids = t.Encode("schön", addSpecial: false);
        Assert.That(ids, Does.Contain(100003));
        Assert.That(t.Decode(ids), Is.EqualTo("schön"));
    }

    [Test]
    public void Gpt2_EndOfTextBecomesTheControlTokenOnlyWhenAsked()
    {
        var t = VocabTestVectors.Tokenizer("gpt-2");
        Assert.That(t.Encode("Hello<|endoftext|>", addSpecial: false, SpecialTokenText.Token), Is.EqualTo(new[] { 15496, 50256 }));
        int[] literal = t.Encode("Hello<|endoftext|>", addSpecial: false);
        Assert.That(literal, Does.Not.Contain(50256));
        Assert.That(t.Decode(literal), Is.EqualTo("Hello<|endoftext|>"));
    }

    [TestCase("gpt-2")]
    [TestCase("deepseek-llm")]
    public void LoneSurrogates_EncodeAsReplacementCharacter(string vocab)
    {
        var t = VocabTestVectors.Tokenizer(vocab);
        Assert.That(t.Encode("x\uD800y\uDC00z", addSpecial: false), Is.EqualTo(t.Encode("x\uFFFDy\uFFFDz", addSpecial: false)));
        Assert.That(t.Decode(t.Encode("x\uD800y", addSpecial: false)), Is.EqualTo("x\uFFFDy"));
    }

    [Test]
    public void Encode_IsSafeFromSeveralThreads()
    {
        var t = VocabTestVectors.Tokenizer("deepseek-llm");
        var texts = VocabTestVectors.Load("deepseek-llm").Select(c => c.Text).ToArray();
        var expected = texts.Select(x => t.Encode(x, addSpecial: true)).ToArray();
        var failures = 0;
        Parallel.For(0, 8 * texts.Length, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            int k = i % texts.Length;
            if (!t.Encode(texts[k], addSpecial: true).AsSpan().SequenceEqual(expected[k])) Interlocked.Increment(ref failures);
        });
        Assert.That(failures, Is.Zero);
    }
    [TestCase("gpt-2")]
    [TestCase("deepseek-llm")]
    public void Encode_MatchesReferenceOnRandomText(string vocab)
    {
        using var gguf = GgufFile.Open(TestData.Path($"vocab/ggml-vocab-{vocab}.gguf"));
        var tokenizer = VocabTestVectors.Tokenizer(vocab);
        var reference = ReferenceTokenizers.BytePair(gguf);
        var random = new Random(4321);
        for (int i = 0; i < 200; i++)
        {
            string text = ReferenceTokenizers.RandomText(random, 30);
            Assert.That(tokenizer.Encode(text, addSpecial: false), Is.EqualTo(reference(text)), $"text: \"{text}\"");
        }
    }
}
