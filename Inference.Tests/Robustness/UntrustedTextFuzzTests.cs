using System.Diagnostics;
using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Inference.Chat;
using Inference.Loading;
using Inference.Server;
using Inference.Tests.Chat;
using Inference.Tests.Support;
using Inference.Tokenization;

namespace Inference.Tests.Robustness;

/// <summary>
/// Deterministic mutation fuzzing of the text a caller or a model file controls: chat templates (parser and evaluator),
/// the tokenizers (invalid UTF-16, megabyte inputs) and the server's JSON request parsing. Each must answer with its own
/// typed exception or a result, never another exception or a hang. Figures: docs/robustness.md.
/// </summary>
public class UntrustedTextFuzzTests
{
    private static readonly string[] TemplateTokens =
    [
        "{%", "%}", "{{", "}}", "{#", "#}", "-%}", "{%-", " for x in ", " endfor ", " if ", " elif ", " else ", " endif ", " set ", " macro m(a) ",
        " endmacro ", " call ", " filter ", "|", "(", ")", "[", "]", "{", "}", "'", "\"", "~", "*", "**", "//", "%", "range(", "loop.", "namespace(",
        " recursive ", "messages", "message['content']", ".strip()", "|tojson", "|join(',')", " not ", " in ", " is ", " defined ", "\\", "\0",
        "\uD800", "😀", "1e308", "-9223372036854775808", "99999999999999999999", "raise_exception('x')", "[::-1]", "[1:]", "loop.cycle(",
    ];

    private static IEnumerable<string> SeedTemplates() =>
        typeof(ChatTemplateFamilyTests).GetFields(BindingFlags.NonPublic | BindingFlags.Static)
            .Where(f => f.IsLiteral && f.Name.EndsWith("Template", StringComparison.Ordinal))
            .Select(f => (string)f.GetRawConstantValue()!);

    private static string Mutate(string text, Random rng, string[] dictionary)
    {
        var s = new StringBuilder(text);
        int count = rng.Next(1, 5);
        for (int m = 0; m < count; m++)
        {
            int at = s.Length == 0 ? 0 : rng.Next(s.Length + 1);
            int len = s.Length == at ? 0 : rng.Next(1, Math.Min(40, s.Length - at) + 1);
            switch (rng.Next(6))
            {
                case 0: s.Remove(at, len); break;
                case 1: s.Insert(at, s.ToString(at, len)); break;
                case 2: s.Insert(at, dictionary[rng.Next(dictionary.Length)]); break;
                case 3: if (s.Length > 0) s[Math.Min(at, s.Length - 1)] = (char)rng.Next(0x20, 0x7F); break;
                case 4: s.Length = at; break;
                default:
                    int from = s.Length == 0 ? 0 : rng.Next(s.Length);
                    int n = Math.Min(len, s.Length - from);
                    s.Insert(at, s.ToString(from, n));
                    break;
            }
        }
        return s.ToString();
    }

