using System.Text.Json;
using Inference.Chat;
using Inference.Constraints;
using Inference.Sampling;

namespace Inference.Server;

/// <summary>The fields of an OpenAI completions or chat completions request that the server acts on, validated.</summary>
/// <remarks>
/// NOTE: unknown fields are ignored, as OpenAI-compatible servers commonly do; fields with a known name but a wrong
/// type or an out-of-range value are a 400 naming the field. Defaults that OpenAI leaves to the model (temperature,
/// top_p, max_tokens) take the engine's <see cref="SamplingOptions"/> defaults.
/// </remarks>
public sealed record OpenAiRequest
{
    /// <summary>The model named in the request, if any.</summary>
    public string? Model { get; init; }

    /// <summary>Chat: the conversation.</summary>
    public IReadOnlyList<ChatMessage> Messages { get; init; } = [];

    /// <summary>Completions: the prompts (a string or an array of strings), or one pre-tokenized prompt.</summary>
    public IReadOnlyList<string> Prompts { get; init; } = [];

    /// <summary>Completions: a prompt given as token ids.</summary>
    public IReadOnlyList<int>? PromptTokens { get; init; }

    /// <summary>How to sample.</summary>
    public SamplingOptions Sampling { get; init; } = new();

    /// <summary>Choices per prompt.</summary>
    public int N { get; init; } = 1;

    /// <summary>Completions: whether the answer repeats the prompt before the completion (<c>echo</c>).</summary>
    public bool Echo { get; init; }

    /// <summary>Whether to answer with server-sent events.</summary>
    public bool Stream { get; init; }

    /// <summary>Whether a streamed answer ends with a usage chunk (<c>stream_options.include_usage</c>).</summary>
    public bool IncludeUsage { get; init; }

    /// <summary>Chat: the tools the model may call (<c>tools</c>).</summary>
    public IReadOnlyList<ChatTool> Tools { get; init; } = [];

    /// <summary>Chat: <c>tool_choice</c>: <c>auto</c>, <c>none</c>, <c>required</c>, or <c>function</c> for a named one.</summary>
    public string ToolChoice { get; init; } = "auto";

    /// <summary>Chat: the function <c>tool_choice</c> names, when it names one.</summary>
    public string? ToolChoiceName { get; init; }

    /// <summary>Whether the reply is read for tool calls: tools were given and <c>tool_choice</c> is not <c>none</c>.</summary>
    public bool ToolsActive => Tools.Count > 0 && ToolChoice != "none";

    /// <summary>Parses a chat completions request.</summary>
    /// <exception cref="OpenAiError">The request is invalid.</exception>
    public static OpenAiRequest ParseChat(JsonElement root, int maxChoices) => Guard(() => ParseChatCore(root, maxChoices));

    /// <summary>
    /// Runs a parse, answering 400 for JSON strings that are not valid UTF-16 (an escaped lone surrogate such as
    /// <c>"\uD800"</c>), which <see cref="JsonElement.GetString"/> refuses with <see cref="InvalidOperationException"/>.
    /// </summary>
    private static OpenAiRequest Guard(Func<OpenAiRequest> parse)
    {
        try
        {
            return parse();
        }
        catch (InvalidOperationException e)
        {
            throw OpenAiError.BadRequest("the request holds a string that cannot be read: " + e.Message);
        }
    }

