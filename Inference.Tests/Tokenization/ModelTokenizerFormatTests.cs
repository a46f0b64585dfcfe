using Inference.Loading;
using Inference.Tests.Support;
using Inference.Tokenization;

namespace Inference.Tests.Tokenization;

/// <summary>Loading tokenizers from synthetic GGUF files: invalid metadata fails with a precise error.</summary>
public class ModelTokenizerFormatTests
{
    private string _dir = "";

    [SetUp]
    public void SetUp() => _dir = TestData.TempDir();

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private ModelTokenizer Load(GgufVocabularyWriter writer)
    {
        using var gguf = GgufFile.Open(writer.WriteTo(_dir));
        return ModelTokenizer.FromGguf(gguf);
    }

    private ModelFormatException LoadFails(GgufVocabularyWriter writer) => Assert.Throws<ModelFormatException>(() => Load(writer))!;

    private static GgufVocabularyWriter BytePair() => new GgufVocabularyWriter()
        .Add("tokenizer.ggml.model", "gpt2")
        .Add("tokenizer.ggml.pre", "gpt-2")
        .Add("tokenizer.ggml.tokens", ["a", "b", "ab", "Ġ", "Ġab", "<|end|>"])
        .Add("tokenizer.ggml.token_type", [1, 1, 1, 1, 1, 3])
        .Add("tokenizer.ggml.merges", ["a b", "Ġ ab"])
        .Add("tokenizer.ggml.eos_token_id", 5u);

    [Test]
    public void SmallVocabularies_Load()
    {
        var spm = Load(GgufVocabularyWriter.SentencePiece(("▁", -1), ("a", -2)));
        Assert.That(spm.VocabularySize, Is.EqualTo(261));
        Assert.That(spm.Encode("a", addSpecial: true), Is.EqualTo(new[] { 1, 259, 260 }));

        var bpe = Load(BytePair());
        Assert.That(bpe.Encode("ab ab", addSpecial: true), Is.EqualTo(new[] { 2, 4 }));
        Assert.That(bpe.Decode([2, 4, 5]), Is.EqualTo("ab ab"));
        Assert.That(bpe.IsEndOfGeneration(5), Is.True);
        Assert.That(bpe.BosId, Is.Null);
        Assert.That(bpe.AddBos, Is.False);
    }

    [Test]
    public void MissingModel_Fails()
    {
        var e = LoadFails(GgufVocabularyWriter.SentencePiece().Remove("tokenizer.ggml.model"));
        Assert.That(e.Reason, Does.Contain("tokenizer.ggml.model").And.Contain("missing"));
    }

    [Test]
    public void UnsupportedModel_FailsAtItsOffset()
    {
        var e = LoadFails(GgufVocabularyWriter.SentencePiece().Set("tokenizer.ggml.model", w => w.Add("tokenizer.ggml.model", "bert")));
        Assert.That(e.Reason, Does.Contain("unsupported tokenizer model 'bert'"));
        Assert.That(e.Offset, Is.GreaterThan(0));
        Assert.That(e.FilePath, Does.EndWith("vocab.gguf"));
    }

    [Test]
    public void UnsupportedPreTokenizer_Fails()
    {
        var e = LoadFails(BytePair().Set("tokenizer.ggml.pre", w => w.Add("tokenizer.ggml.pre", "no-such-pre")));
        Assert.That(e.Reason, Does.Contain("unsupported pre-tokenizer 'no-such-pre'"));
        Assert.That(e.Offset, Is.GreaterThan(0));
    }

    [Test]
    public void MissingTokensScoresOrMerges_Fail()
    {
        Assert.That(LoadFails(GgufVocabularyWriter.SentencePiece().Remove("tokenizer.ggml.tokens")).Reason, Does.Contain("tokenizer.ggml.tokens"));
        Assert.That(LoadFails(GgufVocabularyWriter.SentencePiece().Remove("tokenizer.ggml.scores")).Reason, Does.Contain("tokenizer.ggml.scores"));
        Assert.That(LoadFails(BytePair().Remove("tokenizer.ggml.merges")).Reason, Does.Contain("tokenizer.ggml.merges"));
    }

