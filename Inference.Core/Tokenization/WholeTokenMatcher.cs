namespace Inference.Tokenization;

/// <summary>
/// Finds tokens that are cut out of raw text whole before the BPE merges run: user-defined tokens (Hugging Face's
/// non-special "added tokens") always, control tokens too when special-token texts are parsed. The text between them
/// is encoded normally.
/// </summary>
/// <remarks>
/// NOTE: matching is leftmost-longest. llama.cpp instead cuts the text token by token, longest token first; the two
/// differ only when such tokens overlap in the text. Candidates are indexed by their first character, so the
/// cost per text position is the number of user-defined tokens starting with that character.
/// </remarks>
internal sealed class WholeTokenMatcher
{
    private readonly Dictionary<char, (string Text, int Id)[]> _byFirstChar; // each list longest first

    /// <summary>Creates the matcher for the (text, id) pairs; empty texts are ignored.</summary>
    public WholeTokenMatcher(IEnumerable<(string Text, int Id)> tokens)
    {
        var lists = new Dictionary<char, List<(string Text, int Id)>>();
        foreach (var token in tokens)
        {
            if (token.Text.Length == 0) continue;
            if (!lists.TryGetValue(token.Text[0], out var list)) lists[token.Text[0]] = list = [];
            list.Add(token);
        }
        _byFirstChar = new Dictionary<char, (string Text, int Id)[]>(lists.Count);
        foreach (var (first, list) in lists)
        {
            list.Sort((a, b) => b.Text.Length != a.Text.Length ? b.Text.Length.CompareTo(a.Text.Length) : a.Id.CompareTo(b.Id));
            _byFirstChar[first] = list.ToArray();
        }
    }

    /// <summary>True when there is nothing to match.</summary>
    public bool IsEmpty => _byFirstChar.Count == 0;

    /// <summary>
    /// Finds the first user-defined token in <paramref name="text"/> at or after <paramref name="start"/>
    /// (the longest one where several start at the same position).
    /// </summary>
    public bool TryFindNext(ReadOnlySpan<char> text, int start, out int at, out int length, out int id)
    {
        for (int i = start; i < text.Length; i++)
        {
            if (!_byFirstChar.TryGetValue(text[i], out var candidates)) continue;
            foreach (var (candidate, candidateId) in candidates)
            {
                if (!text[i..].StartsWith(candidate, StringComparison.Ordinal)) continue;
                (at, length, id) = (i, candidate.Length, candidateId);
                return true;
            }
        }
        (at, length, id) = (text.Length, 0, -1);
        return false;
    }
}