    private static OpenAiRequest ParseChatCore(JsonElement root, int maxChoices)
    {
        var request = ParseCommon(root, maxChoices);
        if (!root.TryGetProperty("messages", out var messages) || messages.ValueKind != JsonValueKind.Array)
            throw OpenAiError.BadRequest("'messages' is required and must be an array", "messages");
        if (messages.GetArrayLength() == 0) throw OpenAiError.BadRequest("'messages' must not be empty", "messages");
        var list = new List<ChatMessage>();
        int index = 0;
        foreach (var m in messages.EnumerateArray())
        {
            string where = $"messages[{index++}]";
            if (m.ValueKind != JsonValueKind.Object) throw OpenAiError.BadRequest($"'{where}' must be an object", where);
            string role = m.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString()! : throw OpenAiError.BadRequest($"'{where}.role' is required", $"{where}.role");
            var chatRole = role switch
            {
                "system" or "developer" => ChatRole.System,
                "user" => ChatRole.User,
                "assistant" => ChatRole.Assistant,
                "tool" => ChatRole.Tool,
                _ => throw OpenAiError.BadRequest($"'{role}' is not a supported role (system, developer, user, assistant, tool)", $"{where}.role"),
            };
            var message = new ChatMessage(chatRole, ReadContent(m, where));
            if (m.TryGetProperty("tool_calls", out var calls) && calls.ValueKind == JsonValueKind.Array)
                message = message with { ToolCalls = ReadToolCalls(calls, where) };
            if (m.TryGetProperty("tool_call_id", out var callId) && callId.ValueKind == JsonValueKind.String)
                message = message with { ToolCallId = callId.GetString() };
            list.Add(message);
        }
        // OpenAI's chat form: logprobs is a boolean, top_logprobs (0-20) the alternatives and only with logprobs.
        bool logprobs = Boolean(root, "logprobs") ?? false;
        long? top = Integer(root, "top_logprobs");
        if (top is long t && (t < 0 || t > SamplingOptions.MaxLogprobs))
            throw OpenAiError.BadRequest($"'top_logprobs' must be between 0 and {SamplingOptions.MaxLogprobs}", "top_logprobs");
        if (top is not null && !logprobs) throw OpenAiError.BadRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
        var sampling = logprobs ? request.Sampling with { Logprobs = (int)(top ?? 0) } : request.Sampling;
        var (tools, choice, choiceName) = ReadTools(root);
        return request with { Messages = list, Sampling = sampling, Tools = tools, ToolChoice = choice, ToolChoiceName = choiceName };
    }

