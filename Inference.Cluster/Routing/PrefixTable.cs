using Inference.KvCache;

namespace Inference.Cluster.Routing;

/// <summary>
/// Which replica each prefix block was last sent to: an approximate LRU map of two generations. Lookups promote an
/// entry to the current generation; when the current one holds half the capacity it becomes the old one and the old
/// one is dropped. O(1) per operation, no per-entry bookkeeping. Not thread-safe (the router locks around it).
/// </summary>
internal sealed class PrefixTable(int capacity)
{
    private Dictionary<BlockHash, string> _current = [];
    private Dictionary<BlockHash, string> _old = [];

    public int Count => _current.Count + _old.Count;

    public bool TryGet(BlockHash hash, out string replicaId)
    {
        if (_current.TryGetValue(hash, out replicaId!)) return true;
        if (!_old.Remove(hash, out replicaId!)) return false;
        Set(hash, replicaId);
        return true;
    }

    public void Set(BlockHash hash, string replicaId)
    {
        if (_current.Count >= capacity / 2 && !_current.ContainsKey(hash))
        {
            (_old, _current) = (_current, _old);
            _current.Clear();
        }
        _current[hash] = replicaId;
        _old.Remove(hash);
    }
}