    [Test]
    public void ChatTemplates_Mutated_ParseAndRenderOrRefuseWithChatTemplateException()
    {
        var seeds = SeedTemplates().ToArray();
        Assert.That(seeds, Has.Length.GreaterThanOrEqualTo(8));
        var messages = new List<ChatMessage>
        {
            new(ChatRole.System, "Be brief."),
            new(ChatRole.User, "Hi {{ there }} {% x %}"),
            new(ChatRole.Assistant, "Hello."),
            new(ChatRole.User, "Bye 😀"),
        };
        var options = new ChatTemplateOptions { BosToken = "<s>", EosToken = "</s>" };
        var rng = new Random(20261207);
        int executions = 0, parsed = 0, rendered = 0;
        var slowest = TimeSpan.Zero;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 6_000; i++)
        {
            string source = Mutate(seeds[rng.Next(seeds.Length)], rng, TemplateTokens);
            executions++;
            var one = Stopwatch.StartNew();
            try
            {
                var template = ChatTemplate.Parse(source);
                parsed++;
                template.Render(messages, options);
                rendered++;
            }
            catch (ChatTemplateException e)
            {
                Assert.That(e.Message, Is.Not.Empty);
            }
            catch (Exception e)
            {
                Assert.Fail($"mutant {i} threw {e}\n--- template ---\n{source}");
            }
            if (one.Elapsed > slowest) slowest = one.Elapsed;
        }
        TestContext.Out.WriteLine($"templates: {executions} mutants, {parsed} parsed, {rendered} rendered, slowest {slowest.TotalMilliseconds:F0} ms, {sw.Elapsed.TotalSeconds:F1} s");
        Assert.That(parsed, Is.GreaterThan(executions / 10), "the mutants reach the evaluator");
    }

    private static readonly string[] TextPieces =
    [
        "Once upon a time", " ", "  ", "\n", "\t", "\r\n", "é", "ß", "日本語", "😀", "👩‍👩‍👧", "\uD800", "\uDFFF", "\uFFFD", "\0", "\u0001",
        "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "▁", "Ġ", "'s", "'ll", "123456", "３", "\u200B", "\u0301", "ﬁ", "İ",
    ];

    private static string RandomText(Random rng, int pieces)
    {
        var s = new StringBuilder();
        for (int i = 0; i < pieces; i++)
        {
            if (rng.Next(4) == 0) s.Append((char)rng.Next(0, 0x10000)); // any UTF-16 unit, lone surrogates included
            else s.Append(TextPieces[rng.Next(TextPieces.Length)]);
        }
        return s.ToString();
    }

    private static bool IsWellFormed(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) i++;
            else if (char.IsSurrogate(s[i])) return false;
        }
        return true;
    }

    [TestCase("stories260K.gguf", false)]
    [TestCase("vocab/ggml-vocab-llama-spm.gguf", false)]
    [TestCase("vocab/ggml-vocab-gpt-2.gguf", true)]
    [TestCase("vocab/ggml-vocab-deepseek-llm.gguf", true)]
    [TestCase("vocab/ggml-vocab-phi-3.gguf", false)]
    [CancelAfter(300_000)] // a guard against a hang only
    public void Tokenizers_RandomAndMegabyteText_EncodeInRange_AndByteLevelRoundTrips(string file, bool byteLevel)
    {
        using var gguf = GgufFile.Open(TestData.Path(file));
        var tokenizer = ModelTokenizer.FromGguf(gguf);
        int vocab = tokenizer.VocabularySize;
        var rng = new Random(file.Length * 7919);
        int executions = 0, roundTrips = 0;
        var sw = Stopwatch.StartNew();
        void Check(string text, bool special)
        {
            executions++;
            int[] ids = tokenizer.Encode(text, addSpecial: special, special ? SpecialTokenText.Token : SpecialTokenText.Literal);
            foreach (int id in ids) Assert.That(id, Is.InRange(0, vocab - 1));
            string decoded = tokenizer.Decode(ids);
            if (byteLevel && !special && IsWellFormed(text))
            {
                Assert.That(decoded, Is.EqualTo(text), "byte-level BPE gives the text back");
                roundTrips++;
            }
        }
        for (int i = 0; i < 1500; i++) Check(RandomText(rng, rng.Next(0, 40)), rng.Next(3) == 0);
        var small = sw.Elapsed;

        // Megabyte inputs: prose, one unbroken word, and random units.
        var prose = new StringBuilder();
        while (prose.Length < 1 << 20) prose.Append("Lily and Ben went to the park. ");
        var timings = new List<string>();
        foreach (var (name, text) in new[] { ("prose", prose.ToString()), ("one 64 KiB word", new string('a', 1 << 16)), ("random units", RandomText(rng, 1 << 18)) })
        {
            var one = Stopwatch.StartNew();
            Check(text, false);
            timings.Add($"{name} {text.Length / 1024} Ki chars {one.Elapsed.TotalSeconds:F2} s");
        }
        TestContext.Out.WriteLine($"{file}: {executions} inputs ({roundTrips} round trips checked), small inputs {small.TotalSeconds:F1} s; {string.Join("; ", timings)}");
    }

    private static readonly string[] JsonSeeds =
    [
        """{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"stop":["\n","END"],"n":2,"seed":3,"logprobs":true,"top_logprobs":2,"stream":true,"stream_options":{"include_usage":true}}""",
        """{"model":"m","messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}],"tools":[{"type":"function","function":{"name":"get","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":{"type":"function","function":{"name":"get"}}}""",
        """{"model":"m","messages":[{"role":"user","content":"json"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"integer","minimum":0},"b":{"type":"array","items":{"enum":["x","y"]}}},"required":["a"]}}}}""",
        """{"model":"m","prompt":["Once","upon"],"max_tokens":5,"echo":true,"logprobs":3,"frequency_penalty":0.5,"presence_penalty":-0.5,"repetition_penalty":1.1,"top_k":40,"min_p":0.05}""",
        """{"prompt":[1,2,3,4],"max_tokens":2,"guided_regex":"[a-z]+@[a-z]+\\.com","stop":"x"}""",
        """{"prompt":"a","guided_choice":["yes","no"],"n":1}""",
        """{"prompt":"a","guided_grammar":"root ::= \"a\" root | \"b\"","max_completion_tokens":3}""",
    ];

    private static JsonNode? RandomValue(Random rng) => rng.Next(12) switch
    {
        0 => null,
        1 => JsonValue.Create(rng.Next(2) == 0),
        2 => JsonValue.Create(rng.NextInt64(long.MinValue, long.MaxValue)),
        3 => JsonValue.Create(rng.NextDouble() * 1e300 * (rng.Next(2) == 0 ? -1 : 1)),
        4 => JsonValue.Create(rng.Next(-3, 30)),
        5 => JsonValue.Create(RandomText(rng, rng.Next(0, 6))),
        6 => new JsonArray(),
        7 => new JsonArray(JsonValue.Create("x"), JsonValue.Create(1)),
        8 => new JsonObject(),
        9 => new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "f" } },
        10 => JsonValue.Create(new[] { "auto", "none", "required", "text", "json_object", "json_schema", "user", "tool", "system" }[rng.Next(9)]),
        _ => JsonValue.Create(rng.NextDouble()),
    };

    private static void MutateNode(JsonNode node, Random rng)
    {
        // Walk to a random container and change, add or remove one member.
        var containers = new List<JsonNode>();
        void Collect(JsonNode? n)
        {
            if (n is JsonObject o) { containers.Add(o); foreach (var (_, v) in o) Collect(v); }
            else if (n is JsonArray a) { containers.Add(a); foreach (var v in a) Collect(v); }
        }
        Collect(node);
        var target = containers[rng.Next(containers.Count)];
        if (target is JsonObject obj)
        {
            var keys = obj.Select(kv => kv.Key).ToArray();
            if (keys.Length > 0 && rng.Next(3) > 0)
            {
                string key = keys[rng.Next(keys.Length)];
                if (rng.Next(4) == 0) obj.Remove(key);
                else obj[key] = RandomValue(rng);
            }
            else obj[new[] { "n", "max_tokens", "messages", "prompt", "stop", "tools", "tool_choice", "response_format", "logprobs", "top_logprobs", "guided_json", "guided_choice", "seed", "temperature" }[rng.Next(14)]] = RandomValue(rng);
        }
        else if (target is JsonArray arr)
        {
            if (arr.Count > 0 && rng.Next(2) == 0) arr[rng.Next(arr.Count)] = RandomValue(rng);
            else arr.Add(RandomValue(rng));
        }
    }

    [Test]
    public void ServerRequests_Mutated_AreParsedOrRefusedWith400()
    {
        var rng = new Random(20261207);
        int executions = 0, invalidJson = 0, accepted = 0, refused = 0;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 20_000; i++)
        {
            string seed = JsonSeeds[rng.Next(JsonSeeds.Length)];
            string body;
            if (rng.Next(2) == 0)
            {
                var node = JsonNode.Parse(seed)!;
                int mutations = rng.Next(1, 4);
                for (int m = 0; m < mutations; m++) MutateNode(node, rng);
                try
                {
                    body = node.ToJsonString();
                }
                catch (ArgumentException)
                {
                    continue; // text with a lone surrogate cannot be written as JSON
                }
            }
            else body = Mutate(seed, rng, ["{", "}", "[", "]", ",", ":", "\"", "\\u0000", "\\uD800", "null", "1e999", "-0", "[[[[[[[[", "\"n\":99", "\"messages\":[]"]);
            executions++;
            bool chat = body.Contains("messages", StringComparison.Ordinal) ? rng.Next(4) > 0 : rng.Next(4) == 0;
            JsonDocument document;
            try
            {
                document = JsonDocument.Parse(body);
            }
            catch (JsonException)
            {
                invalidJson++;
                continue;
            }
            using (document)
            {
                try
                {
                    if (chat) OpenAiRequest.ParseChat(document.RootElement, 16);
                    else OpenAiRequest.ParseCompletion(document.RootElement, 16, 32);
                    accepted++;
                }
                catch (OpenAiError e) when (e.Status == 400)
                {
                    refused++;
                }
                catch (Exception e)
                {
                    Assert.Fail($"body {i} threw {e.GetType().Name}: {e.Message}\n--- body ---\n{body}");
                }
            }
        }
        TestContext.Out.WriteLine($"requests: {executions} mutants, {invalidJson} not JSON, {accepted} accepted, {refused} refused with 400, {sw.Elapsed.TotalSeconds:F1} s");
        Assert.That(accepted, Is.GreaterThan(executions / 20));
        Assert.That(refused, Is.GreaterThan(executions / 20));
    }
}
