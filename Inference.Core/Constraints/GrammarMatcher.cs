using Inference.Tokenization;

namespace Inference.Constraints;

/// <summary>
/// Follows one generation through a <see cref="Constraint"/>: which tokens may come next (a mask applied to the
/// logits before sampling), accepting the chosen token, and rolling back accepted tokens (for speculative decoding,
/// whose proposals are checked with <see cref="IsTokenAllowed"/> and undone with <see cref="Rollback"/>).
/// </summary>
/// <remarks>
/// A token is allowed when its bytes take the grammar from the current state to a live one; tokens may span several
/// grammar symbols or end inside a multi-byte character. End-of-generation tokens are allowed exactly when the grammar
/// has matched a whole string (or when nothing else is, so generation can always end). Control tokens without text are
/// never allowed. The mask of a state is computed once, by one walk of the vocabulary's trie, and then reused whenever
/// generation returns to that state. Not thread-safe: one matcher per request.
/// </remarks>
public sealed class GrammarMatcher
{
    /// <summary>Most cached masks kept before the cache is emptied (each is vocabulary/8 bytes).</summary>
    private const int MaxCachedMasks = 2048;

    private readonly GrammarAutomaton _automaton;
    private readonly TokenTrie _trie;
    private readonly ModelTokenizer _tokenizer;
    private readonly int[] _endTokens;
    private readonly int _words;
    private readonly List<int> _states = [];
    private readonly List<ulong[]?> _masks = [];
    private int[] _walk;
    private int _cachedMaskCount;
    private bool _ended;

