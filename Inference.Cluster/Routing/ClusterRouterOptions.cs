namespace Inference.Cluster.Routing;

/// <summary>How <see cref="ClusterRouter"/> picks a replica for a request.</summary>
public enum RoutingPolicy
{
    /// <summary>
    /// The replica that was last sent the longest matching prefix of the prompt's first blocks (so it likely still
    /// holds their KV), unless it is busier than the least-loaded replica by more than
    /// <see cref="ClusterRouterOptions.MaxLoadImbalance"/> or short of free KV blocks; otherwise the least-loaded one.
    /// </summary>
    PrefixAffinity,
    /// <summary>The replica with the fewest requests in flight.</summary>
    LeastLoaded,
    /// <summary>Each replica in turn, whatever the prompt.</summary>
    RoundRobin,
}

/// <summary>Router settings. Immutable; invalid values throw when set.</summary>
public sealed record ClusterRouterOptions
{
    private readonly int _affinityBlocks = 8;
    private readonly int _maxLoadImbalance = 8;
    private readonly double _minFreeBlockFraction = 0.05;
    private readonly int _maxAttempts = 3;
    private readonly int _prefixTableCapacity = 1 << 16;
    private readonly TimeSpan? _refreshInterval = TimeSpan.FromSeconds(2);

    /// <summary>How replicas are chosen. Default <see cref="RoutingPolicy.PrefixAffinity"/>.</summary>
    public RoutingPolicy Policy { get; init; } = RoutingPolicy.PrefixAffinity;

    /// <summary>How many leading KV blocks of a prompt are hashed to find its replica (1 to 256). Default 8.</summary>
    public int AffinityBlocks { get => _affinityBlocks; init => _affinityBlocks = value is >= 1 and <= 256 ? value : throw Out(nameof(AffinityBlocks), value, "must be in [1, 256]"); }

    /// <summary>
    /// How many more requests in flight than the least-loaded replica a prefix's replica may have and still get the
    /// request (≥ 0). Default 8. Zero is least-loaded routing with prefix affinity only to break ties.
    /// </summary>
    public int MaxLoadImbalance { get => _maxLoadImbalance; init => _maxLoadImbalance = value >= 0 ? value : throw Out(nameof(MaxLoadImbalance), value, "must be ≥ 0"); }

    /// <summary>
    /// A replica whose last reported free KV blocks are below this fraction of its pool loses its prefix affinity
    /// (range [0, 1]). Default 0.05.
    /// </summary>
    public double MinFreeBlockFraction { get => _minFreeBlockFraction; init => _minFreeBlockFraction = value is >= 0 and <= 1 ? value : throw Out(nameof(MinFreeBlockFraction), value, "must be in [0, 1]"); }

    /// <summary>Replicas one request may be sent to before it fails (1 to 16). Default 3.</summary>
    public int MaxAttempts { get => _maxAttempts; init => _maxAttempts = value is >= 1 and <= 16 ? value : throw Out(nameof(MaxAttempts), value, "must be in [1, 16]"); }

    /// <summary>Most prefix-block entries the router remembers (least recently used ones go first). Default 65,536.</summary>
    public int PrefixTableCapacity { get => _prefixTableCapacity; init => _prefixTableCapacity = value >= 16 ? value : throw Out(nameof(PrefixTableCapacity), value, "must be ≥ 16"); }

    /// <summary>
    /// How often the router re-reads cluster membership, the replicas and their load, and resends the requests of
    /// replicas whose silo left; null refreshes only when <see cref="ClusterRouter.RefreshAsync"/> is called or a call
    /// fails. Default 2 s.
    /// </summary>
    public TimeSpan? RefreshInterval
    {
        get => _refreshInterval;
        init => _refreshInterval = value is null || value > TimeSpan.Zero ? value : throw Out(nameof(RefreshInterval), value, "must be positive or null");
    }

    private static ArgumentOutOfRangeException Out(string name, object? value, string rule) => new(name, value, $"{name} {rule}.");
}
