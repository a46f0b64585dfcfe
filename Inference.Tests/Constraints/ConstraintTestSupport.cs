using System.Text;
using System.Text.Json.Nodes;
using Inference.Constraints;
using Inference.Loading;
using Inference.Tokenization;
using Inference.Tests.Support;
using Json.Schema;

namespace Inference.Tests.Constraints;

/// <summary>Shared pieces of the constraint tests: tokenizers, finite JSON schemas, random walks and validation.</summary>
internal static class ConstraintTestSupport
{
    private static readonly Lazy<ModelTokenizer> DeepSeekLazy = new(() => Load("vocab/ggml-vocab-deepseek-llm.gguf"));
    private static readonly Lazy<ModelTokenizer> StoriesLazy = new(() => Load("stories260K.gguf"));
    private static readonly Lazy<ModelTokenizer> LlamaSpmLazy = new(() => Load("vocab/ggml-vocab-llama-spm.gguf"));
    private static readonly Lazy<ModelTokenizer> Gpt2Lazy = new(() => Load("vocab/ggml-vocab-gpt-2.gguf"));
    private static readonly Lazy<ModelTokenizer> Phi3Lazy = new(() => Load("vocab/ggml-vocab-phi-3.gguf"));

    /// <summary>deepseek-llm: byte-level BPE, about 100k tokens.</summary>
    public static ModelTokenizer DeepSeek => DeepSeekLazy.Value;

    /// <summary>stories260K: SentencePiece with byte fallback, 512 tokens.</summary>
    public static ModelTokenizer Stories => StoriesLazy.Value;

    /// <summary>llama-spm: SentencePiece, 32k tokens.</summary>
    public static ModelTokenizer LlamaSpm => LlamaSpmLazy.Value;

    /// <summary>gpt-2: byte-level BPE, 50k tokens.</summary>
    public static ModelTokenizer Gpt2 => Gpt2Lazy.Value;

    /// <summary>phi-3: SentencePiece with byte fallback and added special tokens, 32k tokens.</summary>
    public static ModelTokenizer Phi3 => Phi3Lazy.Value;

    private static ModelTokenizer Load(string relative)
    {
        using var gguf = GgufFile.Open(TestData.Path(relative));
        return ModelTokenizer.FromGguf(gguf);
    }

    /// <summary>Schemas whose languages are finite, so every random walk through them ends.</summary>
    public static readonly string[] FiniteSchemas =
    [
        """{"type":"object","properties":{"name":{"type":"string","maxLength":8},"age":{"type":"integer"},"tags":{"type":"array","items":{"enum":["a","b","c"]},"maxItems":3},"address":{"type":"object","properties":{"city":{"type":"string","minLength":1,"maxLength":6},"zip":{"type":"string","pattern":"^[0-9]{5}$"}},"required":["city"],"additionalProperties":false}},"required":["name","age"],"additionalProperties":false}""",
        """{"anyOf":[{"type":"string","maxLength":5},{"type":"number"},{"type":"null"},{"type":"boolean"}]}""",
        """{"type":"array","items":{"type":"array","items":{"type":"boolean"},"maxItems":2},"minItems":1,"maxItems":3}""",
        """{"type":"object","properties":{"kind":{"const":"point"},"x":{"type":"number"},"y":{"type":"number"},"label":{"type":["string","null"],"maxLength":4}},"required":["kind","x","y","label"]}""",
        """{"type":"object","properties":{"day":{"type":"string","format":"date"},"id":{"type":"string","format":"uuid"},"mood":{"enum":["happy","sad",1,null,true]}},"required":["day","id","mood"]}""",
        """{"$defs":{"pt":{"type":"object","properties":{"x":{"type":"integer"},"y":{"type":"integer"}},"required":["x","y"]}},"type":"object","properties":{"from":{"$ref":"#/$defs/pt"},"to":{"$ref":"#/$defs/pt"},"w":{"type":"string","maxLength":3}},"required":["from","to"]}""",
        """{"type":"array","prefixItems":[{"type":"integer"},{"type":"string","maxLength":2},{"type":"boolean"}]}""",
        """{"type":"object","properties":{"é":{"type":"string","maxLength":3},"日本":{"enum":["東京","大阪"]}},"required":["日本"]}""",
    ];

    /// <summary>
    /// Generates by choosing uniformly among the allowed tokens until the matcher ends (or <paramref name="maxSteps"/>);
    /// every few steps the mask is checked token by token against <see cref="GrammarMatcher.IsTokenAllowed"/>.
    /// </summary>
    /// <returns>The bytes generated and whether the walk ended on its own.</returns>
    public static (byte[] Bytes, bool Ended) RandomWalk(GrammarMatcher matcher, ModelTokenizer tokenizer, Random rng, int maxSteps, int checkEvery = 0)
    {
        var mask = new ulong[(matcher.VocabSize + 63) / 64];
        var allowed = new List<int>();
        var bytes = new List<byte>();
        for (int step = 0; step < maxSteps; step++)
        {
            matcher.FillMask(mask);
            allowed.Clear();
            for (int t = 0; t < matcher.VocabSize; t++)
                if ((mask[t >> 6] & (1UL << t)) != 0) allowed.Add(t);
            Assert.That(allowed, Is.Not.Empty, "the mask allows no token");
            if (checkEvery > 0 && step % checkEvery == 0)
                for (int t = 0; t < matcher.VocabSize; t++)
                    if (((mask[t >> 6] & (1UL << t)) != 0) != matcher.IsTokenAllowed(t))
                        Assert.Fail($"step {step}: the mask and IsTokenAllowed disagree on token {t}");
            int token = allowed[rng.Next(allowed.Count)];
            Assert.That(matcher.TryAccept(token), Is.True);
            if (tokenizer.IsEndOfGeneration(token)) return (bytes.ToArray(), true);
            bytes.AddRange(tokenizer.GetTokenBytes(token));
            if (matcher.IsTerminated) return (bytes.ToArray(), true);
        }
        return (bytes.ToArray(), false);
    }

    /// <summary>Parses <paramref name="json"/> and validates it against <paramref name="schema"/> with JsonSchema.Net.</summary>
    public static void AssertValid(string schema, string json)
    {
        JsonNode? node;
        try { node = JsonNode.Parse(json); }
        catch (System.Text.Json.JsonException e) { Assert.Fail($"not JSON: {json}\n{e.Message}"); return; }
        // NOTE: JsonSchema.Net reads numbers as decimal; numbers beyond its range (1e40 is valid JSON) become 0 first.
        node = ClampNumbers(node);
        var result = JsonSchema.FromText(schema).Evaluate(node, new EvaluationOptions { OutputFormat = OutputFormat.List });
        Assert.That(result.IsValid, Is.True, () => $"does not validate against {schema}: {json}");
    }

    private static JsonNode? ClampNumbers(JsonNode? node)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var key in o.Select(p => p.Key).ToList()) o[key] = ClampNumbers(o[key]?.DeepClone());
                return o;
            case JsonArray a:
                for (int i = 0; i < a.Count; i++) a[i] = ClampNumbers(a[i]?.DeepClone());
                return a;
            case JsonValue v when v.GetValueKind() == System.Text.Json.JsonValueKind.Number:
                return decimal.TryParse(v.ToJsonString(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out _) ? v : JsonValue.Create(0);
            default:
                return node;
        }
    }

    /// <summary>The bytes as UTF-8, failing on invalid sequences.</summary>
    public static string StrictUtf8(byte[] bytes) => new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
}
