using System.Diagnostics.Metrics;

namespace Inference.Diagnostics;

/// <summary>
/// The one <see cref="Meter"/> of the engine, named <c>"Inference"</c>. Listen to it with
/// <c>dotnet-counters monitor --counters Inference</c> or an OpenTelemetry <c>AddMeter("Inference")</c>.
/// </summary>
public static class InferenceMeter
{
    /// <summary>The meter name: <c>"Inference"</c>.</summary>
    public const string Name = "Inference";

    /// <summary>The shared meter; every instrument of the engine is created on it once.</summary>
    public static Meter Meter { get; } = new(Name, typeof(InferenceMeter).Assembly.GetName().Version?.ToString());
}
