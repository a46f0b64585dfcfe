using Inference.Engine;
using Microsoft.Extensions.Options;

namespace Inference.Cluster.Replicas;

/// <summary>One model a silo hosts a replica of.</summary>
public sealed record ReplicaModel
{
    /// <summary>Creates a model entry; <paramref name="load"/> creates the engine (called once, when the silo starts).</summary>
    /// <exception cref="ArgumentException"><paramref name="modelId"/> is empty or contains '|'.</exception>
    public ReplicaModel(string modelId, Func<CancellationToken, Task<InferenceEngine>> load)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelId);
        ArgumentNullException.ThrowIfNull(load);
        if (modelId.Contains('|', StringComparison.Ordinal)) throw new ArgumentException($"model id '{modelId}' must not contain '|'", nameof(modelId));
        ModelId = modelId;
        Load = load;
    }

    /// <summary>The id requests use to reach it.</summary>
    public string ModelId { get; }

    /// <summary>Creates the engine.</summary>
    public Func<CancellationToken, Task<InferenceEngine>> Load { get; }
}

/// <summary>The models a silo hosts replicas of (<see cref="ReplicaSiloBuilderExtensions.AddInferenceReplicas"/>).</summary>
public sealed class ReplicaHostOptions
{
    /// <summary>The models; each gets one engine on this silo.</summary>
    public List<ReplicaModel> Models { get; } = [];

    /// <summary>Hosts <paramref name="path"/> (GGUF file or Hugging Face folder) as <paramref name="modelId"/>.</summary>
    public ReplicaHostOptions AddModel(string modelId, string path, EngineOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        Models.Add(new ReplicaModel(modelId, ct => InferenceEngine.LoadAsync(path, options, progress: null, ct)));
        return this;
    }
}

/// <summary>
/// The engines of one silo: loaded while the silo starts (before it joins the cluster as active), disposed after its
/// grains have stopped.
/// </summary>
internal sealed class ReplicaEngines(IOptions<ReplicaHostOptions> options) : ILifecycleParticipant<ISiloLifecycle>
{
    private readonly Dictionary<string, InferenceEngine> _engines = new(StringComparer.Ordinal);
    private readonly TaskCompletionSource _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(ReplicaEngines), ServiceLifecycleStage.ApplicationServices, LoadAsync, DisposeAsync);

    public async Task<InferenceEngine> GetAsync(string modelId)
    {
        await _loaded.Task.ConfigureAwait(false);
        return _engines.TryGetValue(modelId, out var engine) ? engine
            : throw new ArgumentException($"this silo hosts no replica of model '{modelId}'", nameof(modelId));
    }

    public async Task<IReadOnlyCollection<string>> GetModelIdsAsync()
    {
        await _loaded.Task.ConfigureAwait(false);
        return _engines.Keys;
    }

    private async Task LoadAsync(CancellationToken cancellationToken)
    {
        try
        {
            foreach (var model in options.Value.Models)
            {
                if (_engines.ContainsKey(model.ModelId)) throw new ArgumentException($"model id '{model.ModelId}' is hosted twice on one silo");
                _engines.Add(model.ModelId, await model.Load(cancellationToken).ConfigureAwait(false));
            }
            _loaded.TrySetResult();
        }
        catch (Exception e)
        {
            _loaded.TrySetException(e);
            throw;
        }
    }

    private async Task DisposeAsync(CancellationToken cancellationToken)
    {
        _loaded.TrySetException(new ObjectDisposedException(nameof(ReplicaEngines)));
        foreach (var engine in _engines.Values) await engine.DisposeAsync().ConfigureAwait(false);
        _engines.Clear();
    }
}
