using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Inference.Constraints;

namespace Inference.Chat;

/// <summary>How a model writes its tool calls.</summary>
public enum ToolCallFormat
{
    /// <summary>Hermes and Qwen: <c>&lt;tool_call&gt;{"name": …, "arguments": {…}}&lt;/tool_call&gt;</c>, one element per call.</summary>
    Hermes,
    /// <summary>Llama 3.1 and later: a JSON object <c>{"name": …, "parameters": {…}}</c> (after <c>&lt;|python_tag|&gt;</c> or alone).</summary>
    Llama3Json,
    /// <summary>Mistral: <c>[TOOL_CALLS] [{"name": …, "arguments": {…}}, …]</c>.</summary>
    Mistral,
}

/// <summary>
/// Tool calls in model output: which format a chat template uses, parsing calls out of generated text, and the
/// constraint that forces a call (OpenAI's <c>tool_choice: "required"</c> or a named function).
/// </summary>
public static class ToolCalls
{
    /// <summary>The format a chat template renders tool calls in; Hermes when the template does not tell.</summary>
    public static ToolCallFormat DetectFormat(string? templateSource)
    {
        if (string.IsNullOrEmpty(templateSource)) return ToolCallFormat.Hermes;
        if (templateSource.Contains("[TOOL_CALLS]", StringComparison.Ordinal)) return ToolCallFormat.Mistral;
        if (templateSource.Contains("<tool_call>", StringComparison.Ordinal)) return ToolCallFormat.Hermes;
        if (templateSource.Contains("<|python_tag|>", StringComparison.Ordinal)
            || (templateSource.Contains("<|start_header_id|>", StringComparison.Ordinal) && templateSource.Contains("\"parameters\"", StringComparison.Ordinal)))
            return ToolCallFormat.Llama3Json;
        return ToolCallFormat.Hermes;
    }

