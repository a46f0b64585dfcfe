using System.Runtime.CompilerServices;
using Inference.Tokenization;

namespace Inference.Constraints;

/// <summary>
/// The vocabulary's token bytes as a trie laid out in depth-first order, so a grammar can test every token by one walk
/// that skips a whole subtree as soon as its prefix is rejected. Built once per tokenizer and shared.
/// </summary>
/// <remarks>
/// Node i stands for the byte string of its path; <see cref="Depth"/>[i] is that string's length, <see cref="Byte"/>[i]
/// its last byte, <see cref="SkipTo"/>[i] the first node after its subtree, and the tokens whose bytes are exactly that
/// string are <c>Tokens[TokenStart[i] .. TokenStart[i + 1])</c>. Tokens without bytes (control tokens) are left out.
/// </remarks>
internal sealed class TokenTrie
{
    private static readonly ConditionalWeakTable<ModelTokenizer, TokenTrie> Cache = new();

    private TokenTrie(byte[] bytes, int[] depth, int[] skipTo, int[] tokenStart, int[] tokens, int maxDepth, int[] endTokens)
    {
        EndTokens = endTokens;
        Byte = bytes;
        Depth = depth;
        SkipTo = skipTo;
        TokenStart = tokenStart;
        Tokens = tokens;
        MaxDepth = maxDepth;
    }

    public byte[] Byte { get; }
    public int[] Depth { get; }
    public int[] SkipTo { get; }
    public int[] TokenStart { get; }
    public int[] Tokens { get; }
    public int MaxDepth { get; }
    public int NodeCount => Byte.Length;

    /// <summary>The end-of-generation tokens (EOS, EOT, EOM and the like).</summary>
    public int[] EndTokens { get; }

    /// <summary>The trie of <paramref name="tokenizer"/>'s vocabulary (built on first use).</summary>
    public static TokenTrie For(ModelTokenizer tokenizer) => Cache.GetValue(tokenizer, Build);

    private static TokenTrie Build(ModelTokenizer tokenizer)
    {
        int vocab = tokenizer.VocabularySize;
        var ids = new List<int>(vocab);
        var endTokens = new List<int>();
        for (int id = 0; id < vocab; id++)
            if (tokenizer.IsEndOfGeneration(id)) endTokens.Add(id);
        var pieces = new byte[vocab][];
        for (int id = 0; id < vocab; id++)
        {
            var b = tokenizer.GetTokenBytes(id);
            if (b.IsEmpty) continue;
            pieces[id] = b.ToArray();
            ids.Add(id);
        }
        ids.Sort((a, b) =>
        {
            int c = pieces[a].AsSpan().SequenceCompareTo(pieces[b]);
            return c != 0 ? c : a.CompareTo(b);
        });

        var bytes = new List<byte>();
        var depth = new List<int>();
        var tokenStart = new List<int>();
        var tokens = new List<int>(ids.Count);
        var path = new List<int>(); // node index at each depth of the current path
        byte[] previous = [];
        int maxDepth = 0;
        foreach (int id in ids)
        {
            var p = pieces[id];
            int common = 0;
            while (common < p.Length && common < previous.Length && p[common] == previous[common]) common++;
            if (common == p.Length && p.Length == previous.Length)
            {
                tokens.Add(id); // same bytes as the previous token: same node
                continue;
            }
            path.RemoveRange(common, path.Count - common);
            for (int d = common; d < p.Length; d++)
            {
                path.Add(bytes.Count);
                bytes.Add(p[d]);
                depth.Add(d + 1);
                tokenStart.Add(tokens.Count);
            }
            tokens.Add(id);
            previous = p;
            maxDepth = Math.Max(maxDepth, p.Length);
        }
        // Tokens were appended in node order, so a node's tokens run from its start to the next node's start.
        int n = bytes.Count;
        tokenStart.Add(tokens.Count);
        var skip = new int[n];
        var open = new Stack<int>();
        for (int i = 0; i < n; i++)
        {
            while (open.Count > 0 && depth[open.Peek()] >= depth[i]) skip[open.Pop()] = i;
            open.Push(i);
        }
        while (open.Count > 0) skip[open.Pop()] = n;
        return new TokenTrie(bytes.ToArray(), depth.ToArray(), skip, tokenStart.ToArray(), tokens.ToArray(), maxDepth, endTokens.ToArray());
    }
}
