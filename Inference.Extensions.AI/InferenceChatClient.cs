using System.Runtime.CompilerServices;
using System.Text.Json;
using Inference.Chat;
using Inference.Constraints;
using Inference.Engine;
using Inference.Sampling;
using Microsoft.Extensions.AI;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AIChatRole = Microsoft.Extensions.AI.ChatRole;
using ChatMessage = Inference.Chat.ChatMessage;
using ChatRole = Inference.Chat.ChatRole;

namespace Inference.Extensions.AI;

/// <summary>
/// An <see cref="IChatClient"/> over an <see cref="InferenceEngine"/>, or any <see cref="ITextGenerator"/> (for example
/// a cluster of engine replicas): conversations are rendered with the model's chat template (or
/// <see cref="InferenceChatClientOptions.Template"/>) and answered by the engine. Thread-safe; concurrent requests are
/// batched by the engine.
/// </summary>
/// <remarks>
/// <see cref="ChatOptions"/> maps onto <see cref="SamplingOptions"/>: Temperature, TopP, TopK, MaxOutputTokens,
/// StopSequences, Seed, FrequencyPenalty and PresencePenalty; <see cref="ChatOptions.Instructions"/> becomes a leading
/// system message. <see cref="ChatOptions.Tools"/> (function declarations) are rendered by the chat template and
/// <see cref="ChatOptions.ToolMode"/> decides whether the reply is read for calls (auto), not (none) or must be a call
/// (required, or a named function: forced through a grammar); calls come back as <see cref="FunctionCallContent"/> and
/// results go in as <see cref="FunctionResultContent"/>, so <c>FunctionInvokingChatClient</c> can run a tool loop.
/// <see cref="ChatOptions.ResponseFormat"/> JSON (with or without a schema) constrains the output. Text, function
/// calls and function results are sent to the model; other content is ignored. Invalid option values throw <see cref="ArgumentOutOfRangeException"/> naming the sampling option.
/// The client does not own the engine: disposing the client leaves the engine running.
/// </remarks>
/// <example>
/// <code>
/// await using var engine = await InferenceEngine.LoadAsync("model.gguf");
/// IChatClient client = new InferenceChatClient(engine);
/// var response = await client.GetResponseAsync("Hello!");
/// </code>
/// </example>
public sealed class InferenceChatClient : IChatClient
{
    private readonly ITextGenerator _generator;
    private readonly InferenceChatClientOptions _options;
    private readonly ChatPromptOptions _prompt;
    private readonly string _modelId;

    /// <summary>Creates a client over <paramref name="engine"/>.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="engine"/> is null.</exception>
    public InferenceChatClient(InferenceEngine engine, InferenceChatClientOptions? options = null)
        : this((ITextGenerator)engine, options)
    {
    }

    /// <summary>Creates a client over <paramref name="generator"/> (an engine, or a model of an engine cluster).</summary>
    /// <exception cref="ArgumentNullException"><paramref name="generator"/> is null.</exception>
    public InferenceChatClient(ITextGenerator generator, InferenceChatClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(generator);
        _generator = generator;
        _options = options ?? new InferenceChatClientOptions();
        _prompt = new ChatPromptOptions { Template = _options.Template };
        _modelId = _options.ModelId ?? generator.ModelName;
        Metadata = new ChatClientMetadata("inference", providerUri: null, defaultModelId: _modelId);
    }

