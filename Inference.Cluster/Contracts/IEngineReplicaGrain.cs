using Inference.Sampling;

namespace Inference.Cluster.Contracts;

/// <summary>
/// One engine replica: a model loaded on one silo, with its own KV cache. Its key is <c>silo|model</c> and it
/// activates only on that silo (<see cref="Replicas.SiloBoundPlacementAttribute"/>); a call after the silo died fails
/// instead of activating the replica elsewhere.
/// </summary>
public interface IEngineReplicaGrain : IGrainWithStringKey
{
    /// <summary>The replica's model id, block-hash salt and limits.</summary>
    Task<ReplicaDescriptor> DescribeAsync();

    /// <summary>Running and waiting requests and free KV blocks after the engine's latest step.</summary>
    Task<ReplicaLoad> GetLoadAsync();

    /// <summary>Tokenizes a prompt (BOS as the model says).</summary>
    Task<int[]> TokenizeAsync(string prompt);

    /// <summary>
    /// Renders a conversation with the model's chat template (or <paramref name="templateSource"/>), offering
    /// <paramref name="tools"/>, and tokenizes it.
    /// </summary>
    Task<int[]> TokenizeChatAsync(ChatTurn[] messages, string? templateSource, ToolWire[] tools);

    /// <summary>
    /// Streams the continuation of <paramref name="promptTokens"/>: token events, then one event with the completion.
    /// Cancelling, or disposing the enumerator, ends the request on the replica and frees its KV blocks.
    /// </summary>
    IAsyncEnumerable<ReplicaEvent> GenerateAsync(int[] promptTokens, SamplingOptions sampling, CancellationToken cancellationToken = default);
}

/// <summary>The replicas one silo hosts. Key: the silo's address (<c>SiloAddress.ToParsableString()</c>).</summary>
public interface ISiloReplicasGrain : IGrainWithStringKey
{
    /// <summary>Describes every replica on the silo (loading their engines first if needed).</summary>
    Task<ReplicaDescriptor[]> ListAsync();
}
