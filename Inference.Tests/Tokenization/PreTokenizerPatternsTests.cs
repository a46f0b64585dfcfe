using Inference.Tokenization;
using Microsoft.ML.Tokenizers;

namespace Inference.Tests.Tokenization;

/// <summary>
/// The pre-tokenizer regexes. gpt-2 and deepseek-llm are covered by their vocabularies' vectors; llama3 has no GGUF
/// here, but Llama 3 token ids below 100256 are cl100k_base ranks, so its vectors can be checked with our regex
/// splitting the text and cl100k_base merging each piece.
/// </summary>
public class PreTokenizerPatternsTests
{
    private const int Cl100kRegularTokens = 100256;
    private static readonly Lazy<TiktokenTokenizer> Cl100k = new(() => TiktokenTokenizer.CreateForEncoding("cl100k_base"));

    private static List<string> Split(string pre, string text)
    {
        var splitter = new SequentialRegexPreTokenizer(PreTokenizerPatterns.ForName(pre)!);
        return splitter.Split(text).Select(p => text.Substring(p.Offset, p.Length)).ToList();
    }

    private static (int Passes, int Checked) CheckLlamaBpeVectors(string pre)
    {
        var cl100k = Cl100k.Value;
        int passes = 0, checkedCount = 0;
        foreach (var c in VocabTestVectors.Load("llama-bpe"))
        {
            if (Array.Exists(c.Expected, id => id >= Cl100kRegularTokens)) continue;
            checkedCount++;
            var ids = new List<int>();
            foreach (string piece in Split(pre, c.Text))
                ids.AddRange(cl100k.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
            if (ids.SequenceEqual(c.Expected)) passes++;
            else TestContext.Out.WriteLine($"  {pre} miss #{c.Index}: expected [{string.Join(' ', c.Expected)}] got [{string.Join(' ', ids)}]");
        }
        return (passes, checkedCount);
    }

    [Test]
    public void Llama3_ReproducesLlamaBpeVectors()
    {
        var (passes, checkedCount) = CheckLlamaBpeVectors("llama3");
        TestContext.Out.WriteLine($"llama-bpe (llama3 regex + cl100k_base merges): {passes}/{checkedCount} vectors match ({46 - checkedCount} use ids above cl100k_base)");
        Assert.That(checkedCount, Is.GreaterThanOrEqualTo(40));
        Assert.That(passes, Is.EqualTo(checkedCount));
        Assert.That(Split("llama-bpe", "a 12345"), Is.EqualTo(Split("llama3", "a 12345")));
    }

    [Test]
    public void Gpt2Regex_DoesNotReproduceLlamaBpeVectors()
    {
        // The check above is sensitive to the regex: GPT-2's splits numbers and whitespace differently.
        var (passes, checkedCount) = CheckLlamaBpeVectors("gpt-2");
        Assert.That(passes, Is.LessThan(checkedCount));
    }

    [Test]
    public void Llama3_GroupsDigitsInThrees_Qwen2_SplitsEveryDigit()
    {
        Assert.That(Split("llama3", "x 1234567"), Is.EqualTo(new[] { "x", " ", "123", "456", "7" }));
        Assert.That(Split("qwen2", "x 1234"), Is.EqualTo(new[] { "x", " ", "1", "2", "3", "4" }));
        Assert.That(Split("gpt-2", "x 1234"), Is.EqualTo(new[] { "x", " 1234" }));
    }

    [Test]
    public void Llama3AndQwen2_ContractionsIgnoreCase_Gpt2DoesNot()
    {
        Assert.That(Split("llama3", "IT'S"), Is.EqualTo(new[] { "IT", "'S" }));
        Assert.That(Split("qwen2", "IT'S"), Is.EqualTo(new[] { "IT", "'S" }));
        Assert.That(Split("gpt-2", "IT'S"), Is.EqualTo(new[] { "IT", "'", "S" }));
    }

    [Test]
    public void DeepSeekLlm_AppliesItsRegexesInSequence()
    {
        // Newlines alone, letter runs with one optional leading space, punctuation runs, CJK runs, digit runs.
        Assert.That(Split("deepseek-llm", "Hi there!!\n中文 42"), Is.EqualTo(new[] { "Hi", " there", "!!", "\n", "中文", " ", "42" }));
        // Trailing whitespace of a piece is its own piece.
        Assert.That(Split("deepseek-llm", "ab  "), Is.EqualTo(new[] { "ab", "  " }));
    }

    [Test]
    public void UnknownName_IsNull()
    {
        Assert.That(PreTokenizerPatterns.ForName("no-such-pre"), Is.Null);
        foreach (string name in PreTokenizerPatterns.SupportedNames) Assert.That(PreTokenizerPatterns.ForName(name), Is.Not.Null, name);
    }
}
