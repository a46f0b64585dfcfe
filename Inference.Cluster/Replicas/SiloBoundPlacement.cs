using Orleans.Placement;
using Orleans.Runtime.Placement;

namespace Inference.Cluster.Replicas;

/// <summary>
/// Places a grain on the silo its key names: the key is a silo address (<c>SiloAddress.ToParsableString()</c>),
/// optionally followed by <c>|</c> and more. A replica lives where its engine was loaded, and nowhere else.
/// </summary>
[GenerateSerializer, Immutable]
public sealed class SiloBoundPlacement : PlacementStrategy
{
    internal static SiloBoundPlacement Instance { get; } = new();
}

/// <summary>Marks a grain class for <see cref="SiloBoundPlacement"/>.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class SiloBoundPlacementAttribute : PlacementAttribute
{
    /// <summary>Creates the attribute.</summary>
    public SiloBoundPlacementAttribute() : base(SiloBoundPlacement.Instance)
    {
    }
}

/// <summary>Finds the silo a <see cref="SiloBoundPlacement"/> grain's key names; fails when it is not an active member.</summary>
internal sealed class SiloBoundPlacementDirector : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        string key = target.GrainIdentity.Key.ToString()!;
        var silo = ReplicaKey.SiloOf(key);
        foreach (var candidate in context.GetCompatibleSilos(target))
            if (candidate.Equals(silo)) return Task.FromResult(candidate);
        throw new SiloUnavailableException($"silo {silo} of '{key}' is not an active cluster member");
    }
}

/// <summary>Replica grain keys: <c>silo|model</c>.</summary>
internal static class ReplicaKey
{
    public static string Create(SiloAddress silo, string modelId) => silo.ToParsableString() + "|" + modelId;

    public static SiloAddress SiloOf(string key)
    {
        int bar = key.IndexOf('|', StringComparison.Ordinal);
        return SiloAddress.FromParsableString(bar < 0 ? key : key[..bar]);
    }

    public static string ModelOf(string key)
    {
        int bar = key.IndexOf('|', StringComparison.Ordinal);
        return bar < 0 ? throw new ArgumentException($"'{key}' is not a replica key (silo|model)", nameof(key)) : key[(bar + 1)..];
    }
}