    /// <summary>Provider name "inference" and the model id.</summary>
    public ChatClientMetadata Metadata { get; }

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AIChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var stream = await Start(messages, options, cancellationToken).ConfigureAwait(false);
        await foreach (var _ in stream.ConfigureAwait(false))
        {
        }
        var completion = await stream.Completion.ConfigureAwait(false);
        var reply = ToolsActive(options) && ToolCalls.TryParse(completion.Text, out var content, out var calls)
            ? new AIChatMessage(AIChatRole.Assistant, CallContents(content, calls))
            : new AIChatMessage(AIChatRole.Assistant, completion.Text);
        return new ChatResponse(reply)
        {
            ResponseId = NewId(),
            ModelId = _modelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = reply.Contents.Any(c => c is FunctionCallContent) ? ChatFinishReason.ToolCalls : MapFinishReason(completion.FinishReason),
            Usage = Usage(completion),
        };
    }

    private static bool ToolsActive(ChatOptions? options) =>
        options?.Tools is { Count: > 0 } tools && tools.Any(t => t is AIFunctionDeclaration) && options.ToolMode is not NoneChatToolMode;

    private static List<AIContent> CallContents(string content, IReadOnlyList<ChatToolCall> calls)
    {
        var contents = new List<AIContent>();
        if (content.Length > 0) contents.Add(new TextContent(content));
        foreach (var call in calls)
        {
            Dictionary<string, object?>? arguments;
            try { arguments = JsonSerializer.Deserialize<Dictionary<string, object?>>(call.Arguments); }
            catch (JsonException) { arguments = null; }
            contents.Add(new FunctionCallContent(call.Id, call.Name, arguments));
        }
        return contents;
    }

    /// <inheritdoc />
    public IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AIChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        // Validate and render eagerly so bad input throws at the call, not at the first MoveNextAsync (a local engine
        // renders synchronously; a remote generator's errors arrive when its task completes).
        var stream = Start(messages, options, cancellationToken);
        return Stream(stream, ToolsActive(options), cancellationToken);
    }

    private async IAsyncEnumerable<ChatResponseUpdate> Stream(Task<GenerationStream> start, bool tools, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var stream = await start.ConfigureAwait(false);
        string responseId = NewId();
        var createdAt = DateTimeOffset.UtcNow;
        await foreach (var token in stream.WithCancellation(cancellationToken).ConfigureAwait(false))
        {
            // NOTE: with tools the reply is held until it ends: whether it is a call is known only then.
            if (token.Text.Length == 0 || tools) continue;
            yield return new ChatResponseUpdate(AIChatRole.Assistant, token.Text)
            {
                ResponseId = responseId,
                MessageId = responseId,
                ModelId = _modelId,
                CreatedAt = createdAt,
            };
        }
        var completion = await stream.Completion.ConfigureAwait(false);
        bool called = false;
        if (tools)
        {
            called = ToolCalls.TryParse(completion.Text, out var content, out var calls);
            var contents = called ? CallContents(content, calls) : [new TextContent(completion.Text)];
            yield return new ChatResponseUpdate(AIChatRole.Assistant, contents) { ResponseId = responseId, MessageId = responseId, ModelId = _modelId, CreatedAt = createdAt };
        }
        yield return new ChatResponseUpdate(AIChatRole.Assistant, [new UsageContent(Usage(completion))])
        {
            ResponseId = responseId,
            MessageId = responseId,
            ModelId = _modelId,
            CreatedAt = createdAt,
            FinishReason = called ? ChatFinishReason.ToolCalls : MapFinishReason(completion.FinishReason),
        };
    }

    private Task<GenerationStream> Start(IEnumerable<AIChatMessage> messages, ChatOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var conversation = new List<ChatMessage>();
        if (!string.IsNullOrEmpty(options?.Instructions)) conversation.Add(ChatMessage.System(options.Instructions));
        foreach (var message in messages)
        {
            ArgumentNullException.ThrowIfNull(message, nameof(messages));
            var calls = new List<ChatToolCall>();
            foreach (var content in message.Contents)
            {
                if (content is FunctionCallContent call)
                    calls.Add(new ChatToolCall(call.CallId, call.Name, JsonSerializer.Serialize(call.Arguments ?? new Dictionary<string, object?>())));
                else if (content is FunctionResultContent result)
                    conversation.Add(ChatMessage.ToolResult(result.CallId, result.Result switch
                    {
                        null => "",
                        string text => text,
                        JsonElement json when json.ValueKind == JsonValueKind.String => json.GetString()!,
                        var other => JsonSerializer.Serialize(other),
                    }));
            }
            if (calls.Count > 0) conversation.Add(ChatMessage.AssistantToolCalls(calls, message.Text));
            else if (!message.Contents.Any(c => c is FunctionResultContent)) conversation.Add(new ChatMessage(MapRole(message.Role), message.Text));
        }
        var sampling = ToSamplingOptions(options, _options.DefaultSampling);
        var prompt = _prompt;
        if (options?.Tools is { Count: > 0 } && ToolsActive(options))
        {
            var tools = new List<ChatTool>();
            foreach (var tool in options.Tools)
                if (tool is AIFunctionDeclaration f) tools.Add(new ChatTool(f.Name, f.Description, f.JsonSchema.GetRawText()));
            prompt = _prompt with { Tools = tools };
            if (options.ToolMode is RequiredChatToolMode required)
                return GenerateCall(conversation, prompt, sampling, tools, required.RequiredFunctionName, cancellationToken);
        }
        return Generate(_generator.TokenizeChatAsync(conversation, prompt, cancellationToken), sampling, cancellationToken);
    }

    // A required call is forced through a grammar in the template's tool-call format.
    private Task<GenerationStream> GenerateCall(List<ChatMessage> conversation, ChatPromptOptions prompt, SamplingOptions sampling, List<ChatTool> tools, string? name, CancellationToken cancellationToken)
    {
        var template = _options.Template is { } own ? Task.FromResult<ChatTemplate?>(own) : _generator.GetChatTemplateAsync(cancellationToken);
        if (template.IsCompletedSuccessfully)
            return Generate(_generator.TokenizeChatAsync(conversation, prompt, cancellationToken), WithCall(template.Result), cancellationToken);
        return Later();

        SamplingOptions WithCall(ChatTemplate? t) => sampling with { Constraint = ToolCalls.RequiredCallConstraint(tools, name, ToolCalls.DetectFormat(t?.Source)) };

        async Task<GenerationStream> Later()
        {
            var t = await template.ConfigureAwait(false);
            return await Generate(_generator.TokenizeChatAsync(conversation, prompt, cancellationToken), WithCall(t), cancellationToken).ConfigureAwait(false);
        }
    }

    // NOTE: a local engine tokenizes synchronously, so its prompt errors (too long for the context...) still throw at the call.
    private Task<GenerationStream> Generate(Task<int[]> prompt, SamplingOptions sampling, CancellationToken cancellationToken) =>
        prompt.IsCompletedSuccessfully
            ? Task.FromResult(_generator.GenerateAsync(prompt.Result, sampling, cancellationToken))
            : GenerateLater(prompt, sampling, cancellationToken);

    private async Task<GenerationStream> GenerateLater(Task<int[]> prompt, SamplingOptions sampling, CancellationToken cancellationToken) =>
        _generator.GenerateAsync(await prompt.ConfigureAwait(false), sampling, cancellationToken);

    /// <summary>
    /// The sampling options a request runs with: <paramref name="defaults"/> overridden by whatever
    /// <paramref name="options"/> sets.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is outside the range <see cref="SamplingOptions"/> accepts.</exception>
    public static SamplingOptions ToSamplingOptions(ChatOptions? options, SamplingOptions defaults)
    {
        ArgumentNullException.ThrowIfNull(defaults);
        if (options is null) return defaults;
        var s = defaults;
        if (options.Temperature is float temperature) s = s with { Temperature = temperature };
        if (options.TopP is float topP) s = s with { TopP = topP };
        if (options.TopK is int topK) s = s with { TopK = topK };
        if (options.MaxOutputTokens is int maxTokens) s = s with { MaxTokens = maxTokens };
        if (options.StopSequences is { Count: > 0 } stops) s = s with { StopStrings = stops.ToArray() };
        if (options.Seed is long seed) s = s with { Seed = unchecked((ulong)seed) };
        if (options.FrequencyPenalty is float frequency) s = s with { FrequencyPenalty = frequency };
        if (options.PresencePenalty is float presence) s = s with { PresencePenalty = presence };
        if (options.ResponseFormat is ChatResponseFormatJson json)
            s = s with { Constraint = json.Schema is JsonElement schema ? new JsonSchemaConstraint(schema.GetRawText()) : JsonObjectConstraint.Instance };
        return s;
    }

    private static ChatRole MapRole(AIChatRole role)
    {
        if (role == AIChatRole.System) return ChatRole.System;
        if (role == AIChatRole.User) return ChatRole.User;
        if (role == AIChatRole.Assistant) return ChatRole.Assistant;
        if (role == AIChatRole.Tool) return ChatRole.Tool;
        throw new ArgumentException($"unsupported chat role '{role.Value}'", "messages");
    }

    private static ChatFinishReason MapFinishReason(FinishReason reason) =>
        reason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    private static UsageDetails Usage(Completion completion) => new()
    {
        InputTokenCount = completion.Metrics.PromptTokens,
        OutputTokenCount = completion.Metrics.GeneratedTokens,
        TotalTokenCount = completion.Metrics.PromptTokens + completion.Metrics.GeneratedTokens,
        CachedInputTokenCount = completion.Metrics.PrefixHitTokens,
    };

    private static string NewId() => "chatcmpl-" + Guid.NewGuid().ToString("N");

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return Metadata;
        if (serviceType == typeof(InferenceEngine)) return _generator as InferenceEngine;
        if (serviceType == typeof(ITextGenerator)) return _generator;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Does nothing: the engine (or generator) belongs to the caller.</summary>
    public void Dispose()
    {
    }
}
