using Inference.Cluster.Replicas;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Orleans.Hosting;

/// <summary>Silo configuration for Inference engine replicas.</summary>
public static class ReplicaSiloBuilderExtensions
{
    /// <summary>
    /// Makes this silo host one engine replica of each configured model. Every silo of the cluster must call it (with
    /// no models on silos that host none), so that all of them can place replica grains.
    /// </summary>
    public static ISiloBuilder AddInferenceReplicas(this ISiloBuilder builder, Action<ReplicaHostOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        builder.Services.Configure(configure);
        if (builder.Services.Any(d => d.ServiceType == typeof(ReplicaEngines))) return builder;
        builder.Services.AddSingleton<ReplicaEngines>();
        builder.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(sp => sp.GetRequiredService<ReplicaEngines>());
        builder.Services.AddPlacementDirector<SiloBoundPlacement, SiloBoundPlacementDirector>();
        return builder;
    }
}
