using System.Text.Json;
using Inference.Chat;
using Inference.Constraints;
using static Inference.Tests.Constraints.ConstraintTestSupport;

namespace Inference.Tests.Chat;

/// <summary>Tool calls read out of model text in each model family's format, and forced through a grammar.</summary>
public class ToolCallsTests
{
    private const string WeatherParameters = """{"type":"object","properties":{"city":{"type":"string","maxLength":8},"days":{"type":"integer"}},"required":["city","days"]}""";
    private const string TimeParameters = """{"type":"object","properties":{"zone":{"enum":["UTC","CET"]}},"required":["zone"]}""";

    private static readonly ChatTool[] Tools = [new("get_weather", "Weather", WeatherParameters), new("get_time", "Time", TimeParameters)];

    private static IReadOnlyList<ChatToolCall> Parse(string text, out string content)
    {
        Assert.That(ToolCalls.TryParse(text, out content, out var calls), Is.True, () => $"no call found in: {text}");
        return calls;
    }

    private static void AssertArguments(ChatToolCall call, string expectedJson) =>
        Assert.That(JsonElement.DeepEquals(JsonDocument.Parse(call.Arguments).RootElement, JsonDocument.Parse(expectedJson).RootElement), Is.True, call.Arguments);

    [Test]
    public void Hermes_AndQwen_ToolCallElements()
    {
        var calls = Parse("Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>\n<tool_call>{\"name\":\"get_time\",\"arguments\":{\"zone\":\"UTC\"}}</tool_call>", out string content);
        Assert.That(content, Is.EqualTo("Let me look."));
        Assert.That(calls.Select(c => c.Name), Is.EqualTo(new[] { "get_weather", "get_time" }));
        AssertArguments(calls[0], """{"city":"Paris","days":2}""");
        AssertArguments(calls[1], """{"zone":"UTC"}""");
        Assert.That(calls[0].Id, Does.Match("^call_[0-9a-f]{24}$"));
        Assert.That(calls[1].Id, Is.Not.EqualTo(calls[0].Id));

        // Arguments given as a JSON string (some models do) are taken as that string; an unclosed last element still counts.
        calls = Parse("<tool_call>{\"name\": \"get_time\", \"arguments\": \"{\\\"zone\\\": \\\"CET\\\"}\"}", out content);
        Assert.That(content, Is.Empty);
        AssertArguments(calls.Single(), """{"zone":"CET"}""");
    }

    [Test]
    public void Llama31_JsonObject_WithOrWithoutPythonTag()
    {
        var calls = Parse("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\", \"days\": 1}}", out string content);
        Assert.That(content, Is.Empty);
        Assert.That(calls.Single().Name, Is.EqualTo("get_weather"));
        AssertArguments(calls[0], """{"city":"Oslo","days":1}""");

        calls = Parse("<|python_tag|>{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\", \"days\": 3}}", out _);
        Assert.That(calls.Select(c => c.Name), Is.EqualTo(new[] { "get_time", "get_weather" }));
        AssertArguments(calls[1], """{"city":"Rome","days":3}""");
    }

    [Test]
    public void Mistral_ToolCallsArray()
    {
        var calls = Parse("[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Nice\", \"days\": 5}, \"id\": \"abc123def\"}, {\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}]", out string content);
        Assert.That(content, Is.Empty);
        Assert.That(calls.Select(c => c.Name), Is.EqualTo(new[] { "get_weather", "get_time" }));
        Assert.That(calls[0].Id, Is.EqualTo("abc123def"), "the model's own id is kept");
        AssertArguments(calls[0], """{"city":"Nice","days":5}""");

        // [TOOL_CALLS] is a control token that decodes to nothing: the array alone is a call too.
        calls = Parse("[{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}]", out _);
        Assert.That(calls.Single().Name, Is.EqualTo("get_time"));
    }

    [TestCase("Once upon a time there was a cat.")]
    [TestCase("{\"city\": \"Paris\"}")]
    [TestCase("[1, 2, 3]")]
    [TestCase("{\"name\": \"get_time\"")]
    [TestCase("<tool_call>not json</tool_call>")]
    [TestCase("[{\"name\": \"f\", \"arguments\": {}}, 7]")]
    public void TextThatIsNotACall_IsContent(string text)
    {
        Assert.That(ToolCalls.TryParse(text, out string content, out var calls), Is.False);
        Assert.That(content, Is.EqualTo(text));
        Assert.That(calls, Is.Empty);
    }

    [Test]
    public void DetectFormat_FromTheTemplate()
    {
        Assert.That(ToolCalls.DetectFormat(null), Is.EqualTo(ToolCallFormat.Hermes));
        Assert.That(ToolCalls.DetectFormat("{% for m in messages %}<tool_call>{{ m }}</tool_call>{% endfor %}"), Is.EqualTo(ToolCallFormat.Hermes));
        Assert.That(ToolCalls.DetectFormat("{{ '[TOOL_CALLS] ' + calls | tojson }}"), Is.EqualTo(ToolCallFormat.Mistral));
        Assert.That(ToolCalls.DetectFormat("<|start_header_id|>ipython<|end_header_id|>{{ '{\"name\": \"' + n + '\", \"parameters\": ' }}"), Is.EqualTo(ToolCallFormat.Llama3Json));
        Assert.That(ToolCalls.DetectFormat("{{ '<|python_tag|>' }}"), Is.EqualTo(ToolCallFormat.Llama3Json));
    }

    [TestCase(ToolCallFormat.Hermes)]
    [TestCase(ToolCallFormat.Llama3Json)]
    [TestCase(ToolCallFormat.Mistral)]
    public void RequiredCall_RandomWalks_ParseBackAsOneValidCall(ToolCallFormat format)
    {
        foreach (string? name in new[] { null, "get_time" })
        {
            var constraint = ToolCalls.RequiredCallConstraint(Tools, name, format);
            foreach (var tokenizer in new[] { DeepSeek, Stories })
                for (int seed = 0; seed < 4; seed++)
                {
                    var (bytes, ended) = RandomWalk(constraint.CreateMatcher(tokenizer), tokenizer, new Random(seed), 3000, checkEvery: seed == 0 ? 11 : 0);
                    Assert.That(ended, Is.True);
                    string text = StrictUtf8(bytes);
                    var call = Parse(text, out string content).Single();
                    Assert.That(content, Is.Empty);
                    if (name is not null) Assert.That(call.Name, Is.EqualTo(name));
                    AssertValid(call.Name == "get_weather" ? WeatherParameters : TimeParameters, call.Arguments);
                    if (format == ToolCallFormat.Hermes) Assert.That(text, Does.StartWith("<tool_call>"));
                    if (format == ToolCallFormat.Llama3Json) Assert.That(text, Does.Contain("\"parameters\""));
                }
        }
    }

    [Test]
    public void RequiredCall_NamingAnUnknownTool_OrWithoutTools_Throws()
    {
        Assert.That(() => ToolCalls.RequiredCallConstraint(Tools, "nope", ToolCallFormat.Hermes), Throws.ArgumentException.With.Message.Contains("'nope'"));
        Assert.That(() => ToolCalls.RequiredCallConstraint([], null, ToolCallFormat.Hermes), Throws.ArgumentException);
        Assert.That(() => ToolCalls.RequiredCallConstraint([new ChatTool("f", null, """{"type":"strin"}""")], null, ToolCallFormat.Hermes), Throws.TypeOf<InvalidConstraintException>());
    }
}