    [Test]
    public void ArrayLengthMismatch_Fails()
    {
        var e = LoadFails(GgufVocabularyWriter.SentencePiece().Set("tokenizer.ggml.scores", w => w.Add("tokenizer.ggml.scores", new float[5])));
        Assert.That(e.Reason, Does.Contain("tokenizer.ggml.scores").And.Contain("5 entries"));
        e = LoadFails(BytePair().Set("tokenizer.ggml.token_type", w => w.Add("tokenizer.ggml.token_type", [1, 1])));
        Assert.That(e.Reason, Does.Contain("tokenizer.ggml.token_type"));
    }

    [Test]
    public void IdOutsideVocabulary_Fails()
    {
        var e = LoadFails(GgufVocabularyWriter.SentencePiece().Set("tokenizer.ggml.bos_token_id", w => w.Add("tokenizer.ggml.bos_token_id", 259u)));
        Assert.That(e.Reason, Does.Contain("tokenizer.ggml.bos_token_id").And.Contain("259"));
        Assert.That(e.Offset, Is.GreaterThan(0));
    }

    [Test]
    public void NoneIdIsAbsent()
    {
        var t = Load(GgufVocabularyWriter.SentencePiece().Set("tokenizer.ggml.eos_token_id", w => w.Add("tokenizer.ggml.eos_token_id", 0xFFFFFFFFu)));
        Assert.That(t.EosId, Is.Null);
    }

    [Test]
    public void DuplicateTokenText_Fails()
    {
        var e = LoadFails(BytePair().Set("tokenizer.ggml.tokens", w => w.Add("tokenizer.ggml.tokens", ["a", "b", "ab", "Ġ", "ab", "<|end|>"])));
        Assert.That(e.Reason, Does.Contain("'ab' appears twice"));
    }

    [Test]
    public void MalformedByteTokenMergeOrType_Fail()
    {
        var badByte = GgufVocabularyWriter.SentencePiece(("<0xZZ>", 0));
        var types = Enumerable.Repeat(1, 260).ToArray();
        types[259] = 6;
        badByte.Set("tokenizer.ggml.token_type", w => w.Add("tokenizer.ggml.token_type", types));
        Assert.That(LoadFails(badByte).Reason, Does.Contain("<0xZZ>"));

        Assert.That(LoadFails(BytePair().Set("tokenizer.ggml.merges", w => w.Add("tokenizer.ggml.merges", ["a b", "ab"]))).Reason, Does.Contain("merges'[1]"));
        Assert.That(LoadFails(BytePair().Set("tokenizer.ggml.token_type", w => w.Add("tokenizer.ggml.token_type", [1, 1, 1, 1, 9, 3]))).Reason, Does.Contain("token_type'[4] is 9"));
    }

    // Found by fuzzing GGUF vocabularies: texts from the file went into the message as they were, so a merge, token or
    // model name holding a newline made it several lines. They are quoted like keys now (GgufFile.Quote).
    [Test]
    public void TextsFromTheFile_KeepTheMessageOnOneLine()
    {
        foreach (var writer in new[]
        {
            BytePair().Set("tokenizer.ggml.merges", w => w.Add("tokenizer.ggml.merges", ["a b", "a\nb"])),
            BytePair().Set("tokenizer.ggml.merges", w => w.Add("tokenizer.ggml.merges", ["a b", "x\ny z"])),
            GgufVocabularyWriter.SentencePiece().Set("tokenizer.ggml.model", w => w.Add("tokenizer.ggml.model", "bert\r\nx")),
            BytePair().Set("tokenizer.ggml.pre", w => w.Add("tokenizer.ggml.pre", "no\npre")),
        })
        {
            var e = LoadFails(writer);
            Assert.That(e.Message, Does.Not.Contain('\n').And.Not.Contain('\r'));
            Assert.That(e.Reason, Does.Contain("\\u000A"));
        }
    }

