using System.Text.Json;
using Inference.Chat;
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

    /// <summary>Parses a chat completions request.</summary>
    /// <exception cref="OpenAiError">The request is invalid.</exception>
    public static OpenAiRequest ParseChat(JsonElement root, int maxChoices)
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
            list.Add(new ChatMessage(chatRole, ReadContent(m, where)));
        }
        // OpenAI's chat form: logprobs is a boolean, top_logprobs (0-20) the alternatives and only with logprobs.
        bool logprobs = Boolean(root, "logprobs") ?? false;
        long? top = Integer(root, "top_logprobs");
        if (top is long t && (t < 0 || t > SamplingOptions.MaxLogprobs))
            throw OpenAiError.BadRequest($"'top_logprobs' must be between 0 and {SamplingOptions.MaxLogprobs}", "top_logprobs");
        if (top is not null && !logprobs) throw OpenAiError.BadRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
        var sampling = logprobs ? request.Sampling with { Logprobs = (int)(top ?? 0) } : request.Sampling;
        return request with { Messages = list, Sampling = sampling };
    }

    /// <summary>Parses a (legacy) completions request.</summary>
    /// <exception cref="OpenAiError">The request is invalid.</exception>
    public static OpenAiRequest ParseCompletion(JsonElement root, int maxChoices)
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

        long n = Integer(root, "n") ?? 1;
        if (n < 1 || n > maxChoices) throw OpenAiError.BadRequest($"'n' must be between 1 and {maxChoices}", "n");
        bool stream = Boolean(root, "stream") ?? false;
        bool includeUsage = root.TryGetProperty("stream_options", out var so) && so.ValueKind == JsonValueKind.Object && (Boolean(so, "include_usage") ?? false);
        string? model = root.TryGetProperty("model", out var mo) && mo.ValueKind == JsonValueKind.String ? mo.GetString() : null;
        return new OpenAiRequest { Model = model, Sampling = sampling, N = (int)n, Stream = stream, IncludeUsage = includeUsage };
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
