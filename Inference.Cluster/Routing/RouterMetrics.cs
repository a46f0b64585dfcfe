using System.Diagnostics.Metrics;

namespace Inference.Cluster.Routing;

/// <summary>
/// The router's instruments, on the meter <see cref="MeterName"/>. Tags: <c>model</c>, <c>replica</c> (grain key,
/// <c>silo|model</c>) and, on routed requests, <c>decision</c>: <c>affinity</c> (the prefix's replica), <c>balanced</c>
/// (a prefix's replica existed but was too busy or short of KV blocks), <c>miss</c> (no known prefix: least loaded),
/// <c>round_robin</c> or <c>least_loaded</c> (those policies).
/// </summary>
public sealed class RouterMetrics : IDisposable
{
    /// <summary>The meter's name.</summary>
    public const string MeterName = "Inference.Cluster.Router";

    private readonly Meter _meter;

    internal RouterMetrics(ClusterRouter router)
    {
        _meter = new Meter(MeterName);
        Requests = _meter.CreateCounter<long>("inference.router.requests", "{request}", "Requests sent to a replica (resends included), by decision.");
        Resends = _meter.CreateCounter<long>("inference.router.resends", "{request}", "Requests re-sent after their replica failed or left; tagged with the replica that failed.");
        Failures = _meter.CreateCounter<long>("inference.router.failures", "{request}", "Requests that failed on every replica they were sent to.");
        MatchedBlocks = _meter.CreateHistogram<int>("inference.router.matched_blocks", "{block}", "Leading prompt blocks found in the prefix table per routed request.");
        PromptTokens = _meter.CreateCounter<long>("inference.router.prompt_tokens", "{token}", "Prompt tokens of completed requests.");
        PrefixHitTokens = _meter.CreateCounter<long>("inference.router.prefix_hit_tokens", "{token}", "Of those, tokens the serving replica found in its prefix cache (hit rate = prefix_hit_tokens / prompt_tokens).");
        _meter.CreateObservableGauge("inference.router.in_flight", router.ObserveInFlight, "{request}", "Requests in flight per replica, from this router.");
        _meter.CreateObservableGauge("inference.router.replicas", router.ObserveReplicaCounts, "{replica}", "Live replicas per model.");
    }

    internal Counter<long> Requests { get; }
    internal Counter<long> Resends { get; }
    internal Counter<long> Failures { get; }
    internal Histogram<int> MatchedBlocks { get; }
    internal Counter<long> PromptTokens { get; }
    internal Counter<long> PrefixHitTokens { get; }

    /// <inheritdoc />
    public void Dispose() => _meter.Dispose();
}
