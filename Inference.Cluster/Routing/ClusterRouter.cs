using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using Inference.Chat;
using Inference.Cluster.Contracts;
using Inference.Engine;
using Inference.KvCache;
using Inference.Sampling;
using Orleans.Runtime;

namespace Inference.Cluster.Routing;

/// <summary>
/// Sends each request to one engine replica of its model and streams the tokens back: by prefix affinity (the KV
/// cache's own chained block hashes of the prompt's first blocks, looked up in a table of where each prefix was last
/// sent) balanced against load (requests in flight, free KV blocks), or by <see cref="RoutingPolicy.LeastLoaded"/> or
/// <see cref="RoutingPolicy.RoundRobin"/>. Thread-safe; runs in an Orleans client or in a silo.
/// </summary>
/// <remarks>
/// <para>Failure handling: when a replica fails mid-request, or its silo leaves the cluster, the request is sent again
/// to another replica with the same sampling seed (the router fixes one when the caller did not) and the tokens the
/// caller already received are skipped, after checking they came out the same. A request is answered once: its
/// completion is set by the one replica that finished it. Cancelling the caller's token, or leaving the
/// <c>await foreach</c> early, cancels the call on the replica, whose engine frees the request's KV blocks.</para>
/// <para>A resend recomputes the request from its prompt (prefix cache hits aside): with greedy or seeded sampling the
/// replayed tokens equal the delivered ones; if they do not (replicas on different hardware can round differently) the
/// request fails with <see cref="ReplicaDivergedException"/> rather than answer twice.</para>
/// </remarks>
public sealed class ClusterRouter : IAsyncDisposable
{
    private readonly IGrainFactory _grains;
    private readonly Lock _lock = new();
    private readonly PrefixTable _table;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _refreshLoop;
    private readonly SemaphoreSlim _refreshGate = new(1, 1);
    private Dictionary<string, ReplicaState[]> _byModel = new(StringComparer.Ordinal);
    private readonly Dictionary<string, ReplicaState> _byId = new(StringComparer.Ordinal);
    private readonly Dictionary<string, ChatTemplate> _templates = new(StringComparer.Ordinal);
    private long _roundRobin;
    private long _requests, _affinity, _balanced, _misses, _resends, _failures, _promptTokens, _prefixHitTokens;

    /// <summary>Creates a router over the cluster <paramref name="grains"/> reaches (an <c>IClusterClient</c>, or a silo's grain factory).</summary>
    public ClusterRouter(IGrainFactory grains, ClusterRouterOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(grains);
        _grains = grains;
        Options = options ?? new ClusterRouterOptions();
        _table = new PrefixTable(Options.PrefixTableCapacity);
        Metrics = new RouterMetrics(this);
        _refreshLoop = Options.RefreshInterval is TimeSpan interval ? RefreshLoopAsync(interval, _stop.Token) : Task.CompletedTask;
    }

    /// <summary>The router's settings.</summary>
    public ClusterRouterOptions Options { get; }

    /// <summary>The router's <see cref="System.Diagnostics.Metrics"/> instruments (meter <see cref="RouterMetrics.MeterName"/>).</summary>
    public RouterMetrics Metrics { get; }

    /// <summary>The live replicas as of the latest refresh, failed ones excluded.</summary>
    public IReadOnlyList<ReplicaDescriptor> Replicas
    {
        get
        {
            lock (_lock)
            {
                var list = new List<ReplicaDescriptor>();
                foreach (var states in _byModel.Values)
                    foreach (var s in states)
                        if (!s.Failed) list.Add(s.Descriptor);
                return list;
            }
        }
    }

