using System.Diagnostics;
using System.Diagnostics.Metrics;
using Inference.Diagnostics;

namespace Inference.Engine;

/// <summary>
/// The engine's instruments on <see cref="InferenceMeter.Meter"/>: queue time, TTFT, TPOT and end-to-end latency per
/// request, tokens per step, running and waiting counts, preemptions. The engine thread records; collectors read.
/// </summary>
internal sealed class EngineMetrics : IDisposable
{
    private static readonly Histogram<double> QueueTime = InferenceMeter.Meter.CreateHistogram<double>("inference.request.queue_time", "s", "From submission to the first step that included the request.");
    private static readonly Histogram<double> TimeToFirstToken = InferenceMeter.Meter.CreateHistogram<double>("inference.request.time_to_first_token", "s", "TTFT: from submission to the first token.");
    private static readonly Histogram<double> TimePerOutputToken = InferenceMeter.Meter.CreateHistogram<double>("inference.request.time_per_output_token", "s", "TPOT: mean time between later tokens.");
    private static readonly Histogram<double> Latency = InferenceMeter.Meter.CreateHistogram<double>("inference.request.latency", "s", "From submission to the last token.");
    private static readonly Counter<long> OutputTokens = InferenceMeter.Meter.CreateCounter<long>("inference.request.output_tokens", "{token}", "Generated tokens.");
    private static readonly Counter<long> Requests = InferenceMeter.Meter.CreateCounter<long>("inference.requests", "{request}", "Requests finished, by finish reason.");
    private static readonly Histogram<int> TokensPerStep = InferenceMeter.Meter.CreateHistogram<int>("inference.step.tokens", "{token}", "Tokens computed in one forward pass.");
    private static readonly Counter<long> Drafts = InferenceMeter.Meter.CreateCounter<long>("inference.spec_decode.drafts", "{step}", "Speculative verification steps (one per request and step that checked proposed tokens).");
    private static readonly Counter<long> DraftTokens = InferenceMeter.Meter.CreateCounter<long>("inference.spec_decode.draft_tokens", "{token}", "Proposed tokens verified.");
    private static readonly Counter<long> AcceptedTokens = InferenceMeter.Meter.CreateCounter<long>("inference.spec_decode.accepted_tokens", "{token}", "Proposed tokens accepted.");
    private static readonly Counter<long> Preemptions = InferenceMeter.Meter.CreateCounter<long>("inference.scheduler.preemptions", "{request}", "Requests preempted for want of KV blocks.");

    // NOTE: the gauges are created once per process and sum over the live engines; an engine leaves the list when
    // disposed, so loading many engines does not pile up instruments on the shared meter.
    private static readonly Lock Gate = new();
    private static readonly List<EngineLoop> Loops = [];

    static EngineMetrics()
    {
        InferenceMeter.Meter.CreateObservableGauge("inference.scheduler.running", () => Sum(static l => l.Stats.RunningCount), "{request}", "Requests running.");
        InferenceMeter.Meter.CreateObservableGauge("inference.scheduler.waiting", () => Sum(static l => l.Stats.WaitingCount), "{request}", "Requests waiting.");
    }

    private readonly EngineLoop _loop;

    public EngineMetrics(EngineLoop loop)
    {
        _loop = loop;
        lock (Gate) Loops.Add(loop);
    }

    private static int Sum(Func<EngineLoop, int> value)
    {
        int total = 0;
        lock (Gate)
            foreach (var l in Loops) total += value(l);
        return total;
    }

    public void StepExecuted(int tokens, int preempted)
    {
        TokensPerStep.Record(tokens);
        if (preempted > 0) Preemptions.Add(preempted);
    }

    public void Verified(int proposed, int accepted)
    {
        Drafts.Add(1);
        DraftTokens.Add(proposed);
        AcceptedTokens.Add(accepted);
    }

    public void RequestFinished(GenerationRequest r)
    {
        var reason = new KeyValuePair<string, object?>("finish_reason", r.Completion.Task.IsCompletedSuccessfully ? r.Completion.Task.Result.FinishReason.ToString() : "Cancelled");
        Requests.Add(1, reason);
        OutputTokens.Add(r.GeneratedCount);
        if (r.FirstScheduled != 0) QueueTime.Record(Stopwatch.GetElapsedTime(r.Submitted, r.FirstScheduled).TotalSeconds);
        if (!r.Completion.Task.IsCompletedSuccessfully) return;
        var m = r.Completion.Task.Result.Metrics;
        if (m.GeneratedTokens == 0) return;
        TimeToFirstToken.Record(m.TimeToFirstToken.TotalSeconds);
        if (m.GeneratedTokens > 1) TimePerOutputToken.Record(m.TimePerOutputToken.TotalSeconds);
        Latency.Record(m.Latency.TotalSeconds);
    }

    public void Dispose()
    {
        lock (Gate) Loops.Remove(_loop);
    }
}
