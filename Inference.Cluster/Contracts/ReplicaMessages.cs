using Inference.Constraints;
using Inference.Engine;
using Inference.Sampling;

namespace Inference.Cluster.Contracts;

/// <summary>What a router needs to know about one engine replica to route to it.</summary>
[GenerateSerializer, Immutable]
public sealed record ReplicaDescriptor
{
    /// <summary>The replica's grain key: <c>silo|model</c>.</summary>
    [Id(0)] public required string ReplicaId { get; init; }

    /// <summary>The model id requests name to reach this replica.</summary>
    [Id(1)] public required string ModelId { get; init; }

    /// <summary>The silo that hosts it (<c>SiloAddress.ToParsableString()</c>).</summary>
    [Id(2)] public required string Silo { get; init; }

    /// <summary>The salt of its KV block hashes (<see cref="InferenceEngine.PrefixSalt"/>).</summary>
    [Id(3)] public long PrefixSalt { get; init; }

    /// <summary>Tokens per KV block.</summary>
    [Id(4)] public int BlockSize { get; init; }

    /// <summary>Most requests in one forward pass (<see cref="EngineOptions.MaxNumSeqs"/>).</summary>
    [Id(5)] public int MaxNumSeqs { get; init; }

    /// <summary>Most tokens of one sequence.</summary>
    [Id(6)] public int ContextLength { get; init; }

    /// <summary>The source of the model's chat template; null when it has none (or it does not parse).</summary>
    [Id(7)] public string? ChatTemplateSource { get; init; }
}

/// <summary>A replica's load after its engine's latest step.</summary>
[GenerateSerializer, Immutable]
public sealed record ReplicaLoad
{
    /// <summary>Requests holding KV blocks.</summary>
    [Id(0)] public int RunningCount { get; init; }

    /// <summary>Requests queued (new or preempted).</summary>
    [Id(1)] public int WaitingCount { get; init; }

    /// <summary>KV blocks in the pool.</summary>
    [Id(2)] public int TotalBlockCount { get; init; }

    /// <summary>KV blocks no sequence references (cached or empty).</summary>
    [Id(3)] public int FreeBlockCount { get; init; }

    /// <summary>Prompt tokens looked up in the prefix cache so far.</summary>
    [Id(4)] public long PrefixQueriedTokenCount { get; init; }

    /// <summary>Of those, tokens found cached.</summary>
    [Id(5)] public long PrefixHitTokenCount { get; init; }

    internal static ReplicaLoad From(EngineStats stats) => new()
    {
        RunningCount = stats.RunningCount,
        WaitingCount = stats.WaitingCount,
        TotalBlockCount = stats.KvCache.TotalBlockCount,
        FreeBlockCount = stats.KvCache.FreeBlockCount,
        PrefixQueriedTokenCount = stats.KvCache.PrefixQueriedTokenCount,
        PrefixHitTokenCount = stats.KvCache.PrefixHitTokenCount,
    };
}

/// <summary>One item of a replica's token stream: a token, or (last) the request's result.</summary>
[GenerateSerializer, Immutable]
public sealed record ReplicaEvent
{
    /// <summary>The token id (of a token event).</summary>
    [Id(0)] public int TokenId { get; init; }

    /// <summary>The text the token completes (of a token event).</summary>
    [Id(1)] public string Text { get; init; } = "";

    /// <summary>The result; set on the last event only.</summary>
    [Id(2)] public ReplicaCompletion? Completion { get; init; }
}

/// <summary>A <see cref="Engine.Completion"/> on the wire, with the replica that produced it.</summary>
[GenerateSerializer, Immutable]
public sealed record ReplicaCompletion
{
    /// <summary>The replica that produced it.</summary>
    [Id(0)] public required string ReplicaId { get; init; }
    /// <summary>The generated text.</summary>
    [Id(1)] public required string Text { get; init; }
    /// <summary>The generated token ids.</summary>
    [Id(2)] public required int[] TokenIds { get; init; }
    /// <summary>The prompt as the replica ran it.</summary>
    [Id(3)] public required int[] PromptTokenIds { get; init; }
    /// <summary>Why generation ended.</summary>
    [Id(4)] public FinishReason FinishReason { get; init; }
    /// <summary>The sampling seed.</summary>
    [Id(5)] public ulong Seed { get; init; }
    /// <summary>Queue time, TTFT, TPOT, latency (ticks of <see cref="TimeSpan"/>).</summary>
    [Id(6)] public required long[] TimingTicks { get; init; }
    /// <summary>Prompt tokens whose KV came from the replica's prefix cache.</summary>
    [Id(7)] public int PrefixHitTokens { get; init; }