    /// <summary>Counters since the router was created, and requests in flight per replica.</summary>
    public RouterStats GetStats()
    {
        var replicas = new Dictionary<string, ReplicaRouteStats>(StringComparer.Ordinal);
        lock (_lock)
            foreach (var s in _byId.Values)
                replicas[s.Descriptor.ReplicaId] = new ReplicaRouteStats(s.Descriptor.ModelId, Volatile.Read(ref s.InFlight), Volatile.Read(ref s.Requests), s.Failed);
        return new RouterStats(Interlocked.Read(ref _requests), Interlocked.Read(ref _affinity), Interlocked.Read(ref _balanced),
            Interlocked.Read(ref _misses), Interlocked.Read(ref _resends), Interlocked.Read(ref _failures),
            Interlocked.Read(ref _promptTokens), Interlocked.Read(ref _prefixHitTokens), replicas);
    }

    /// <summary>A text generator for one model of the cluster, for code written against <see cref="ITextGenerator"/>.</summary>
    public ITextGenerator ForModel(string modelId)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelId);
        return new ClusterTextGenerator(this, modelId);
    }

    /// <summary>
    /// Re-reads the active silos, their replicas and loads. Replicas whose silo is gone are dropped and their requests
    /// re-sent elsewhere; a failed replica that answers again is used again.
    /// </summary>
    public async Task RefreshAsync(CancellationToken cancellationToken = default)
    {
        await _refreshGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var hosts = await _grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true).ConfigureAwait(false);
            var lists = new List<Task<(ReplicaDescriptor[]? List, ReplicaLoad?[] Loads)>>();
            var silos = new List<string>();
            foreach (var silo in hosts.Keys)
            {
                lists.Add(DescribeSiloAsync(silo));
                silos.Add(silo.ToParsableString());
            }
            var results = await Task.WhenAll(lists).ConfigureAwait(false);
            // A silo that is still active but did not answer this time (busy, or the directory recovering from another
            // silo's death) keeps its replicas: only membership removes a replica, a failed call marks it failed.
            var unanswered = new HashSet<string>(StringComparer.Ordinal);
            for (int i = 0; i < results.Length; i++)
                if (results[i].List is null) unanswered.Add(silos[i]);

            List<ReplicaState> gone = [];
            lock (_lock)
            {
                var byModel = new Dictionary<string, List<ReplicaState>>(StringComparer.Ordinal);
                var seen = new HashSet<string>(StringComparer.Ordinal);
                foreach (var (list, loads) in results)
                {
                    if (list is null) continue;
                    for (int i = 0; i < list.Length; i++)
                    {
                        var d = list[i];
                        if (!_byId.TryGetValue(d.ReplicaId, out var state))
                            _byId[d.ReplicaId] = state = new ReplicaState(d, _grains.GetGrain<IEngineReplicaGrain>(d.ReplicaId));
                        if (loads[i] is { } load)
                        {
                            state.LastLoad = load;
                            state.Failed = false;
                        }
                        seen.Add(d.ReplicaId);
                        if (!byModel.TryGetValue(d.ModelId, out var models)) byModel[d.ModelId] = models = [];
                        models.Add(state);
                    }
                }
                foreach (var (id, state) in _byId)
                {
                    if (seen.Contains(id)) continue;
                    if (unanswered.Contains(state.Descriptor.Silo))
                    {
                        if (!byModel.TryGetValue(state.Descriptor.ModelId, out var models)) byModel[state.Descriptor.ModelId] = models = [];
                        models.Add(state);
                    }
                    else gone.Add(state);
                }
                foreach (var state in gone) _byId.Remove(state.Descriptor.ReplicaId);
                var snapshot = new Dictionary<string, ReplicaState[]>(StringComparer.Ordinal);
                foreach (var (model, states) in byModel) snapshot[model] = [.. states];
                _byModel = snapshot;
            }
            // Requests still on a replica whose silo left: cancel those calls so they are re-sent.
            foreach (var state in gone) state.AbandonAll();
        }
        finally
        {
            _refreshGate.Release();
        }
    }

    private async Task<(ReplicaDescriptor[]? List, ReplicaLoad?[] Loads)> DescribeSiloAsync(SiloAddress silo)
    {
        try
        {
            var list = await _grains.GetGrain<ISiloReplicasGrain>(silo.ToParsableString()).ListAsync().ConfigureAwait(false);
            var loads = new ReplicaLoad?[list.Length];
            for (int i = 0; i < list.Length; i++)
            {
                try
                {
                    loads[i] = await _grains.GetGrain<IEngineReplicaGrain>(list[i].ReplicaId).GetLoadAsync().ConfigureAwait(false);
                }
                catch (Exception e) when (IsReplicaFailure(e, default))
                {
                    loads[i] = null;
                }
            }
            return (list, loads);
        }
        catch (Exception e) when (IsReplicaFailure(e, default))
        {
            return (null, []);
        }
    }

    private async Task RefreshLoopAsync(TimeSpan interval, CancellationToken stop)
    {
        using var timer = new PeriodicTimer(interval);
        try
        {
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                try
                {
                    await RefreshAsync(stop).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // NOTE: membership unreachable for a moment; the next tick tries again, and requests keep using the last view.
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Tokenizes <paramref name="prompt"/> on a replica of <paramref name="modelId"/>.</summary>
    /// <exception cref="ReplicaUnavailableException">No live replica of the model answered.</exception>
    public Task<int[]> TokenizeAsync(string modelId, string prompt, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        return OnAnyReplicaAsync(modelId, r => r.Grain.TokenizeAsync(prompt), cancellationToken);
    }

    /// <summary>Renders and tokenizes a conversation (tools and tool calls included) on a replica of <paramref name="modelId"/>.</summary>
    /// <exception cref="NotSupportedException"><paramref name="prompt"/> has template variables (they do not cross the wire).</exception>
    /// <exception cref="ReplicaUnavailableException">No live replica of the model answered.</exception>
    public Task<int[]> TokenizeChatAsync(string modelId, IReadOnlyList<ChatMessage> messages, ChatPromptOptions? prompt = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (prompt is { Variables.Count: > 0 }) throw new NotSupportedException("chat template variables are not sent to cluster replicas; render the prompt locally and send tokens");
        var turns = new ChatTurn[messages.Count];
        for (int i = 0; i < turns.Length; i++) turns[i] = ChatTurn.From(messages[i] ?? throw new ArgumentNullException(nameof(messages)));
        var tools = new ToolWire[prompt?.Tools.Count ?? 0];
        for (int i = 0; i < tools.Length; i++) tools[i] = new ToolWire(prompt!.Tools[i].Name, prompt.Tools[i].Description, prompt.Tools[i].ParametersSchema);
        string? template = prompt?.Template?.Source;
        return OnAnyReplicaAsync(modelId, r => r.Grain.TokenizeChatAsync(turns, template, tools), cancellationToken);
    }

    /// <summary>The chat template a replica of <paramref name="modelId"/> reported (null when the model has none).</summary>
    /// <exception cref="ReplicaUnavailableException">No live replica of the model.</exception>
    public async Task<ChatTemplate?> GetChatTemplateAsync(string modelId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelId);
        string? source = null;
        for (int pass = 0; ; pass++)
        {
            bool found = false;
            lock (_lock)
            {
                if (_byModel.TryGetValue(modelId, out var states))
                    foreach (var s in states)
                        if (!s.Failed)
                        {
                            source = s.Descriptor.ChatTemplateSource;
                            found = true;
                            break;
                        }
            }
            if (found) break;
            if (pass > 0) throw new ReplicaUnavailableException($"no live replica of model '{modelId}'");
            await RefreshAsync(cancellationToken).ConfigureAwait(false);
        }
        if (source is null) return null;
        lock (_templates)
        {
            if (!_templates.TryGetValue(source, out var template))
            {
                if (_templates.Count >= 64) _templates.Clear();
                _templates[source] = template = ChatTemplate.Parse(source);
            }
            return template;
        }
    }

    private async Task<T> OnAnyReplicaAsync<T>(string modelId, Func<ReplicaState, Task<T>> call, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelId);
        List<ReplicaState> failed = [];
        for (int attempt = 0; ; attempt++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var replica = await PickAsync(modelId, null, failed, cancellationToken).ConfigureAwait(false);
            try
            {
                return await call(replica.State).WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (IsReplicaFailure(e, cancellationToken) && attempt + 1 < Options.MaxAttempts)
            {
                MarkFailed(replica.State);
                failed.Add(replica.State);
            }
        }
    }

    /// <summary>Streams the continuation of <paramref name="promptTokens"/> from a replica of <paramref name="modelId"/>.</summary>
    /// <remarks>Sampling with a temperature and no seed gets a seed here, so a resend reproduces the delivered tokens.</remarks>
    /// <exception cref="NotSupportedException"><paramref name="sampling"/> asks for log-probabilities (not carried back from replicas).</exception>
    /// <exception cref="ReplicaUnavailableException">(When enumerated) no live replica of the model, or every attempt failed.</exception>
    /// <exception cref="ReplicaDivergedException">(When enumerated) a resend produced other tokens than were delivered.</exception>
    /// <exception cref="RequestQueueFullException">(When enumerated) every replica tried (up to <see cref="ClusterRouterOptions.MaxAttempts"/>) had a full waiting queue; retry later.</exception>
    public GenerationStream GenerateAsync(string modelId, IReadOnlyList<int> promptTokens, SamplingOptions? sampling = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelId);
        ArgumentNullException.ThrowIfNull(promptTokens);
        sampling ??= new SamplingOptions();
        if (sampling.Logprobs is not null || sampling.PromptLogprobs is not null)
            throw new NotSupportedException("log-probabilities are not carried back from cluster replicas; leave Logprobs and PromptLogprobs unset");
        if (sampling.Seed is null && sampling.Temperature > 0) sampling = sampling with { Seed = (ulong)Random.Shared.NextInt64() };
        int[] tokens = [.. promptTokens];
        var completion = new TaskCompletionSource<Completion>(TaskCreationOptions.RunContinuationsAsynchronously);
        return GenerationStream.FromSource(ct => RunAsync(modelId, tokens, sampling, completion, ct), completion.Task, cancellationToken);
    }

    private async IAsyncEnumerable<GeneratedToken> RunAsync(string modelId, int[] prompt, SamplingOptions sampling, TaskCompletionSource<Completion> completion, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        List<int> delivered = [];
        List<ReplicaState> failed = [];
        Exception? lastError = null;
        try
        {
            for (int attempt = 0; attempt < Options.MaxAttempts; attempt++)
            {
                var pick = await PickAsync(modelId, prompt, failed, cancellationToken).ConfigureAwait(false);
                var replica = pick.State;
                using var call = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                replica.Begin(call);
                ReplicaCompletion? result = null;
                RequestQueueFullException? full = null;
                int replayed = 0;
                try
                {
                    var events = replica.Grain.GenerateAsync(prompt, sampling, call.Token).GetAsyncEnumerator(call.Token);
                    await using (events.ConfigureAwait(false))
                    {
                        while (true)
                        {
                            ReplicaEvent item;
                            try
                            {
                                if (!await events.MoveNextAsync().ConfigureAwait(false)) break;
                                item = events.Current;
                            }
                            catch (RequestQueueFullException e)
                            {
                                full = e; // the replica is healthy but refused to queue the request: try another
                                break;
                            }
                            catch (Exception e) when (IsReplicaFailure(e, cancellationToken))
                            {
                                lastError = e;
                                break;
                            }
                            if (item.Completion is { } c)
                            {
                                result = c;
                                break;
                            }
                            if (replayed < delivered.Count)
                            {
                                // A resend: skip what the caller already has, after checking it came out the same.
                                if (delivered[replayed] != item.TokenId) throw new ReplicaDivergedException(replica.Descriptor.ReplicaId, replayed, delivered[replayed], item.TokenId);
                                replayed++;
                                continue;
                            }
                            delivered.Add(item.TokenId);
                            replayed++;
                            yield return new GeneratedToken(item.TokenId, item.Text);
                        }
                    }
                }
                finally
                {
                    replica.End(call);
                }
                if (result is not null)
                {
                    Interlocked.Add(ref _promptTokens, result.PromptTokenIds.Length);
                    Interlocked.Add(ref _prefixHitTokens, result.PrefixHitTokens);
                    var tags = new KeyValuePair<string, object?>("model", modelId);
                    Metrics.PromptTokens.Add(result.PromptTokenIds.Length, tags);
                    Metrics.PrefixHitTokens.Add(result.PrefixHitTokens, tags);
                    completion.TrySetResult(result.ToCompletion());
                    yield break;
                }
                cancellationToken.ThrowIfCancellationRequested();
                if (full is not null)
                {
                    // Not a failure: the replica stays in service; this request tries another one, or reports the full queue.
                    failed.Add(replica);
                    if (attempt + 1 >= Options.MaxAttempts || !HasCandidate(modelId, failed)) throw full;
                    continue;
                }
                // The replica failed or left: send the request again elsewhere.
                lastError ??= new ReplicaUnavailableException($"replica {replica.Descriptor.ReplicaId} left the cluster");
                MarkFailed(replica);
                failed.Add(replica);
                Interlocked.Increment(ref _resends);
                Metrics.Resends.Add(1, new("model", modelId), new("replica", replica.Descriptor.ReplicaId));
            }
            Interlocked.Increment(ref _failures);
            Metrics.Failures.Add(1, new KeyValuePair<string, object?>("model", modelId));
            throw new ReplicaUnavailableException($"request for model '{modelId}' failed on {Options.MaxAttempts} replica(s): {lastError?.Message}", lastError);
        }
        finally
        {
            if (!completion.Task.IsCompleted)
            {
                if (cancellationToken.IsCancellationRequested) completion.TrySetCanceled(cancellationToken);
                else completion.TrySetException(lastError ?? new OperationCanceledException("the request ended before it completed"));
            }
        }
    }

    private static bool IsReplicaFailure(Exception e, CancellationToken callerToken)
    {
        if (callerToken.IsCancellationRequested) return false;
        return e switch
        {
            ObjectDisposedException => true,                 // the replica's engine is shutting down
            ArgumentException or NotSupportedException or InvalidOperationException or ChatTemplateException => false, // the request's fault
            ReplicaDivergedException => false,
            _ => true,                                       // silo gone, connection lost, timeout, call cancelled by a refresh
        };
    }

    private bool HasCandidate(string modelId, List<ReplicaState> exclude)
    {
        lock (_lock)
        {
            if (!_byModel.TryGetValue(modelId, out var all)) return false;
            foreach (var s in all)
                if (!s.Failed && !exclude.Contains(s)) return true;
            return false;
        }
    }

    private void MarkFailed(ReplicaState state)
    {
        lock (_lock) state.Failed = true;
    }

    // A null prompt (tokenizing) takes the least-loaded replica and is not counted as a routed request.
    private async Task<(ReplicaState State, string Decision)> PickAsync(string modelId, int[]? prompt, List<ReplicaState> exclude, CancellationToken cancellationToken)
    {
        for (int pass = 0; ; pass++)
        {
            var pick = TryPick(modelId, prompt, exclude);
            if (pick.State is not null) return (pick.State, pick.Decision);
            if (pass > 0)
            {
                string known;
                lock (_lock) known = string.Join(", ", _byModel.Keys);
                throw new ReplicaUnavailableException($"no live replica of model '{modelId}' (models with replicas: {(known.Length > 0 ? known : "none")})");
            }
            await RefreshAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private (ReplicaState? State, string Decision) TryPick(string modelId, int[]? prompt, List<ReplicaState> exclude)
    {
        lock (_lock)
        {
            if (!_byModel.TryGetValue(modelId, out var all)) return (null, "");
            ReplicaState? least = null;
            int live = 0;
            Span<BlockHash> hashes = stackalloc BlockHash[Options.AffinityBlocks];
            int hashCount = 0;
            if (Options.Policy == RoutingPolicy.PrefixAffinity && prompt is not null)
            {
                var d = all[0].Descriptor;
                hashCount = BlockHash.ComputeChain(prompt, d.BlockSize, d.PrefixSalt, hashes);
            }
            // Least loaded; ties go to the replica the first block hashes highest with (rendezvous), so equal loads
            // still send one prefix to one place.
            ulong firstHash = hashCount > 0 ? (ulong)hashes[0].Value : 0;
            foreach (var s in all)
            {
                if (s.Failed || exclude.Contains(s)) continue;
                live++;
                if (least is null || s.Load < least.Load || (s.Load == least.Load && s.Rank(firstHash) > least.Rank(firstHash))) least = s;
            }
            if (least is null) return (null, "");
            if (prompt is null) return (least, "tokenize");

            ReplicaState chosen;
            string decision;
            int matched = 0;
            switch (Options.Policy)
            {
                case RoutingPolicy.RoundRobin:
                {
                    long start = _roundRobin++;
                    chosen = least;
                    for (int i = 0; i < all.Length; i++)
                    {
                        var s = all[(int)((start + i) % all.Length)];
                        if (!s.Failed && !exclude.Contains(s))
                        {
                            chosen = s;
                            break;
                        }
                    }
                    decision = "round_robin";
                    break;
                }
                case RoutingPolicy.LeastLoaded:
                    chosen = least;
                    decision = "least_loaded";
                    break;
                default:
                {
                    ReplicaState? owner = null;
                    for (int i = hashCount - 1; i >= 0 && owner is null; i--)
                    {
                        if (_table.TryGet(hashes[i], out var id) && _byId.TryGetValue(id, out var s) && !s.Failed && !exclude.Contains(s) && s.Descriptor.ModelId == modelId)
                        {
                            owner = s;
                            matched = i + 1;
                        }
                    }
                    if (owner is not null && owner.Load <= least.Load + Options.MaxLoadImbalance && !owner.ShortOfBlocks(Options.MinFreeBlockFraction, least))
                    {
                        chosen = owner;
                        decision = "affinity";
                        Interlocked.Increment(ref _affinity);
                    }
                    else
                    {
                        chosen = least;
                        decision = owner is null ? "miss" : "balanced";
                        Interlocked.Increment(ref owner is null ? ref _misses : ref _balanced);
                    }
                    for (int i = 0; i < hashCount; i++) _table.Set(hashes[i], chosen.Descriptor.ReplicaId);
                    Metrics.MatchedBlocks.Record(matched, new KeyValuePair<string, object?>("model", modelId));
                    break;
                }
            }
            Interlocked.Increment(ref _requests);
            Interlocked.Increment(ref chosen.Requests);
            Metrics.Requests.Add(1, new("model", modelId), new("replica", chosen.Descriptor.ReplicaId), new("decision", decision));
            return (chosen, decision);
        }
    }

    internal IEnumerable<Measurement<int>> ObserveInFlight()
    {
        List<Measurement<int>> list = [];
        lock (_lock)
            foreach (var s in _byId.Values)
                list.Add(new Measurement<int>(Volatile.Read(ref s.InFlight), new("model", s.Descriptor.ModelId), new("replica", s.Descriptor.ReplicaId)));
        return list;
    }

    internal IEnumerable<Measurement<int>> ObserveReplicaCounts()
    {
        List<Measurement<int>> list = [];
        lock (_lock)
            foreach (var (model, states) in _byModel)
            {
                int live = 0;
                foreach (var s in states) if (!s.Failed) live++;
                list.Add(new Measurement<int>(live, new KeyValuePair<string, object?>("model", model)));
            }
        return list;
    }

    /// <summary>Stops the refresh loop and the meter. Requests in flight are not cancelled.</summary>
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _refreshLoop.ConfigureAwait(false);
        _stop.Dispose();
        Metrics.Dispose();
    }

    /// <summary>The router's view of one replica.</summary>
    private sealed class ReplicaState(ReplicaDescriptor descriptor, IEngineReplicaGrain grain)
    {
        private readonly HashSet<CancellationTokenSource> _calls = [];
        public int InFlight;
        public long Requests;

        public ReplicaDescriptor Descriptor { get; } = descriptor;
        public IEngineReplicaGrain Grain { get; } = grain;
        public ReplicaLoad? LastLoad { get; set; }
        public bool Failed { get; set; }

        /// <summary>This router's requests in flight there, or what the replica last reported if more (other routers).</summary>
        public int Load => Math.Max(Volatile.Read(ref InFlight), LastLoad is { } l ? l.RunningCount + l.WaitingCount : 0);

        public bool ShortOfBlocks(double minFreeFraction, ReplicaState other) =>
            LastLoad is { TotalBlockCount: > 0 } l && l.FreeBlockCount < minFreeFraction * l.TotalBlockCount
            && !(other.LastLoad is { } o && o.FreeBlockCount <= l.FreeBlockCount);

        public ulong Rank(ulong key) => (ulong)HashCode.Combine(key, Descriptor.ReplicaId);

        public void Begin(CancellationTokenSource call)
        {
            Interlocked.Increment(ref InFlight);
            lock (_calls) _calls.Add(call);
        }

        public void End(CancellationTokenSource call)
        {
            Interlocked.Decrement(ref InFlight);
            lock (_calls) _calls.Remove(call);
        }

        public void AbandonAll()
        {
            CancellationTokenSource[] calls;
            lock (_calls) calls = [.. _calls];
            foreach (var c in calls)
            {
                try
                {
                    c.Cancel();
                }
                catch (ObjectDisposedException)
                {
                }
            }
        }
    }
}

/// <summary>A snapshot of <see cref="ClusterRouter"/>'s counters.</summary>
/// <param name="RequestCount">Requests sent to a replica, resends included.</param>
/// <param name="AffinityCount">Sent to the replica that holds the prompt's prefix.</param>
/// <param name="BalancedCount">The prefix's replica was too busy or short of KV blocks; sent to the least-loaded one.</param>
/// <param name="MissCount">No known prefix; sent to the least-loaded replica.</param>
/// <param name="ResendCount">Requests re-sent after their replica failed or left.</param>
/// <param name="FailedCount">Requests that failed on every attempt.</param>
/// <param name="PromptTokenCount">Prompt tokens of completed requests.</param>
/// <param name="PrefixHitTokenCount">Of those, tokens found in the serving replica's prefix cache.</param>
/// <param name="Replicas">Per replica id.</param>
public sealed record RouterStats(long RequestCount, long AffinityCount, long BalancedCount, long MissCount, long ResendCount, long FailedCount,
    long PromptTokenCount, long PrefixHitTokenCount, IReadOnlyDictionary<string, ReplicaRouteStats> Replicas)
{
    /// <summary><see cref="PrefixHitTokenCount"/> / <see cref="PromptTokenCount"/>; 0 before any completion.</summary>
    public double PrefixHitRate => PromptTokenCount == 0 ? 0 : (double)PrefixHitTokenCount / PromptTokenCount;
}

/// <summary>The router's counters for one replica.</summary>
/// <param name="ModelId">Its model.</param>
/// <param name="InFlight">Requests this router has in flight there.</param>
/// <param name="RequestCount">Requests sent there.</param>
/// <param name="Failed">Whether the router stopped sending there after a failure.</param>
public sealed record ReplicaRouteStats(string ModelId, int InFlight, long RequestCount, bool Failed);

/// <summary>No live replica could serve a request.</summary>
public sealed class ReplicaUnavailableException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ReplicaUnavailableException(string message, Exception? inner = null) : base(message, inner)
    {
    }
}

/// <summary>A re-sent request produced tokens other than those already delivered, so it cannot continue without answering twice.</summary>
public sealed class ReplicaDivergedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ReplicaDivergedException(string replicaId, int index, int delivered, int replayed)
        : base($"replica {replicaId} replayed token {replayed} at output position {index} where {delivered} was delivered; the request is not continued")
    {
    }
}
