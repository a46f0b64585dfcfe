using System.Text.Json;
using Inference.Tests.Support;

namespace Inference.Tests.Support;

public class LlamaCppTests
{
    private static (string Text, int[] Ids) Expected()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestData.Path("expected/stories260K-greedy-200.json")));
        var text = doc.RootElement.GetProperty("expected_text").GetString()!;
        var ids = doc.RootElement.GetProperty("expected_token_ids_derived_locally").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        return (text, ids);
    }

    [Test]
    public void Stories260K_GreedyFromPrompt_ReproducesLlama2cText()
    {
        var (expectedText, _) = Expected();
        using var model = LlamaCpp.Load(TestData.Stories260K);
        Assert.That(model.VocabCount, Is.EqualTo(512));
        var prompt = model.Tokenize("Once upon a time", BosToken.Add);
        Assert.That(prompt[0], Is.EqualTo(model.BosTokenId));
        var generated = model.GenerateGreedy(prompt, 60);
        var text = model.Detokenize([.. prompt[1..], .. generated]).TrimStart(' ');
        Assert.That(text.Length, Is.GreaterThan(150));
        Assert.That(expectedText, Does.StartWith(text));
    }

    [Test]
    public void Stories260K_GreedyFromBos_ReproducesAll200Tokens()
    {
        var (_, expectedIds) = Expected();
        using var model = LlamaCpp.Load(TestData.Stories260K);
        var generated = model.GenerateGreedy([model.BosTokenId], 200);
        Assert.That(generated, Is.EqualTo(expectedIds));
    }

    [Test]
    public void EvaluateLastLogits_AgreesWithAllPositionsAndWithGreedy()
    {
        using var model = LlamaCpp.Load(TestData.Stories260K);
        int[] tokens = [1, 403, 407, 261];
        var last = model.EvaluateLastLogits(tokens);
        var all = model.EvaluateAllLogits(tokens);
        Assert.That(all, Has.Length.EqualTo(4));
        Assert.That(last, Has.Length.EqualTo(512));
        Assert.That(all[3], Is.EqualTo(last).Within(1e-4f));
        Assert.That(Array.IndexOf(last, last.Max()), Is.EqualTo(model.GenerateGreedy(tokens, 1)[0]));
        // Logits of a shorter prefix equal the earlier rows of the longer evaluation (causal attention).
        Assert.That(model.EvaluateLastLogits(tokens[..2]), Is.EqualTo(all[1]).Within(1e-4f));
    }
}