    [Test]
    public void MergeOfUnknownPieces_Fails()
    {
        var e = LoadFails(BytePair().Set("tokenizer.ggml.merges", w => w.Add("tokenizer.ggml.merges", ["a b", "x y"])));
        Assert.That(e.Reason, Does.Contain("merges'[1] is 'x y'"));
        e = LoadFails(BytePair().Set("tokenizer.ggml.merges", w => w.Add("tokenizer.ggml.merges", ["a b", "b a"])));
        Assert.That(e.Reason, Does.Contain("merges'[1] is 'b a'"), "'ba' is not a token");
    }

    [Test]
    public void AddBosAndEos_FollowTheKeys()
    {
        var t = Load(GgufVocabularyWriter.SentencePiece(("▁", -1), ("a", -2))
            .Add("tokenizer.ggml.add_bos_token", false)
            .Add("tokenizer.ggml.add_eos_token", true));
        Assert.That(t.AddBos, Is.False);
        Assert.That(t.AddEos, Is.True);
        Assert.That(t.Encode("a", addSpecial: true), Is.EqualTo(new[] { 259, 260, 2 }));
        Assert.That(t.Encode("a", addSpecial: false), Is.EqualTo(new[] { 259, 260 }));
    }

    [Test]
    public void SentencePiece_EqualScoresMergeLeftmostFirst()
    {
        // "aaa": both pairs form "aa" with the same score; the left pair merges first -> [aa, a], not [a, aa].
        var t = Load(GgufVocabularyWriter.SentencePiece(("a", -5), ("aa", -1)).Add("tokenizer.ggml.add_space_prefix", false));
        Assert.That(t.Encode("aaa", addSpecial: false), Is.EqualTo(new[] { 260, 259 }));
        Assert.That(t.Encode("aaaaa", addSpecial: false), Is.EqualTo(new[] { 260, 260, 259 }));
    }

    [Test]
    public void SentencePiece_HigherScoreMergesFirst()
    {
        // "abc": "ab" (-3) and "bc" (-1) compete for 'b'; the higher score wins -> [a, bc].
        var t = Load(GgufVocabularyWriter.SentencePiece(("a", -5), ("b", -5), ("c", -5), ("ab", -3), ("bc", -1))
            .Add("tokenizer.ggml.add_space_prefix", false));
        Assert.That(t.Encode("abc", addSpecial: false), Is.EqualTo(new[] { 259, 263 }));
    }

    [Test]
    public void UserDefinedTokens_AreMatchedWhole()
    {
        var tokens = new List<string> { "<unk>", "<s>", "</s>", "▁", "a", "<", ">", "<u>" };
        var writer = new GgufVocabularyWriter()
            .Add("tokenizer.ggml.model", "llama")
            .Add("tokenizer.ggml.tokens", tokens.ToArray())
            .Add("tokenizer.ggml.scores", new float[] { 0, 0, 0, -1, -2, -3, -3, 0 })
            .Add("tokenizer.ggml.token_type", [2, 3, 3, 1, 1, 1, 1, 4])
            .Add("tokenizer.ggml.bos_token_id", 1u)
            .Add("tokenizer.ggml.unknown_token_id", 0u);
        var t = Load(writer);
        // Each run of plain text gets the dummy prefix, as in llama.cpp: "a<u>a" -> ▁ a <u> ▁ a.
        Assert.That(t.Encode("a<u>a", addSpecial: false), Is.EqualTo(new[] { 3, 4, 7, 3, 4 }));
        Assert.That(t.Encode("<u><u>", addSpecial: false), Is.EqualTo(new[] { 7, 7 }));
        Assert.That(t.Decode([7]), Is.EqualTo("<u>"));
        // Control token texts stay text.
        Assert.That(t.Encode("<s>", addSpecial: false), Does.Not.Contain(1));
    }
}
