using System.Text.Json;
using Inference.Loading;
using Inference.Tests.Support;
using Inference.Tokenization;

namespace Inference.Tests.Tokenization;

/// <summary>The SentencePiece-style (<c>llama</c>) tokenizer against llama.cpp, llama2.c and round trips.</summary>
public class SentencePieceTokenizerTests
{
    private static IEnumerable<TestCaseData> LlamaSpmCases() => VocabTestVectors.Cases("llama-spm");
    private static IEnumerable<TestCaseData> Phi3Cases() => VocabTestVectors.Cases("phi-3");

    [TestCaseSource(nameof(LlamaSpmCases))]
    [TestCaseSource(nameof(Phi3Cases))]
    public void Encode_MatchesLlamaCppVector(string vocab, int index)
    {
        var c = VocabTestVectors.Load(vocab)[index];
        Assert.That(VocabTestVectors.Tokenizer(vocab).Encode(c.Text, addSpecial: false), Is.EqualTo(c.Expected));
    }

    [TestCase("llama-spm", 46)]
    [TestCase("phi-3", 46)]
    public void Encode_PassCount(string vocab, int expectedPasses)
    {
        Assert.That(VocabTestVectors.CountPasses(vocab), Is.EqualTo(expectedPasses));
    }

    [Test]
    public void Metadata_LlamaSpm()
    {
        var t = VocabTestVectors.Tokenizer("llama-spm");
        Assert.That(t.Kind, Is.EqualTo(TokenizerKind.SentencePiece));
        Assert.That(t.VocabularySize, Is.EqualTo(32000));
        Assert.That(t.BosId, Is.EqualTo(1));
        Assert.That(t.EosId, Is.EqualTo(2));
        Assert.That(t.AddBos, Is.True);
        Assert.That(t.AddEos, Is.False);
        Assert.That(t.IsEndOfGeneration(2), Is.True);
        Assert.That(t.IsEndOfGeneration(1), Is.False);
        Assert.That(t.IsEndOfGeneration(29871), Is.False);
    }

    [Test]
    public void Metadata_Phi3_EndOfTurnIsEndOfGeneration()
    {
        var t = VocabTestVectors.Tokenizer("phi-3");
        Assert.That(t.EosId, Is.EqualTo(32000));
        Assert.That(t.IsEndOfGeneration(32000), Is.True);
        // <|end|> closes a chat turn in Phi-3.
        using var gguf = GgufFile.Open(TestData.Path("vocab/ggml-vocab-phi-3.gguf"));
        int end = Array.IndexOf(gguf.GetArray<string>("tokenizer.ggml.tokens")!, "<|end|>");
        Assert.That(end, Is.GreaterThan(0));
        Assert.That(t.IsEndOfGeneration(end), Is.True);
    }

