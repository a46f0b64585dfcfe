using System.Text;
using Inference.Loading;
using Inference.Tests.Support;
using Inference.Tokenization;

namespace Inference.Tests.Tokenization;

/// <summary>The streaming decoder: never half a character, the rest on flush, the same text as a one-shot decode.</summary>
public class StreamingDecoderTests
{
    private static ModelTokenizer Stories()
    {
        using var gguf = GgufFile.Open(TestData.Stories260K);
        return ModelTokenizer.FromGguf(gguf);
    }

    private const int FirstByteToken = 3; // stories260K: <0x00> is id 3

    [Test]
    public void MultiByteCharacter_SplitAcrossByteTokens_IsHeldUntilComplete()
    {
        var t = Stories();
        var d = t.CreateStreamingDecoder(previousTokenId: 13); // mid-stream
        // '日' = E6 97 A5, then 'x'
        Assert.That(d.Push(FirstByteToken + 0xE6), Is.Empty);
        Assert.That(d.Push(FirstByteToken + 0x97), Is.Empty);
        Assert.That(d.Push(FirstByteToken + 0xA5), Is.EqualTo("日"));
        Assert.That(d.Push(FirstByteToken + 'x'), Is.EqualTo("x"));
        // '🦙' = F0 9F A6 99: four tokens, one character of two UTF-16 units.
        Assert.That(d.Push(FirstByteToken + 0xF0), Is.Empty);
        Assert.That(d.Push(FirstByteToken + 0x9F), Is.Empty);
        Assert.That(d.Push(FirstByteToken + 0xA6), Is.Empty);
        Assert.That(d.Push(FirstByteToken + 0x99), Is.EqualTo("🦙"));
        Assert.That(d.Flush(), Is.Empty);
    }

    [Test]
    public void TextPieceAfterIncompleteBytes_CompletesOrReplaces()
    {
        var t = Stories();
        var d = t.CreateStreamingDecoder(previousTokenId: 13);
        Assert.That(d.Push(FirstByteToken + 0xC3), Is.Empty);
        // A text piece cannot continue the character: the held byte becomes U+FFFD, then the piece follows.
        int piece = t.Encode("the", addSpecial: false)[^1];
        string pieceText = Encoding.UTF8.GetString(t.GetTokenBytes(piece));
        Assert.That(d.Push(piece), Is.EqualTo("\uFFFD" + pieceText));
    }

    [Test]
    public void Flush_EmitsIncompleteCharacterAsReplacement()
    {
        var t = Stories();
        var d = t.CreateStreamingDecoder(previousTokenId: 13);
        Assert.That(d.Push(FirstByteToken + 0xE6), Is.Empty);
        Assert.That(d.Push(FirstByteToken + 0x97), Is.Empty);
        Assert.That(d.Flush(), Is.EqualTo("\uFFFD"));
        Assert.That(d.Flush(), Is.Empty);
        Assert.That(d.Push(FirstByteToken + 'a'), Is.EqualTo("a"));
    }

    [Test]
    public void InvalidBytes_AreNotHeld()
    {
        var t = Stories();
        var d = t.CreateStreamingDecoder(previousTokenId: 13);
        Assert.That(d.Push(FirstByteToken + 0x97), Is.EqualTo("\uFFFD")); // a continuation byte with no lead
        Assert.That(d.Push(FirstByteToken + 0xFF), Is.EqualTo("\uFFFD")); // never valid in UTF-8
    }

    [Test]
    public void ControlTokens_DecodeToNothing()
    {
        var t = Stories();
        var d = t.CreateStreamingDecoder(previousTokenId: 13);
        Assert.That(d.Push(2), Is.Empty);
        Assert.That(d.Push(0), Is.EqualTo("\u2585"), "<unk> decodes as llama.cpp shows it");
        Assert.Throws<ArgumentOutOfRangeException>(() => d.Push(512));
    }

    /// <summary>
    /// Random UTF-8 with random invalid bytes mixed in, pushed as single-byte tokens: the streamed text equals the
    /// one-shot UTF-8 decode of all bytes (the reference), and no push ever ends in half a character.
    /// </summary>
    [Test]
    public void RandomBytes_StreamEqualsOneShotDecode([Values(1, 2, 3, 4, 5)] int seed)
    {
        var t = Stories();
        var random = new Random(seed);
        var bytes = new List<byte>();
        var buf = new byte[4];
        for (int i = 0; i < 400; i++)
        {
            if (random.Next(8) == 0) bytes.Add((byte)random.Next(256)); // anything, often invalid
            else
            {
                int cp = random.Next(4) switch { 0 => random.Next(0x20, 0x7F), 1 => random.Next(0x80, 0x800), 2 => random.Next(0x800, 0xD800), _ => random.Next(0x10000, 0x110000) };
                bytes.AddRange(buf[..new Rune(cp).EncodeToUtf8(buf)]);
            }
        }

        var d = t.CreateStreamingDecoder(previousTokenId: 13);
        var streamed = new StringBuilder();
        foreach (byte b in bytes)
        {
            string s = d.Push(FirstByteToken + b);
            if (s.Length > 0) Assert.That(char.IsHighSurrogate(s[^1]), Is.False, "a push ended inside a surrogate pair");
            streamed.Append(s);
        }
        streamed.Append(d.Flush());
        Assert.That(streamed.ToString(), Is.EqualTo(Encoding.UTF8.GetString(bytes.ToArray())));
    }

    [TestCase("llama-spm")]
    [TestCase("phi-3")]
    [TestCase("gpt-2")]
    [TestCase("deepseek-llm")]
    public void VectorTexts_StreamEqualsDecode(string vocab)
    {
        var t = VocabTestVectors.Tokenizer(vocab);
        foreach (var c in VocabTestVectors.Load(vocab))
        {
            int[] ids = t.Encode(c.Text, addSpecial: true);
            var d = t.CreateStreamingDecoder();
            var streamed = new StringBuilder();
            foreach (int id in ids)
            {
                string s = d.Push(id);
                Assert.That(s.Contains('\uFFFD'), Is.False, $"case #{c.Index}: a push emitted a replacement character");
                streamed.Append(s);
            }
            streamed.Append(d.Flush());
            Assert.That(streamed.ToString(), Is.EqualTo(t.Decode(ids)), $"case #{c.Index}");
            Assert.That(streamed.ToString(), Is.EqualTo(c.Text), $"case #{c.Index}");
        }
    }

    [Test]
    public void Gpt2_EmojiSplitAcrossByteLevelTokens()
    {
        var t = VocabTestVectors.Tokenizer("gpt-2");
        int[] ids = t.Encode("🦙", addSpecial: false);
        Assert.That(ids.Length, Is.GreaterThan(1), "the emoji is several byte-level tokens");
        var d = t.CreateStreamingDecoder();
        var outputs = ids.Select(d.Push).ToArray();
        Assert.That(outputs[..^1], Is.All.Empty);
        Assert.That(outputs[^1], Is.EqualTo("🦙"));
    }
}
