using System.Text.Json;

namespace Inference.Chat;

/// <summary>A function the model may call: OpenAI's <c>{"type":"function","function":{…}}</c>.</summary>
public sealed record ChatTool
{
    /// <summary>Creates a tool.</summary>
    /// <param name="name">The function name (letters, digits, '_' and '-').</param>
    /// <param name="description">What it does, for the model; may be null.</param>
    /// <param name="parametersSchema">A JSON Schema of its arguments object, as JSON text; null means no arguments.</param>
    /// <exception cref="ArgumentException">The name is empty or the schema is not JSON.</exception>
    public ChatTool(string name, string? description = null, string? parametersSchema = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        Name = name;
        Description = description;
        ParametersSchema = parametersSchema ?? """{"type":"object","properties":{}}""";
        try { using var _ = JsonDocument.Parse(ParametersSchema); }
        catch (JsonException e) { throw new ArgumentException($"the parameters schema of tool '{name}' is not JSON: {e.Message}", nameof(parametersSchema), e); }
    }

    /// <summary>The function name.</summary>
    public string Name { get; }

    /// <summary>What the function does; null when not given.</summary>
    public string? Description { get; }

    /// <summary>The JSON Schema of the arguments object, as JSON text.</summary>
    public string ParametersSchema { get; }
}

/// <summary>A call of a <see cref="ChatTool"/> the model made: OpenAI's <c>tool_calls[i]</c>.</summary>
/// <param name="Id">The call's id, echoed by the tool result's <see cref="ChatMessage.ToolCallId"/>.</param>
/// <param name="Name">The function name.</param>
/// <param name="Arguments">The arguments, as JSON text (an object).</param>
public sealed record ChatToolCall(string Id, string Name, string Arguments);