    [Test]
    public void Phi3_ControlTokenTextsBecomeTokensOnlyWhenAsked()
    {
        var t = VocabTestVectors.Tokenizer("phi-3");
        const string text = "<|user|>Hi<|end|>";
        int[] hi = t.Encode("Hi", addSpecial: false);
        int[] parsed = t.Encode(text, addSpecial: true, SpecialTokenText.Token);
        Assert.That(parsed, Is.EqualTo((int[])[1, 32010, .. hi, 32007]));
        int[] literal = t.Encode(text, addSpecial: false, SpecialTokenText.Literal);
        Assert.That(literal, Does.Not.Contain(32010).And.Not.Contain(32007));
        Assert.That(literal, Is.EqualTo(t.Encode(text, addSpecial: false)));
        Assert.That(t.Decode(literal), Is.EqualTo(text));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.Encode(text, false, (SpecialTokenText)7));
    }

    [Test]
    public void Phi3_UserDefinedEndOfSequenceTextIsMatchedWhole()
    {
        // Phi-3 marks "</s>" (id 2) as user-defined: llama.cpp cuts it out of the text whole even without parse_special.
        var t = VocabTestVectors.Tokenizer("phi-3");
        Assert.That(t.Encode("</s>", addSpecial: false), Is.EqualTo(new[] { 2 }));
        int[] ids = t.Encode("a</s>b", addSpecial: false);
        Assert.That(ids, Has.Length.GreaterThan(2));
        Assert.That(ids, Does.Contain(2));
        Assert.That(t.Decode(ids), Is.EqualTo("a</s> b"), "text after a user-defined token gets the dummy prefix, as in llama.cpp");
    }

    private static IEnumerable<TestCaseData> Llama2cCases()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestData.Path("expected/llama2-tokenizer-encode-testc.json")));
        int i = 0;
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            string text = c.GetProperty("text").GetString()!;
            int[] ids = c.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            yield return new TestCaseData(text, ids).SetName($"llama2.c test.c #{i++}");
        }
    }

    [TestCaseSource(nameof(Llama2cCases))]
    public void Encode_MatchesLlama2cTestC(string text, int[] expected)
    {
        // llama2.c encodes with BOS; the llama-spm GGUF holds the same Llama 2 vocabulary and says add_bos_token = true.
        Assert.That(VocabTestVectors.Tokenizer("llama-spm").Encode(text, addSpecial: true), Is.EqualTo(expected));
    }

    [TestCase("Once upon a time, there was a little girl named Lily.")]
    [TestCase("She liked to play outside. \"Look!\" she said.\nThe end.")]
    [TestCase("  two leading spaces and a trailing one ")]
    [TestCase("Ünïcödé, 日本語 and an emoji 🦙 all go through byte fallback")]
    public void Stories260K_RoundTrips(string text)
    {
        using var gguf = GgufFile.Open(TestData.Stories260K);
        var t = ModelTokenizer.FromGguf(gguf);
        Assert.That(t.VocabularySize, Is.EqualTo(512));
        Assert.That(t.AddBos, Is.True); // no add_bos key: the llama default
        int[] ids = t.Encode(text, addSpecial: true);
        Assert.That(ids[0], Is.EqualTo(1));
        Assert.That(ids, Has.Length.LessThan(System.Text.Encoding.UTF8.GetByteCount(text) + 2));
        Assert.That(t.Decode(ids), Is.EqualTo(text));
        Assert.That(t.Decode(t.Encode(text, addSpecial: false)), Is.EqualTo(text));
    }

    [Test]
    public void Stories260K_NonAsciiUsesByteTokens()
    {
        using var gguf = GgufFile.Open(TestData.Stories260K);
        var t = ModelTokenizer.FromGguf(gguf);
        // '日' is E6 97 A5; stories260K has no piece for it, so it becomes <0xE6> <0x97> <0xA5> (ids 3 + byte).
        int[] ids = t.Encode("日", addSpecial: false);
        Assert.That(ids[^3..], Is.EqualTo(new[] { 3 + 0xE6, 3 + 0x97, 3 + 0xA5 }));
        Assert.That(t.GetTokenBytes(3 + 0x0A).ToArray(), Is.EqualTo(new byte[] { 0x0A }));
    }

    [Test]
    public void Decode_DropsLeadingSpaceAfterBos()
    {
        using var gguf = GgufFile.Open(TestData.Stories260K);
        var t = ModelTokenizer.FromGguf(gguf);
        int[] ids = t.Encode("Once upon a time", addSpecial: true);
        Assert.That(System.Text.Encoding.UTF8.GetString(t.GetTokenBytes(ids[1])), Does.StartWith(" "), "the first piece carries the dummy prefix space");

        var afterBos = t.CreateStreamingDecoder(previousTokenId: t.BosId);
        string streamed = string.Concat(ids[1..].Select(afterBos.Push)) + afterBos.Flush();
        Assert.That(streamed, Is.EqualTo("Once upon a time"));

        // Mid-stream (previous token not BOS) the space is real text and stays.
        var midStream = t.CreateStreamingDecoder(previousTokenId: ids[^1]);
        Assert.That(string.Concat(ids[1..].Select(midStream.Push)), Is.EqualTo(" Once upon a time"));

        // Pushing BOS itself has the same effect as starting after it.
        var fromBos = t.CreateStreamingDecoder();
        Assert.That(string.Concat(ids.Select(fromBos.Push)), Is.EqualTo("Once upon a time"));

        Assert.That(t.Decode(ids), Is.EqualTo("Once upon a time"));
    }

    [TestCase("stories260K-greedy-200.json")]
    [TestCase("stories260K-greedy-256.json")]
    public void Stories260K_GeneratedIdsDecodeToLlama2cText(string file)
    {
        // Ids generated greedily from BOS alone; llama2.c prints them as expected_text (no leading space).
        using var doc = JsonDocument.Parse(File.ReadAllText(TestData.Path("expected/" + file)));
        int[] ids = doc.RootElement.GetProperty("expected_token_ids_derived_locally").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        string expected = doc.RootElement.GetProperty("expected_text").GetString()!;
        Assert.That(ids, Is.Not.Empty);

        using var gguf = GgufFile.Open(TestData.Stories260K);
        var t = ModelTokenizer.FromGguf(gguf);
        var decoder = t.CreateStreamingDecoder(previousTokenId: t.BosId);
        var streamed = new System.Text.StringBuilder();
        foreach (int id in ids) streamed.Append(decoder.Push(id));
        streamed.Append(decoder.Flush());
        Assert.That(streamed.ToString(), Is.EqualTo(expected));
        Assert.That(t.Decode([1, .. ids]), Is.EqualTo(expected));
        Assert.That(t.Decode(t.Encode(expected, addSpecial: true)), Is.EqualTo(expected));
    }

    [Test]
    public void GetTokenBytes_ControlTokensAreEmpty_SpaceMarkerIsSpace()
    {
        var t = VocabTestVectors.Tokenizer("llama-spm");
        Assert.That(t.GetTokenBytes(1).IsEmpty, Is.True);
        Assert.That(t.GetTokenBytes(2).IsEmpty, Is.True);
        Assert.That(t.GetTokenBytes(29871).ToArray(), Is.EqualTo(" "u8.ToArray())); // "▁"
        Assert.That(t.GetTokenBytes(3 + 0x41).ToArray(), Is.EqualTo(new byte[] { 0x41 })); // <0x41>
        Assert.Throws<ArgumentOutOfRangeException>(() => t.GetTokenBytes(32000));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.GetTokenBytes(-1));
    }

    [Test]
    public void LoneSurrogates_EncodeAsReplacementCharacter()
    {
        var t = VocabTestVectors.Tokenizer("llama-spm");
        Assert.That(t.Encode("x\uD800y\uDC00z", addSpecial: false), Is.EqualTo(t.Encode("x\uFFFDy\uFFFDz", addSpecial: false)));
        Assert.That(t.Decode(t.Encode("x\uD800y", addSpecial: false)), Is.EqualTo("x\uFFFDy"));
    }

    [Test]
    public void Encode_SpecialTokenTextIsPlainText()
    {
        var t = VocabTestVectors.Tokenizer("llama-spm");
        int[] ids = t.Encode("<s> and </s>", addSpecial: false);
        Assert.That(ids, Does.Not.Contain(1).And.Not.Contain(2));
        Assert.That(t.Decode(ids), Is.EqualTo("<s> and </s>"));
    }
    [TestCase("llama-spm")]
    [TestCase("phi-3")]
    public void Encode_MatchesReferenceOnRandomText(string vocab)
    {
        using var gguf = GgufFile.Open(TestData.Path($"vocab/ggml-vocab-{vocab}.gguf"));
        var tokenizer = VocabTestVectors.Tokenizer(vocab);
        var reference = ReferenceTokenizers.SentencePiece(gguf);
        var random = new Random(1234);
        for (int i = 0; i < 200; i++)
        {
            string text = ReferenceTokenizers.RandomText(random, 30);
            Assert.That(tokenizer.Encode(text, addSpecial: false), Is.EqualTo(reference(text)), $"text: \"{text}\"");
        }
    }
}
