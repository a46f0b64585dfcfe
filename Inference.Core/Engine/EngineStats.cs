using Inference.KvCache;

namespace Inference.Engine;

/// <summary>A snapshot of the engine after its latest step.</summary>
/// <param name="RunningCount">Requests holding KV blocks.</param>
/// <param name="WaitingCount">Requests queued (new or preempted).</param>
/// <param name="PreemptionCount">Preemptions so far.</param>
/// <param name="KvCache">Blocks total / used / cached-free and prefix-cache hits.</param>
public sealed record EngineStats(int RunningCount, int WaitingCount, long PreemptionCount, KvCacheStats KvCache)
{
    /// <summary>Speculative decoding so far (all requests) when <see cref="EngineOptions.Speculative"/> is set; null otherwise.</summary>
    public Speculative.SpeculationMetrics? Speculation { get; init; }

    /// <summary>
    /// The ranks' communication so far when the model runs on several ranks (<see cref="EngineOptions.TensorParallelSize"/>,
    /// <see cref="EngineOptions.PipelineParallelSize"/> or <see cref="EngineOptions.ContextParallelSize"/> above 1); null on one.
    /// </summary>
    public Parallelism.ParallelCommunication? Communication { get; init; }

    internal static EngineStats Empty { get; } = new(0, 0, 0, new KvCacheStats(0, 0, 0, 0, 0));
}