    private static List<ChatToolCall> ReadToolCalls(JsonElement calls, string where)
    {
        var result = new List<ChatToolCall>();
        int i = 0;
        foreach (var call in calls.EnumerateArray())
        {
            string at = $"{where}.tool_calls[{i++}]";
            if (call.ValueKind != JsonValueKind.Object || !call.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object
                || !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
                throw OpenAiError.BadRequest($"'{at}' must be an object with function.name", at);
            string arguments = f.TryGetProperty("arguments", out var a) ? a.ValueKind == JsonValueKind.String ? a.GetString()! : a.GetRawText() : "{}";
            string id = call.TryGetProperty("id", out var idv) && idv.ValueKind == JsonValueKind.String ? idv.GetString()! : ToolCalls.NewId();
            result.Add(new ChatToolCall(id, name.GetString()!, arguments));
        }
        return result;
    }

    private static (List<ChatTool> Tools, string Choice, string? Name) ReadTools(JsonElement root)
    {
        var tools = new List<ChatTool>();
        if (root.TryGetProperty("tools", out var list) && list.ValueKind != JsonValueKind.Null)
        {
            if (list.ValueKind != JsonValueKind.Array) throw OpenAiError.BadRequest("'tools' must be an array", "tools");
            int i = 0;
            foreach (var t in list.EnumerateArray())
            {
                string at = $"tools[{i++}]";
                if (t.ValueKind != JsonValueKind.Object || !t.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object
                    || !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String || name.GetString()!.Length == 0)
                    throw OpenAiError.BadRequest($"'{at}' must be {{\"type\":\"function\",\"function\":{{\"name\":...}}}}", at);
                string? description = f.TryGetProperty("description", out var d) && d.ValueKind == JsonValueKind.String ? d.GetString() : null;
                string? parameters = f.TryGetProperty("parameters", out var p) && p.ValueKind == JsonValueKind.Object ? p.GetRawText() : null;
                tools.Add(new ChatTool(name.GetString()!, description, parameters));
            }
        }
        string choice = "auto";
        string? choiceName = null;
        if (root.TryGetProperty("tool_choice", out var tc) && tc.ValueKind != JsonValueKind.Null)
        {
            if (tc.ValueKind == JsonValueKind.String && tc.GetString() is "auto" or "none" or "required") choice = tc.GetString()!;
            else if (tc.ValueKind == JsonValueKind.Object && tc.TryGetProperty("function", out var f) && f.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String)
            {
                choice = "function";
                choiceName = n.GetString();
                bool known = false;
                foreach (var t in tools) known |= t.Name == choiceName;
                if (!known) throw OpenAiError.BadRequest($"'tool_choice' names '{choiceName}', which is not among the tools", "tool_choice");
            }
            else throw OpenAiError.BadRequest("'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}", "tool_choice");
            if (choice == "required" && tools.Count == 0) throw OpenAiError.BadRequest("'tool_choice' is \"required\" but there are no tools", "tool_choice");
        }
        return (tools, choice, choiceName);
    }

    /// <summary>Parses a (legacy) completions request.</summary>
    /// <exception cref="OpenAiError">The request is invalid.</exception>
    /// <param name="root">The request body.</param>
    /// <param name="maxChoices">Most choices <c>n</c> may ask for.</param>
    /// <param name="maxPrompts">Most prompts an array of strings may hold.</param>
    public static OpenAiRequest ParseCompletion(JsonElement root, int maxChoices, int maxPrompts = 32) => Guard(() => ParseCompletionCore(root, maxChoices, maxPrompts));

    private static OpenAiRequest ParseCompletionCore(JsonElement root, int maxChoices, int maxPrompts)
    {
        var request = ParseCommon(root, maxChoices);
        // The legacy form: logprobs is the number of alternatives (0 for the chosen token's only); echo with logprobs
        // scores the prompt too.
        long? logprobs = Integer(root, "logprobs");
        if (logprobs is long l && (l < 0 || l > SamplingOptions.MaxLogprobs))
            throw OpenAiError.BadRequest($"'logprobs' must be between 0 and {SamplingOptions.MaxLogprobs}", "logprobs");
        bool echo = Boolean(root, "echo") ?? false;
        if (logprobs is long top)
            request = request with { Sampling = request.Sampling with { Logprobs = (int)top, PromptLogprobs = echo ? (int)top : null } };
        request = request with { Echo = echo };
        if (!root.TryGetProperty("prompt", out var prompt)) throw OpenAiError.BadRequest("'prompt' is required", "prompt");
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                return request with { Prompts = [prompt.GetString()!] };
            case JsonValueKind.Array when prompt.GetArrayLength() > 0 && prompt[0].ValueKind == JsonValueKind.Number:
            {
                var tokens = new List<int>();
                foreach (var t in prompt.EnumerateArray())
                    tokens.Add(t.ValueKind == JsonValueKind.Number && t.TryGetInt32(out int id) ? id : throw OpenAiError.BadRequest("a token prompt must hold only integers", "prompt"));
                return request with { PromptTokens = tokens };
            }
            case JsonValueKind.Array when prompt.GetArrayLength() > 0:
            {
                if (prompt.GetArrayLength() > maxPrompts)
                    throw OpenAiError.BadRequest($"'prompt' holds {prompt.GetArrayLength()} prompts; at most {maxPrompts} are accepted in one request", "prompt");
                var prompts = new List<string>();
                foreach (var p in prompt.EnumerateArray())
                    prompts.Add(p.ValueKind == JsonValueKind.String ? p.GetString()! : throw OpenAiError.BadRequest("'prompt' must be a string, an array of strings or an array of token ids", "prompt"));
                return request with { Prompts = prompts };
            }
            default:
                throw OpenAiError.BadRequest("'prompt' must be a string, an array of strings or an array of token ids", "prompt");
        }
    }

