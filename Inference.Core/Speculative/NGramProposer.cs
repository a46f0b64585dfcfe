using Inference.Scheduling;

namespace Inference.Speculative;

/// <summary>
/// Prompt lookup: for the sequence's last n tokens (n from the longest to the shortest allowed), the latest earlier
/// occurrence in the sequence (prompt and output) gives the tokens that followed it as the proposal. Costs a scan of the
/// sequence per step and no model.
/// </summary>
internal sealed class NGramProposer : ISpeculativeProposer
{
    private readonly int _min, _max;

    public NGramProposer(int min, int max)
    {
        _min = min;
        _max = max;
    }

    public void Propose(IReadOnlyList<SchedulerRequest> requests, ReadOnlySpan<int> limits)
    {
        for (int i = 0; i < requests.Count; i++)
        {
            var r = requests[i];
            var tokens = r.TokenIds;
            int start = Find(tokens, _min, _max, out int length);
            r.SetSpeculativeTokens(start < 0 ? default : tokens.Slice(start, Math.Min(limits[i], length)));
        }
    }

    /// <summary>
    /// Where the continuation of the latest earlier occurrence of <paramref name="tokens"/>' last n tokens starts, for the
    /// largest n in [<paramref name="min"/>, <paramref name="max"/>] that occurs, and how many tokens follow it; -1 if none.
    /// </summary>
    internal static int Find(ReadOnlySpan<int> tokens, int min, int max, out int length)
    {
        int count = tokens.Length;
        for (int n = Math.Min(max, count - 1); n >= min; n--)
        {
            var suffix = tokens[(count - n)..];
            // An occurrence at [s, s + n) must leave at least one token after it before the suffix itself.
            for (int s = count - n - 1; s >= 0; s--)
            {
                if (tokens[s] != suffix[0] || !tokens.Slice(s, n).SequenceEqual(suffix)) continue;
                length = count - (s + n);
                return s + n;
            }
        }
        length = 0;
        return -1;
    }

    public void Release(long requestId)
    {
    }

    public void Dispose()
    {
    }
}
