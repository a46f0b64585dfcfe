using System.Diagnostics.Metrics;

namespace Inference.Server;

/// <summary>The server's own instruments, in the meter <see cref="MeterName"/>; exported on <c>/metrics</c> beside the engine's <c>Inference</c> meter.</summary>
public sealed class ServerMetrics : IDisposable
{
    /// <summary>The meter of the server's instruments.</summary>
    public const string MeterName = "Inference.Server";

    /// <summary>The meter the engine reports on.</summary>
    public const string EngineMeterName = "Inference";

    private readonly Meter _meter;

    /// <summary>Creates the instruments through <paramref name="meterFactory"/>.</summary>
    public ServerMetrics(IMeterFactory meterFactory)
    {
        _meter = meterFactory.Create(MeterName);
        Requests = _meter.CreateCounter<long>("inference.server.requests", "{request}", "HTTP API requests by endpoint and status");
        PromptTokens = _meter.CreateCounter<long>("inference.server.prompt_tokens", "{token}", "Prompt tokens processed");
        CompletionTokens = _meter.CreateCounter<long>("inference.server.completion_tokens", "{token}", "Tokens generated");
        // NOTE: the default buckets suit milliseconds; requests take from milliseconds to minutes, in seconds.
        RequestDuration = _meter.CreateHistogram<double>("inference.server.request.duration", "s", "Time to answer a request", tags: null,
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250] });
    }

    /// <summary>Requests by <c>endpoint</c> and <c>status</c>.</summary>
    public Counter<long> Requests { get; }

    /// <summary>Prompt tokens.</summary>
    public Counter<long> PromptTokens { get; }

    /// <summary>Generated tokens.</summary>
    public Counter<long> CompletionTokens { get; }

    /// <summary>Request latency in seconds.</summary>
    public Histogram<double> RequestDuration { get; }

    /// <inheritdoc />
    public void Dispose() => _meter.Dispose();
}
