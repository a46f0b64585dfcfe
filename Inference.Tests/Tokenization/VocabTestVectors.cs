using System.Collections.Concurrent;
using Inference.Loading;
using Inference.Tests.Support;
using Inference.Tokenization;

namespace Inference.Tests.Tokenization;

/// <summary>
/// llama.cpp's tokenizer test vectors (<c>vocab/ggml-vocab-NAME.gguf.inp/.out</c>): the inputs split on
/// "\n__ggml_vocab_test__\n", line i of the output holding the expected ids of input i (add_special = false,
/// parse_special = false). Tokenizers are built once per vocabulary and shared by the tests.
/// </summary>
public static class VocabTestVectors
{
    public const string Separator = "\n__ggml_vocab_test__\n";

    private static readonly ConcurrentDictionary<string, ModelTokenizer> Tokenizers = new();

    public sealed record Case(int Index, string Text, int[] Expected);

    public static IReadOnlyList<Case> Load(string vocab)
    {
        string inp = File.ReadAllText(TestData.Path($"vocab/ggml-vocab-{vocab}.gguf.inp"));
        string[] texts = inp.Split(Separator);
        // The file ends with the separator, so the last split element is empty and not a case.
        Assert.That(texts[^1], Is.Empty, "the .inp file is expected to end with the separator");
        string[] lines = File.ReadAllText(TestData.Path($"vocab/ggml-vocab-{vocab}.gguf.out")).Split('\n');
        var cases = new List<Case>();
        for (int i = 0; i < texts.Length - 1; i++)
        {
            string line = lines[i].Trim();
            int[] ids = line.Length == 0 ? [] : Array.ConvertAll(line.Split(' ', StringSplitOptions.RemoveEmptyEntries), int.Parse);
            cases.Add(new Case(i, texts[i], ids));
        }
        return cases;
    }

    /// <summary>NUnit case source: one test case per vector.</summary>
    public static IEnumerable<TestCaseData> Cases(string vocab)
    {
        foreach (var c in Load(vocab))
            yield return new TestCaseData(vocab, c.Index).SetName($"{vocab} #{c.Index:D2} {Describe(c.Text)}");
    }

    public static ModelTokenizer Tokenizer(string vocab) => Tokenizers.GetOrAdd(vocab, v =>
    {
        using var gguf = GgufFile.Open(TestData.Path($"vocab/ggml-vocab-{v}.gguf"));
        return ModelTokenizer.FromGguf(gguf);
    });

    /// <summary>Runs every vector of <paramref name="vocab"/>, prints the misses and returns the number that match.</summary>
    public static int CountPasses(string vocab)
    {
        var tokenizer = Tokenizer(vocab);
        var cases = Load(vocab);
        int passes = 0;
        foreach (var c in cases)
        {
            int[] actual = tokenizer.Encode(c.Text, addSpecial: false);
            if (actual.AsSpan().SequenceEqual(c.Expected)) passes++;
            else TestContext.Out.WriteLine($"  miss #{c.Index} {Describe(c.Text)}: expected [{string.Join(' ', c.Expected)}] got [{string.Join(' ', actual)}]");
        }
        TestContext.Out.WriteLine($"{vocab}: {passes}/{cases.Count} llama.cpp test vectors match");
        return passes;
    }

    private static string Describe(string text)
    {
        string shown = text.Length > 24 ? text[..24] + "…" : text;
        return "\"" + shown.Replace("\n", "\\n").Replace("\t", "\\t").Replace("\r", "\\r") + "\"";
    }
}