    internal static ReplicaCompletion From(Completion c, string replicaId) => new()
    {
        ReplicaId = replicaId,
        Text = c.Text,
        TokenIds = [.. c.TokenIds],
        PromptTokenIds = [.. c.PromptTokenIds],
        FinishReason = c.FinishReason,
        Seed = c.Seed,
        TimingTicks = [c.Metrics.QueueTime.Ticks, c.Metrics.TimeToFirstToken.Ticks, c.Metrics.TimePerOutputToken.Ticks, c.Metrics.Latency.Ticks],
        PrefixHitTokens = c.Metrics.PrefixHitTokens,
    };

    internal Completion ToCompletion() => new(Text, TokenIds, PromptTokenIds, FinishReason, Seed, new GenerationMetrics(
        PromptTokenIds.Length, TokenIds.Length, new TimeSpan(TimingTicks[0]), new TimeSpan(TimingTicks[1]),
        new TimeSpan(TimingTicks[2]), new TimeSpan(TimingTicks[3]), PrefixHitTokens));
}

/// <summary>One chat message on the wire (<see cref="Chat.ChatMessage"/>).</summary>
[GenerateSerializer, Immutable]
public sealed record ChatTurn
{
    /// <summary>The role.</summary>
    [Id(0)] public Chat.ChatRole Role { get; init; }
    /// <summary>The message text.</summary>
    [Id(1)] public string Content { get; init; } = "";
    /// <summary>The tool calls of an assistant message.</summary>
    [Id(2)] public ToolCallWire[] ToolCalls { get; init; } = [];
    /// <summary>The call a tool result answers.</summary>
    [Id(3)] public string? ToolCallId { get; init; }

    internal static ChatTurn From(Chat.ChatMessage m)
    {
        var calls = new ToolCallWire[m.ToolCalls.Count];
        for (int i = 0; i < calls.Length; i++) calls[i] = new ToolCallWire(m.ToolCalls[i].Id, m.ToolCalls[i].Name, m.ToolCalls[i].Arguments);
        return new ChatTurn { Role = m.Role, Content = m.Content, ToolCalls = calls, ToolCallId = m.ToolCallId };
    }

    internal Chat.ChatMessage ToMessage()
    {
        var calls = new Chat.ChatToolCall[ToolCalls.Length];
        for (int i = 0; i < calls.Length; i++) calls[i] = new Chat.ChatToolCall(ToolCalls[i].Id, ToolCalls[i].Name, ToolCalls[i].Arguments);
        return new Chat.ChatMessage(Role, Content) { ToolCalls = calls, ToolCallId = ToolCallId };
    }
}

/// <summary>A <see cref="Chat.ChatToolCall"/> on the wire.</summary>
/// <param name="Id">The call's id.</param>
/// <param name="Name">The function name.</param>
/// <param name="Arguments">The arguments, as JSON text.</param>
[GenerateSerializer, Immutable]
public sealed record ToolCallWire([property: Id(0)] string Id, [property: Id(1)] string Name, [property: Id(2)] string Arguments);

/// <summary>A <see cref="Chat.ChatTool"/> on the wire.</summary>
/// <param name="Name">The function name.</param>
/// <param name="Description">What it does.</param>
/// <param name="ParametersSchema">The JSON Schema of its arguments.</param>
[GenerateSerializer, Immutable]
public sealed record ToolWire([property: Id(0)] string Name, [property: Id(1)] string? Description, [property: Id(2)] string ParametersSchema);

/// <summary>
/// The wire form of a <see cref="Constraint"/>: its kind and its source text (schema, grammar, pattern or choices). The
/// replica compiles it again on arrival, so a constraint crosses the wire as its text, never as a compiled grammar.
/// </summary>
[GenerateSerializer, Immutable]
public struct ConstraintSurrogate
{
    [Id(0)] internal ConstraintKind Kind;
    [Id(1)] internal string? Text;
    [Id(2)] internal string[]? Choices;

    /// <exception cref="InvalidConstraintException">The text does not compile (checked again on arrival).</exception>
    internal readonly Constraint ToConstraint() => Kind switch
    {
        ConstraintKind.JsonSchema => new JsonSchemaConstraint(Text ?? ""),
        ConstraintKind.JsonObject => JsonObjectConstraint.Instance,
        ConstraintKind.Grammar => new GrammarConstraint(Text ?? ""),
        ConstraintKind.Regex => new RegexConstraint(Text ?? ""),
        ConstraintKind.Choice => new ChoiceConstraint(Choices ?? []),
        _ => throw new InvalidConstraintException($"unknown constraint kind {(int)Kind}"),
    };

