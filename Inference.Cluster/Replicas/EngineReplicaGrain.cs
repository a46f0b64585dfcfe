using System.Runtime.CompilerServices;
using Inference.Chat;
using Inference.Cluster.Contracts;
using Inference.Sampling;
using Orleans.Concurrency;

namespace Inference.Cluster.Replicas;

/// <summary>An engine replica: forwards to the silo's engine for its model. Reentrant: the engine batches concurrent requests.</summary>
[SiloBoundPlacement, Reentrant]
internal sealed class EngineReplicaGrain(ReplicaEngines engines) : Grain, IEngineReplicaGrain
{
    private string ReplicaId => this.GetPrimaryKeyString();

    private Task<Engine.InferenceEngine> EngineAsync() => engines.GetAsync(ReplicaKey.ModelOf(ReplicaId));

    public async Task<ReplicaDescriptor> DescribeAsync()
    {
        var engine = await EngineAsync();
        return new ReplicaDescriptor
        {
            ReplicaId = ReplicaId,
            ModelId = ReplicaKey.ModelOf(ReplicaId),
            Silo = ReplicaKey.SiloOf(ReplicaId).ToParsableString(),
            PrefixSalt = engine.PrefixSalt,
            BlockSize = engine.Options.KvCache.BlockSize,
            MaxNumSeqs = engine.Options.MaxNumSeqs,
            ContextLength = engine.ContextLength,
            ChatTemplateSource = TemplateSource(engine),
        };
    }

    private static string? TemplateSource(Engine.InferenceEngine engine)
    {
        try
        {
            return engine.ChatTemplate?.Source;
        }
        catch (ChatTemplateException)
        {
            return null; // NOTE: rendering on this replica fails with the parse error; the router just learns no format.
        }
    }

    public async Task<ReplicaLoad> GetLoadAsync() => ReplicaLoad.From(await (await EngineAsync()).GetStatsAsync());

    public async Task<int[]> TokenizeAsync(string prompt) => (await EngineAsync()).Tokenize(prompt);

    public async Task<int[]> TokenizeChatAsync(ChatTurn[] messages, string? templateSource, ToolWire[] tools)
    {
        ArgumentNullException.ThrowIfNull(messages);
        ArgumentNullException.ThrowIfNull(tools);
        var engine = await EngineAsync();
        var conversation = new ChatMessage[messages.Length];
        for (int i = 0; i < messages.Length; i++) conversation[i] = messages[i].ToMessage();
        var offered = new ChatTool[tools.Length];
        for (int i = 0; i < tools.Length; i++) offered[i] = new ChatTool(tools[i].Name, tools[i].Description, tools[i].ParametersSchema);
        var prompt = new ChatPromptOptions { Template = templateSource is null ? null : ChatTemplate.Parse(templateSource), Tools = offered };
        return engine.TokenizeChat(conversation, prompt);
    }

    public async IAsyncEnumerable<ReplicaEvent> GenerateAsync(int[] promptTokens, SamplingOptions sampling, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var engine = await EngineAsync();
        var stream = engine.GenerateAsync(promptTokens, sampling, cancellationToken);
        await foreach (var token in stream.WithCancellation(cancellationToken))
            yield return new ReplicaEvent { TokenId = token.TokenId, Text = token.Text };
        var completion = await stream.Completion;
        yield return new ReplicaEvent { Completion = ReplicaCompletion.From(completion, ReplicaId) };
    }
}

/// <summary>Lists the replicas of its silo.</summary>
[SiloBoundPlacement]
internal sealed class SiloReplicasGrain(ReplicaEngines engines) : Grain, ISiloReplicasGrain
{
    public async Task<ReplicaDescriptor[]> ListAsync()
    {
        var silo = SiloAddress.FromParsableString(this.GetPrimaryKeyString());
        var models = await engines.GetModelIdsAsync();
        var result = new List<ReplicaDescriptor>(models.Count);
        foreach (var model in models)
            result.Add(await GrainFactory.GetGrain<IEngineReplicaGrain>(ReplicaKey.Create(silo, model)).DescribeAsync());
        return [.. result];
    }
}