    private static string ReadContent(JsonElement message, string where)
    {
        if (!message.TryGetProperty("content", out var content) || content.ValueKind == JsonValueKind.Null) return "";
        if (content.ValueKind == JsonValueKind.String) return content.GetString()!;
        if (content.ValueKind != JsonValueKind.Array) throw OpenAiError.BadRequest($"'{where}.content' must be a string or an array of parts", $"{where}.content");
        var text = new System.Text.StringBuilder();
        foreach (var part in content.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var type) || type.GetString() != "text"
                || !part.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String)
                throw OpenAiError.BadRequest($"only text content parts are supported in '{where}.content'", $"{where}.content");
            text.Append(t.GetString());
        }
        return text.ToString();
    }

    private static OpenAiRequest ParseCommon(JsonElement root, int maxChoices)
    {
        if (root.ValueKind != JsonValueKind.Object) throw OpenAiError.BadRequest("the request body must be a JSON object");
        var sampling = new SamplingOptions();
        try
        {
            if (Number(root, "temperature") is double temperature)
            {
                // OpenAI's range; the engine itself accepts up to 100.
                if (temperature is < 0 or > 2) throw OpenAiError.BadRequest($"'temperature' must be between 0 and 2, got {temperature}", "temperature");
                sampling = sampling with { Temperature = (float)temperature };
            }
            if (Number(root, "top_p") is double topP) sampling = sampling with { TopP = (float)topP };
            if (Integer(root, "top_k") is long topK) sampling = sampling with { TopK = checked((int)topK) };
            if (Number(root, "min_p") is double minP) sampling = sampling with { MinP = (float)minP };
            if (Number(root, "frequency_penalty") is double frequency) sampling = sampling with { FrequencyPenalty = (float)frequency };
            if (Number(root, "presence_penalty") is double presence) sampling = sampling with { PresencePenalty = (float)presence };
            // llama.cpp's names (repeat_penalty, repeat_last_n) and vLLM's (repetition_penalty) for the same penalty.
            if ((Number(root, "repetition_penalty") ?? Number(root, "repeat_penalty")) is double repetition) sampling = sampling with { RepetitionPenalty = (float)repetition };
            if (Integer(root, "repeat_last_n") is long lastN) sampling = sampling with { PenaltyLastN = (int)Math.Clamp(lastN, -1, int.MaxValue) };
            long? maxTokens = Integer(root, "max_completion_tokens") ?? Integer(root, "max_tokens");
            if (maxTokens is long max) sampling = sampling with { MaxTokens = (int)Math.Clamp(max, int.MinValue, int.MaxValue) };
            if (Integer(root, "seed") is long seed) sampling = sampling with { Seed = unchecked((ulong)seed) };
            if (root.TryGetProperty("stop", out var stop) && stop.ValueKind != JsonValueKind.Null)
            {
                var stops = new List<string>();
                if (stop.ValueKind == JsonValueKind.String) stops.Add(stop.GetString()!);
                else if (stop.ValueKind == JsonValueKind.Array)
                    foreach (var s in stop.EnumerateArray())
                        stops.Add(s.ValueKind == JsonValueKind.String ? s.GetString()! : throw OpenAiError.BadRequest("'stop' must be a string or an array of strings", "stop"));
                else throw OpenAiError.BadRequest("'stop' must be a string or an array of strings", "stop");
                if (stops.Count > 4) throw OpenAiError.BadRequest("'stop' holds at most 4 sequences", "stop");
                sampling = sampling with { StopStrings = stops };
            }
        }
        catch (ArgumentOutOfRangeException e)
        {
            string param = e.ParamName switch
            {
                nameof(SamplingOptions.Temperature) => "temperature",
                nameof(SamplingOptions.TopP) => "top_p",
                nameof(SamplingOptions.TopK) => "top_k",
                nameof(SamplingOptions.MinP) => "min_p",
                nameof(SamplingOptions.FrequencyPenalty) => "frequency_penalty",
                nameof(SamplingOptions.PresencePenalty) => "presence_penalty",
                nameof(SamplingOptions.RepetitionPenalty) => root.TryGetProperty("repetition_penalty", out _) ? "repetition_penalty" : "repeat_penalty",
                nameof(SamplingOptions.PenaltyLastN) => "repeat_last_n",
                nameof(SamplingOptions.MaxTokens) => root.TryGetProperty("max_completion_tokens", out _) ? "max_completion_tokens" : "max_tokens",
                nameof(SamplingOptions.StopStrings) => "stop",
                _ => e.ParamName ?? "",
            };
            throw OpenAiError.BadRequest($"invalid '{param}': {e.Message.Split(" (Parameter")[0]}", param);
        }
        catch (OverflowException)
        {
            throw OpenAiError.BadRequest("'top_k' is out of range", "top_k");
        }

        sampling = sampling with { Constraint = ReadConstraint(root) };
        long n = Integer(root, "n") ?? 1;
        if (n < 1 || n > maxChoices) throw OpenAiError.BadRequest($"'n' must be between 1 and {maxChoices}", "n");
        bool stream = Boolean(root, "stream") ?? false;
        bool includeUsage = root.TryGetProperty("stream_options", out var so) && so.ValueKind == JsonValueKind.Object && (Boolean(so, "include_usage") ?? false);
        string? model = root.TryGetProperty("model", out var mo) && mo.ValueKind == JsonValueKind.String ? mo.GetString() : null;
        return new OpenAiRequest { Model = model, Sampling = sampling, N = (int)n, Stream = stream, IncludeUsage = includeUsage };
    }

    /// <summary>
    /// The output constraint: OpenAI's <c>response_format</c> (<c>json_object</c>, <c>json_schema</c>) or vLLM's
    /// <c>guided_json</c>, <c>guided_regex</c>, <c>guided_choice</c>, <c>guided_grammar</c>; at most one.
    /// </summary>
    private static Constraint? ReadConstraint(JsonElement root)
    {
        Constraint? constraint = null;
        string? from = null;
        void Set(string name, Func<Constraint> make)
        {
            if (from is not null) throw OpenAiError.BadRequest($"'{name}' and '{from}' cannot both constrain the output", name);
            from = name;
            try { constraint = make(); }
            catch (InvalidConstraintException e) { throw OpenAiError.BadRequest($"invalid '{name}': {e.Message}", name); }
        }
        if (root.TryGetProperty("response_format", out var rf) && rf.ValueKind != JsonValueKind.Null)
        {
            string? type = rf.ValueKind == JsonValueKind.Object && rf.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            switch (type)
            {
                case "text":
                    break;
                case "json_object":
                    Set("response_format", () => JsonObjectConstraint.Instance);
                    break;
                case "json_schema":
                    if (!rf.TryGetProperty("json_schema", out var js) || js.ValueKind != JsonValueKind.Object
                        || !js.TryGetProperty("schema", out var schema) || schema.ValueKind is not (JsonValueKind.Object or JsonValueKind.True))
                        throw OpenAiError.BadRequest("'response_format.json_schema.schema' is required and must be an object", "response_format");
                    // NOTE: the schema is enforced whether or not 'strict' is set; strict only promises it.
                    Set("response_format", () => new JsonSchemaConstraint(schema.GetRawText()));
                    break;
                default:
                    throw OpenAiError.BadRequest("'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"", "response_format");
            }
        }
        if (root.TryGetProperty("guided_json", out var gj) && gj.ValueKind != JsonValueKind.Null)
            Set("guided_json", () => new JsonSchemaConstraint(gj.ValueKind == JsonValueKind.String ? gj.GetString()! : gj.GetRawText()));
        if (root.TryGetProperty("guided_regex", out var gr) && gr.ValueKind != JsonValueKind.Null)
            Set("guided_regex", () => new RegexConstraint(gr.ValueKind == JsonValueKind.String ? gr.GetString()! : throw OpenAiError.BadRequest("'guided_regex' must be a string", "guided_regex")));
        if (root.TryGetProperty("guided_grammar", out var gg) && gg.ValueKind != JsonValueKind.Null)
            Set("guided_grammar", () => new GrammarConstraint(gg.ValueKind == JsonValueKind.String ? gg.GetString()! : throw OpenAiError.BadRequest("'guided_grammar' must be a string", "guided_grammar")));
        if (root.TryGetProperty("guided_choice", out var gc) && gc.ValueKind != JsonValueKind.Null)
        {
            if (gc.ValueKind != JsonValueKind.Array) throw OpenAiError.BadRequest("'guided_choice' must be an array of strings", "guided_choice");
            var choices = new List<string>();
            foreach (var c in gc.EnumerateArray())
                choices.Add(c.ValueKind == JsonValueKind.String ? c.GetString()! : throw OpenAiError.BadRequest("'guided_choice' must be an array of strings", "guided_choice"));
            Set("guided_choice", () => new ChoiceConstraint(choices));
        }
        return constraint;
    }

    private static double? Number(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw OpenAiError.BadRequest($"'{name}' must be a number", name);
    }

    private static long? Integer(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long l) ? l : throw OpenAiError.BadRequest($"'{name}' must be an integer", name);
    }

    private static bool? Boolean(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw OpenAiError.BadRequest($"'{name}' must be a boolean", name);
    }
}