    internal GrammarMatcher(Grammar grammar, ModelTokenizer tokenizer, int vocabSize, IEnumerable<int>? extraEndTokens)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        _automaton = new GrammarAutomaton(grammar);
        _trie = TokenTrie.For(tokenizer);
        _tokenizer = tokenizer;
        VocabSize = vocabSize;
        _words = (vocabSize + 63) / 64;
        var ends = new List<int>();
        foreach (int t in _trie.EndTokens) if (t < vocabSize) ends.Add(t);
        if (extraEndTokens is not null)
            foreach (int t in extraEndTokens) if ((uint)t < (uint)vocabSize && !ends.Contains(t)) ends.Add(t);
        _endTokens = ends.ToArray();
        _walk = new int[_trie.MaxDepth + 1];
        _states.Add(_automaton.InitialState);
    }

    /// <summary>The number of logits a mask covers.</summary>
    public int VocabSize { get; }

    /// <summary>Tokens accepted so far (an end-of-generation token included).</summary>
    public int AcceptedCount => _states.Count - 1 + (_ended ? 1 : 0);

    /// <summary>Whether the output so far is a whole match: generation may end here.</summary>
    public bool IsComplete => _automaton.IsAccepting(Current);

    /// <summary>Whether nothing but the end may follow: the grammar is complete and admits no longer string, or an end token was accepted.</summary>
    public bool IsTerminated => _ended || !_automaton.CanContinue(Current);

    private int Current => _states[^1];

    /// <summary>Whether <paramref name="tokenId"/> may come next. Cheap: walks the token's bytes only.</summary>
    public bool IsTokenAllowed(int tokenId)
    {
        if ((uint)tokenId >= (uint)VocabSize || _ended) return false;
        if (IsEndToken(tokenId)) return IsComplete || Mask(Current) is var m && (m[tokenId >> 6] & (1UL << tokenId)) != 0;
        return NextState(tokenId) >= 0;
    }

    /// <summary>Advances past <paramref name="tokenId"/>; returns false (and changes nothing) when it is not allowed.</summary>
    public bool TryAccept(int tokenId)
    {
        if (!IsTokenAllowed(tokenId)) return false;
        if (IsEndToken(tokenId)) _ended = true;
        else _states.Add(NextState(tokenId));
        return true;
    }

    /// <summary>Advances past <paramref name="tokenId"/>.</summary>
    /// <exception cref="InvalidOperationException">The token is not allowed here.</exception>
    public void Accept(int tokenId)
    {
        if (!TryAccept(tokenId)) throw new InvalidOperationException($"token {tokenId} is not allowed by the constraint here");
    }

    /// <summary>Undoes the last <paramref name="tokenCount"/> accepted tokens.</summary>
    /// <exception cref="ArgumentOutOfRangeException">More tokens than were accepted.</exception>
    public void Rollback(int tokenCount)
    {
        if (tokenCount < 0 || tokenCount > AcceptedCount)
            throw new ArgumentOutOfRangeException(nameof(tokenCount), tokenCount, $"only {AcceptedCount} tokens were accepted");
        if (tokenCount > 0 && _ended)
        {
            _ended = false;
            tokenCount--;
        }
        _states.RemoveRange(_states.Count - tokenCount, tokenCount);
    }

    /// <summary>Writes the allowed tokens as a bit set: bit <c>t % 64</c> of word <c>t / 64</c> is token t.</summary>
    /// <exception cref="ArgumentException"><paramref name="allowed"/> has fewer than ⌈VocabSize / 64⌉ words.</exception>
    public void FillMask(Span<ulong> allowed)
    {
        if (allowed.Length < _words) throw new ArgumentException($"the mask needs {_words} words", nameof(allowed));
        if (_ended)
        {
            allowed[.._words].Clear();
            return;
        }
        Mask(Current).CopyTo(allowed);
    }

    /// <summary>Sets the logits of the tokens that may not come next to −∞.</summary>
    /// <exception cref="ArgumentException"><paramref name="logits"/> is not <see cref="VocabSize"/> long.</exception>
    public void ApplyMask(Span<float> logits)
    {
        if (logits.Length != VocabSize) throw new ArgumentException($"expected {VocabSize} logits, got {logits.Length}", nameof(logits));
        var mask = Mask(Current);
        for (int w = 0; w < mask.Length; w++)
        {
            ulong m = mask[w];
            if (m == ulong.MaxValue) continue;
            int start = w * 64, count = Math.Min(64, logits.Length - start);
            if (m == 0)
            {
                logits.Slice(start, count).Fill(float.NegativeInfinity);
                continue;
            }
            ulong blocked = ~m;
            if (count < 64) blocked &= (1UL << count) - 1;
            while (blocked != 0)
            {
                int bit = System.Numerics.BitOperations.TrailingZeroCount(blocked);
                logits[start + bit] = float.NegativeInfinity;
                blocked &= blocked - 1;
            }
        }
    }

    private bool IsEndToken(int tokenId) => Array.IndexOf(_endTokens, tokenId) >= 0;

    /// <summary>The state after <paramref name="tokenId"/>'s bytes, or a negative number when they are rejected.</summary>
    private int NextState(int tokenId)
    {
        if ((uint)tokenId >= (uint)_tokenizer.VocabularySize) return GrammarAutomaton.Dead;
        var bytes = _tokenizer.GetTokenBytes(tokenId);
        if (bytes.IsEmpty) return GrammarAutomaton.Dead;
        return _automaton.Walk(Current, bytes);
    }

    /// <summary>The allowed-token bit set of <paramref name="state"/>, computed on first use.</summary>
    private ulong[] Mask(int state)
    {
        while (_masks.Count <= state) _masks.Add(null);
        var mask = _masks[state];
        if (mask is not null) return mask;
        if (_cachedMaskCount >= MaxCachedMasks)
        {
            for (int i = 0; i < _masks.Count; i++) _masks[i] = null;
            _cachedMaskCount = 0;
        }
        mask = new ulong[_words];
        bool any = _automaton.CanContinue(state) && Walk(state, mask);
        if (!any || _automaton.IsAccepting(state))
            foreach (int t in _endTokens) mask[t >> 6] |= 1UL << t;
        _masks[state] = mask;
        _cachedMaskCount++;
        return mask;
    }

    /// <summary>Sets the bits of every token whose bytes the grammar accepts from <paramref name="state"/>; returns whether any.</summary>
    private bool Walk(int state, ulong[] mask)
    {
        var trie = _trie;
        var bytes = trie.Byte;
        var depth = trie.Depth;
        var skip = trie.SkipTo;
        var tokenStart = trie.TokenStart;
        var tokens = trie.Tokens;
        var walk = _walk;
        walk[0] = state;
        int n = trie.NodeCount, vocab = VocabSize;
        bool any = false;
        for (int i = 0; i < n;)
        {
            int d = depth[i];
            int next = _automaton.Step(walk[d - 1], bytes[i]);
            if (next < 0)
            {
                i = skip[i];
                continue;
            }
            walk[d] = next;
            for (int k = tokenStart[i], end = tokenStart[i + 1]; k < end; k++)
            {
                int t = tokens[k];
                if (t < vocab)
                {
                    mask[t >> 6] |= 1UL << t;
                    any = true;
                }
            }
            i++;
        }
        return any;
    }
}