    internal static ConstraintSurrogate From(Constraint value) => value switch
    {
        JsonSchemaConstraint c => new ConstraintSurrogate { Kind = ConstraintKind.JsonSchema, Text = c.Schema },
        JsonObjectConstraint => new ConstraintSurrogate { Kind = ConstraintKind.JsonObject },
        GrammarConstraint c => new ConstraintSurrogate { Kind = ConstraintKind.Grammar, Text = c.Gbnf },
        RegexConstraint c => new ConstraintSurrogate { Kind = ConstraintKind.Regex, Text = c.Pattern },
        ChoiceConstraint c => new ConstraintSurrogate { Kind = ConstraintKind.Choice, Choices = [.. c.Choices] },
        _ => throw new NotSupportedException($"constraint {value.GetType().Name} cannot be sent to a cluster replica"),
    };
}

/// <summary>The kinds of <see cref="Constraint"/>.</summary>
public enum ConstraintKind
{
    /// <summary><see cref="JsonSchemaConstraint"/>.</summary>
    JsonSchema,
    /// <summary><see cref="JsonObjectConstraint"/>.</summary>
    JsonObject,
    /// <summary><see cref="GrammarConstraint"/>.</summary>
    Grammar,
    /// <summary><see cref="RegexConstraint"/>.</summary>
    Regex,
    /// <summary><see cref="ChoiceConstraint"/>.</summary>
    Choice,
}

/// <summary>The wire form of <see cref="SamplingOptions"/>.</summary>
[GenerateSerializer, Immutable]
public struct SamplingOptionsSurrogate
{
    [Id(0)] internal float Temperature;
    [Id(1)] internal int TopK;
    [Id(2)] internal float TopP;
    [Id(3)] internal float MinP;
    [Id(4)] internal float RepetitionPenalty;
    [Id(5)] internal float FrequencyPenalty;
    [Id(6)] internal float PresencePenalty;
    [Id(7)] internal int PenaltyLastN;
    [Id(8)] internal ulong? Seed;
    [Id(9)] internal int MaxTokens;
    [Id(10)] internal string[] StopStrings;
    [Id(11)] internal EndOfSequenceHandling EndOfSequence;
    [Id(12)] internal int? Logprobs;
    [Id(13)] internal int? PromptLogprobs;
    [Id(14)] internal ConstraintSurrogate? Constraint;
}

/// <summary>Converts <see cref="SamplingOptions"/> to and from its wire form (validated again on arrival).</summary>
[RegisterConverter]
public sealed class SamplingOptionsConverter : IConverter<SamplingOptions, SamplingOptionsSurrogate>
{
    /// <inheritdoc />
    public SamplingOptions ConvertFromSurrogate(in SamplingOptionsSurrogate s) => new()
    {
        Temperature = s.Temperature,
        TopK = s.TopK,
        TopP = s.TopP,
        MinP = s.MinP,
        RepetitionPenalty = s.RepetitionPenalty,
        FrequencyPenalty = s.FrequencyPenalty,
        PresencePenalty = s.PresencePenalty,
        PenaltyLastN = s.PenaltyLastN,
        Seed = s.Seed,
        MaxTokens = s.MaxTokens,
        StopStrings = s.StopStrings ?? [],
        EndOfSequence = s.EndOfSequence,
        Logprobs = s.Logprobs,
        PromptLogprobs = s.PromptLogprobs,
        Constraint = s.Constraint?.ToConstraint(),
    };

    /// <inheritdoc />
    public SamplingOptionsSurrogate ConvertToSurrogate(in SamplingOptions value) => new()
    {
        Temperature = value.Temperature,
        TopK = value.TopK,
        TopP = value.TopP,
        MinP = value.MinP,
        RepetitionPenalty = value.RepetitionPenalty,
        FrequencyPenalty = value.FrequencyPenalty,
        PresencePenalty = value.PresencePenalty,
        PenaltyLastN = value.PenaltyLastN,
        Seed = value.Seed,
        MaxTokens = value.MaxTokens,
        StopStrings = [.. value.StopStrings],
        EndOfSequence = value.EndOfSequence,
        Logprobs = value.Logprobs,
        PromptLogprobs = value.PromptLogprobs,
        Constraint = value.Constraint is { } c ? ConstraintSurrogate.From(c) : null,
    };
}
