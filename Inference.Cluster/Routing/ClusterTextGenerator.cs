using Inference.Chat;
using Inference.Engine;
using Inference.Sampling;

namespace Inference.Cluster.Routing;

/// <summary>One model of a cluster as an <see cref="ITextGenerator"/> (<see cref="ClusterRouter.ForModel"/>).</summary>
internal sealed class ClusterTextGenerator(ClusterRouter router, string modelId) : ITextGenerator
{
    public string ModelName => modelId;

    public Task<int[]> TokenizeAsync(string prompt, CancellationToken cancellationToken = default) =>
        router.TokenizeAsync(modelId, prompt, cancellationToken);

    public Task<int[]> TokenizeChatAsync(IReadOnlyList<ChatMessage> messages, ChatPromptOptions? prompt = null, CancellationToken cancellationToken = default) =>
        router.TokenizeChatAsync(modelId, messages, prompt, cancellationToken);

    public Task<ChatTemplate?> GetChatTemplateAsync(CancellationToken cancellationToken = default) =>
        router.GetChatTemplateAsync(modelId, cancellationToken);

    public GenerationStream GenerateAsync(IReadOnlyList<int> promptTokens, SamplingOptions? sampling = null, CancellationToken cancellationToken = default) =>
        router.GenerateAsync(modelId, promptTokens, sampling, cancellationToken);
}
