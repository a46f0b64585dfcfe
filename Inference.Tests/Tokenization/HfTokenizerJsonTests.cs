using Inference.Loading;
using Inference.Tests.Models;
using Inference.Tests.Support;
using Inference.Tokenization;

namespace Inference.Tests.Tokenization;

/// <summary>
/// tokenizer.json files made from llama.cpp's vocabulary GGUFs (the way transformers' converters make them) against
/// llama.cpp's test vectors, plus the translation rules and failures.
/// </summary>
public class HfTokenizerJsonTests
{
    private string _dir = "";

    [SetUp]
    public void Setup() => _dir = TestData.TempDir();

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static (string Text, int[] Ids)[] Cases(string vocab)
    {
        var inputs = File.ReadAllText(TestData.Path($"vocab/{vocab}.gguf.inp")).Split("\n__ggml_vocab_test__\n");
        var outputs = File.ReadAllLines(TestData.Path($"vocab/{vocab}.gguf.out"));
        var cases = new (string, int[])[inputs.Length - 1];
        for (int i = 0; i < cases.Length; i++)
            cases[i] = (inputs[i], outputs[i].Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse).ToArray());
        return cases;
    }

    private static void AssertAllCases(ModelTokenizer tokenizer, string vocab)
    {
        var cases = Cases(vocab);
        Assert.That(cases, Has.Length.EqualTo(46));
        int matched = 0;
        var misses = new List<string>();
        foreach (var (text, ids) in cases)
        {
            var actual = tokenizer.Encode(text, addSpecial: false);
            if (actual.SequenceEqual(ids)) matched++;
            else misses.Add($"'{text}': expected [{string.Join(' ', ids)}], got [{string.Join(' ', actual)}]");
        }
        TestContext.Out.WriteLine($"{vocab}: {matched} of {cases.Length} cases match");
        Assert.That(misses, Is.Empty);
    }

    [Test]
    public void LlamaSpm_TokenizerJson_MatchesLlamaCppVectors()
    {
        using var donor = GgufFile.Open(TestData.Path("vocab/ggml-vocab-llama-spm.gguf"));
        HfTestCheckpoint.WriteSentencePieceTokenizer(donor, _dir, addBos: true);
        var config = HfTokenizerJsonConfig.Read(Path.Combine(_dir, "tokenizer_config.json"));
        var tokenizer = HfTokenizerJson.Load(Path.Combine(_dir, "tokenizer.json"), config);
        Assert.That(tokenizer.Kind, Is.EqualTo(TokenizerKind.SentencePiece));
        Assert.That(tokenizer.VocabularySize, Is.EqualTo(32000));
        Assert.That((tokenizer.BosId, tokenizer.EosId, tokenizer.AddBos, tokenizer.AddEos), Is.EqualTo(((int?)1, (int?)2, true, false)));
        AssertAllCases(tokenizer, "ggml-vocab-llama-spm");
        var fromGguf = ModelTokenizer.FromGguf(donor);
        Assert.That(tokenizer.Encode("Hello world", addSpecial: true), Is.EqualTo(fromGguf.Encode("Hello world", addSpecial: true)));
        Assert.That(tokenizer.Decode(tokenizer.Encode(" Hello\n\tworld 🦙", addSpecial: true)), Is.EqualTo(" Hello\n\tworld 🦙"));
    }

    [Test]
    public void WithoutTokenizerConfig_BosComesFromThePostProcessorTemplate()
    {
        using var donor = GgufFile.Open(TestData.Stories260K);
        HfTestCheckpoint.WriteSentencePieceTokenizer(donor, _dir, addBos: true);
        var tokenizer = HfTokenizerJson.Load(Path.Combine(_dir, "tokenizer.json"), config: null);
        Assert.That((tokenizer.BosId, tokenizer.EosId, tokenizer.AddBos), Is.EqualTo(((int?)1, (int?)null, true)));
        Assert.That(tokenizer.Encode("Once upon a time", addSpecial: true), Is.EqualTo(ModelTokenizer.FromGguf(donor).Encode("Once upon a time", addSpecial: true)));
    }

    [Test]
    public void Gpt2_TokenizerJson_MatchesLlamaCppVectors()
    {
        using var donor = GgufFile.Open(TestData.Path("vocab/ggml-vocab-gpt-2.gguf"));
        HfTestCheckpoint.WriteByteLevelTokenizer(donor, _dir, splitRegex: null);
        var tokenizer = HfTokenizerJson.Load(Path.Combine(_dir, "tokenizer.json"), config: null);
        Assert.That(tokenizer.Kind, Is.EqualTo(TokenizerKind.BytePair));
        Assert.That(tokenizer.VocabularySize, Is.EqualTo(50257));
        Assert.That(tokenizer.AddBos, Is.False);
        AssertAllCases(tokenizer, "ggml-vocab-gpt-2");
    }

    [TestCase(@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", "llama-bpe")]
    [TestCase(@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", "qwen2")]
    public void SplitRegex_SelectsThePreTokenizer(string regex, string expected)
    {
        using var donor = GgufFile.Open(TestData.Path("vocab/ggml-vocab-gpt-2.gguf"));
        HfTestCheckpoint.WriteByteLevelTokenizer(donor, _dir, regex);
        var data = HfTokenizerJson.Parse(Path.Combine(_dir, "tokenizer.json"), null, 0);
        Assert.That(data.Model, Is.EqualTo("gpt2"));
        Assert.That(data.Pre, Is.EqualTo(expected));
        // Digits show the difference: llama3 groups up to three, qwen2 splits each.
        var tokenizer = HfTokenizerJson.Load(Path.Combine(_dir, "tokenizer.json"), null);
        var ids = tokenizer.Encode("12345", addSpecial: false);
        Assert.That(ids, Has.Length.EqualTo(expected == "qwen2" ? 5 : 2));
    }

    [Test]
    public void UnknownSplitRegex_Refused()
    {
        using var donor = GgufFile.Open(TestData.Path("vocab/ggml-vocab-gpt-2.gguf"));
        HfTestCheckpoint.WriteByteLevelTokenizer(donor, _dir, @"\p{L}+|\s+");
        var ex = Assert.Throws<ModelFormatException>(() => HfTokenizerJson.Load(Path.Combine(_dir, "tokenizer.json"), null))!;
        Assert.That(ex.Reason, Does.Contain("unsupported pre-tokenizer regex"));
    }

    private string WriteJson(string json)
    {
        string path = Path.Combine(_dir, "tokenizer.json");
        File.WriteAllText(path, json);
        return path;
    }

    private const string SmallByteLevel = """
        {"added_tokens":[{"id":5,"content":"<|bos|>","special":true},{"id":6,"content":"<|eos|>","special":true}],
         "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true},
         "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<|bos|>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}]},
         "model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2,"Ġ":3,"Ġab":4},"merges":["a b","Ġ ab"]}}
        """;

    [Test]
    public void PostProcessorTemplate_AddsBos_AndVocabularyIsPaddedToTheModel()
    {
        var config = new HfTokenizerJsonConfig { BosToken = "<|bos|>", EosToken = "<|eos|>" };
        var tokenizer = HfTokenizerJson.Load(WriteJson(SmallByteLevel), config, minimumVocabularySize: 10);
        Assert.That(tokenizer.VocabularySize, Is.EqualTo(10));
        Assert.That(tokenizer.AddBos, Is.True);
        Assert.That(tokenizer.BosId, Is.EqualTo(5));
        Assert.That(tokenizer.IsEndOfGeneration(6), Is.True);
        Assert.That(tokenizer.Encode("ab ab", addSpecial: true), Is.EqualTo(new[] { 5, 2, 4 }));
        Assert.That(tokenizer.Decode([5, 2, 4, 8]), Is.EqualTo("ab ab"), "control and padding tokens decode to nothing");
        // tokenizer_config.json's add_bos_token wins over the template.
        var noBos = HfTokenizerJson.Load(WriteJson(SmallByteLevel), config with { AddBosToken = false });
        Assert.That(noBos.Encode("ab", addSpecial: true), Is.EqualTo(new[] { 2 }));
    }

    [TestCase("""{"model":{"type":"Unigram","vocab":[["a",0.0]]}}""", "unsupported tokenizer model type 'Unigram'")]
    [TestCase("""{"model":{"type":"WordPiece","vocab":{"a":0}}}""", "unsupported tokenizer model type")]
    [TestCase("""{"model":{"type":"BPE","vocab":{"a":0,"b":0},"merges":[]},"pre_tokenizer":{"type":"ByteLevel"}}""", "id 0 is given to both")]
    [TestCase("""{"model":{"type":"BPE","vocab":{"a":-1},"merges":[]},"pre_tokenizer":{"type":"ByteLevel"}}""", "non-negative")]
    [TestCase("""{"model":{"type":"BPE","vocab":{"a":0},"merges":["a"]},"pre_tokenizer":{"type":"ByteLevel"}}""", "not two pieces")]
    [TestCase("""{"model":{"type":"BPE","vocab":{"a":0},"merges":[["a b","c"]]},"pre_tokenizer":{"type":"ByteLevel"}}""", "space")]
    [TestCase("""{"model":{"type":"BPE","vocab":{"a":0}},"pre_tokenizer":{"type":"ByteLevel"}}""", "'model.merges' is missing")]
    [TestCase("""{"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}""", "neither byte-level")]
    [TestCase("""{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"added_tokens":[{"id":0,"content":"b"}],"pre_tokenizer":{"type":"ByteLevel"}}""", "collides")]
    [TestCase("""{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a b"]},"pre_tokenizer":{"type":"ByteLevel"}}""", "not in the vocabulary")]
    [TestCase("""{"model":""", "malformed JSON")]
    public void Malformed_Refused(string json, string reason)
    {
        var ex = Assert.Throws<ModelFormatException>(() => HfTokenizerJson.Load(WriteJson(json), null))!;
        TestContext.Out.WriteLine(ex.Message);
        Assert.That(ex.Reason, Does.Contain(reason));
        Assert.That(ex.FilePath, Does.EndWith("tokenizer.json"));
    }

    [Test]
    public void SpecialTokenMissingFromVocabulary_Refused()
    {
        var ex = Assert.Throws<ModelFormatException>(() => HfTokenizerJson.Load(WriteJson(SmallByteLevel), new HfTokenizerJsonConfig { BosToken = "<s>" }))!;
        Assert.That(ex.Reason, Does.Contain("BOS token '<s>' is not in the vocabulary"));
    }

    [Test]
    public void TokenizerConfig_ReadsTokenObjectsAndNamedTemplates()
    {
        string path = Path.Combine(_dir, "tokenizer_config.json");
        File.WriteAllText(path, """
            {"add_bos_token": false, "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
             "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
            """);
        var c = HfTokenizerJsonConfig.Read(path)!;
        Assert.That((c.BosToken, c.EosToken, c.AddBosToken, c.AddEosToken, c.ChatTemplate), Is.EqualTo(("<s>", "</s>", (bool?)false, (bool?)null, "D")));
        Assert.That(HfTokenizerJsonConfig.Read(Path.Combine(_dir, "absent.json")), Is.Null);
        File.WriteAllText(path, """{"bos_token": 5}""");
        Assert.Throws<ModelFormatException>(() => HfTokenizerJsonConfig.Read(path));
    }
}