    /// <summary>
    /// Finds tool calls in <paramref name="text"/> in any of the known formats. Returns false (and the text as
    /// content) when there are none.
    /// </summary>
    /// <param name="text">The generated text.</param>
    /// <param name="content">The text outside the calls, trimmed.</param>
    /// <param name="calls">The calls, each with a new id.</param>
    public static bool TryParse(string text, out string content, out IReadOnlyList<ChatToolCall> calls)
    {
        ArgumentNullException.ThrowIfNull(text);
        var found = new List<ChatToolCall>();
        content = text;
        // Hermes / Qwen.
        const string open = "<tool_call>", close = "</tool_call>";
        if (text.Contains(open, StringComparison.Ordinal))
        {
            var rest = new StringBuilder();
            int at = 0;
            while (true)
            {
                int start = text.IndexOf(open, at, StringComparison.Ordinal);
                if (start < 0) { rest.Append(text, at, text.Length - at); break; }
                rest.Append(text, at, start - at);
                int body = start + open.Length;
                int end = text.IndexOf(close, body, StringComparison.Ordinal);
                string json = end < 0 ? text[body..] : text[body..end];
                if (TryCall(json, "arguments", found) is false) { rest.Append(text, start, (end < 0 ? text.Length : end + close.Length) - start); }
                if (end < 0) break;
                at = end + close.Length;
            }
            if (found.Count > 0)
            {
                content = rest.ToString().Trim();
                calls = found;
                return true;
            }
        }
        // Mistral: an array of calls, after [TOOL_CALLS] (which decodes to nothing when it is a control token).
        string trimmed = text.Trim();
        int marker = trimmed.IndexOf("[TOOL_CALLS]", StringComparison.Ordinal);
        string candidate = marker >= 0 ? trimmed[(marker + "[TOOL_CALLS]".Length)..].Trim() : trimmed;
        if (candidate.StartsWith('['))
        {
            try
            {
                using var doc = JsonDocument.Parse(candidate);
                foreach (var item in doc.RootElement.EnumerateArray())
                    if (!TryCall(item, "arguments", found)) { found.Clear(); break; }
                if (found.Count > 0)
                {
                    content = marker > 0 ? trimmed[..marker].Trim() : "";
                    calls = found;
                    return true;
                }
            }
            catch (JsonException) { }
            catch (InvalidOperationException) { }
        }
        // Llama 3.1: one JSON object (or several separated by ';'), after <|python_tag|> when that is text.
        const string pythonTag = "<|python_tag|>";
        if (candidate.StartsWith(pythonTag, StringComparison.Ordinal)) candidate = candidate[pythonTag.Length..].Trim();
        if (candidate.StartsWith('{'))
        {
            foreach (var part in candidate.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                if (TryCall(part, "parameters", found) is false && TryCall(part, "arguments", found) is false) { found.Clear(); break; }
            if (found.Count > 0)
            {
                content = "";
                calls = found;
                return true;
            }
        }
        content = text;
        calls = [];
        return false;
    }

    private static bool TryCall(string json, string argumentsName, List<ChatToolCall> into)
    {
        try
        {
            using var doc = JsonDocument.Parse(json.Trim());
            return TryCall(doc.RootElement, argumentsName, into);
        }
        catch (JsonException)
        {
            return false;
        }
    }

    private static bool TryCall(JsonElement call, string argumentsName, List<ChatToolCall> into)
    {
        if (call.ValueKind != JsonValueKind.Object || !call.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String) return false;
        if (!call.TryGetProperty(argumentsName, out var args) && !call.TryGetProperty(argumentsName == "arguments" ? "parameters" : "arguments", out args)) return false;
        string arguments = args.ValueKind == JsonValueKind.String ? args.GetString()! : args.GetRawText();
        string id = call.TryGetProperty("id", out var i) && i.ValueKind == JsonValueKind.String ? i.GetString()! : NewId();
        into.Add(new ChatToolCall(id, name.GetString()!, arguments));
        return true;
    }

    /// <summary>A new call id in OpenAI's style (<c>call_</c> and 24 hex digits).</summary>
    public static string NewId() => "call_" + Guid.NewGuid().ToString("N")[..24];

    /// <summary>
    /// The constraint that makes the model call a tool in <paramref name="format"/>: one of <paramref name="tools"/>,
    /// or the one named <paramref name="functionName"/>, with arguments valid against its parameters schema.
    /// </summary>
    /// <exception cref="ArgumentException">No tools, or no tool has that name.</exception>
    /// <exception cref="InvalidConstraintException">A parameters schema cannot be enforced.</exception>
    public static Constraint RequiredCallConstraint(IReadOnlyList<ChatTool> tools, string? functionName, ToolCallFormat format)
    {
        ArgumentNullException.ThrowIfNull(tools);
        string argumentsName = format == ToolCallFormat.Llama3Json ? "parameters" : "arguments";
        var alternatives = new JsonArray();
        foreach (var tool in tools)
        {
            if (functionName is not null && tool.Name != functionName) continue;
            alternatives.Add(new JsonObject
            {
                ["type"] = "object",
                ["properties"] = new JsonObject
                {
                    ["name"] = new JsonObject { ["const"] = tool.Name },
                    [argumentsName] = JsonNode.Parse(tool.ParametersSchema),
                },
                ["required"] = new JsonArray("name", argumentsName),
            });
        }
        if (alternatives.Count == 0)
            throw new ArgumentException(functionName is null ? "tool_choice requires a call but there are no tools" : $"tool_choice names '{functionName}', which is not among the tools");
        var schema = new JsonObject { ["anyOf"] = alternatives };
        using var doc = JsonDocument.Parse(schema.ToJsonString());
        string rules = JsonSchemaConverter.ToGbnf(doc.RootElement, "call");
        string root = format switch
        {
            ToolCallFormat.Hermes => "root ::= \"<tool_call>\\n\" call \"\\n</tool_call>\"\n",
            ToolCallFormat.Mistral => "root ::= \"[\" call \"]\"\n",
            _ => "root ::= call\n",
        };
        return new GrammarConstraint(rules + root);
    }

    /// <summary>The template variables with <c>tools</c> set to OpenAI's tool objects.</summary>
    internal static IReadOnlyDictionary<string, object?> WithTools(IReadOnlyDictionary<string, object?> variables, IReadOnlyList<ChatTool> tools)
    {
        var result = new Dictionary<string, object?>(variables, StringComparer.Ordinal);
        var list = new List<object?>(tools.Count);
        foreach (var tool in tools)
        {
            var function = new Dictionary<string, object?>(StringComparer.Ordinal) { ["name"] = tool.Name };
            if (tool.Description is not null) function["description"] = tool.Description;
            function["parameters"] = TemplateValues.FromJsonText(tool.ParametersSchema);
            list.Add(new Dictionary<string, object?>(StringComparer.Ordinal) { ["type"] = "function", ["function"] = function });
        }
        result["tools"] = list;
        return result;
    }
}
