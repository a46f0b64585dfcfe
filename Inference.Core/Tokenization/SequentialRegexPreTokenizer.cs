using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Inference.Tokenization;

/// <summary>
/// Splits text with a list of regexes applied in sequence: the first regex splits the whole text, each later one
/// splits every piece left by the one before. Both the matches and the text between them become pieces (Hugging Face's
/// <c>Split</c> pre-tokenizer with behaviour <c>Isolated</c>, llama.cpp's <c>unicode_regex_split</c>).
/// </summary>
/// <remarks>
/// Each regex sees one piece as its whole input, so anchors and look-arounds stop at piece boundaries.
/// With a single regex that matches every character (GPT-2's) this is the plain "find all matches" split.
/// </remarks>
internal sealed class SequentialRegexPreTokenizer : PreTokenizer
{
    private readonly Regex[] _regexes;

    /// <summary>Creates the pre-tokenizer; the regexes are applied in the given order.</summary>
    public SequentialRegexPreTokenizer(Regex[] regexes)
    {
        ArgumentNullException.ThrowIfNull(regexes);
        if (regexes.Length == 0) throw new ArgumentException("at least one regex is required", nameof(regexes));
        _regexes = regexes;
    }

    /// <inheritdoc />
    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) =>
        text is null ? [] : Split(text.AsSpan());

    /// <inheritdoc />
    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => Split(text);

    /// <summary>The pieces of <paramref name="text"/> as (offset, length) pairs in text order.</summary>
    public List<(int Offset, int Length)> Split(ReadOnlySpan<char> text)
    {
        var pieces = new List<(int Offset, int Length)>();
        if (text.IsEmpty) return pieces;
        pieces.Add((0, text.Length));
        var next = new List<(int Offset, int Length)>();
        foreach (var regex in _regexes)
        {
            next.Clear();
            foreach (var (offset, length) in pieces)
            {
                var piece = text.Slice(offset, length);
                int done = 0;
                foreach (var m in regex.EnumerateMatches(piece))
                {
                    if (m.Length == 0) continue;
                    if (m.Index > done) next.Add((offset + done, m.Index - done));
                    next.Add((offset + m.Index, m.Length));
                    done = m.Index + m.Length;
                }
                if (done < length) next.Add((offset + done, length - done));
            }
            (pieces, next) = (next, pieces);
        }
        return pieces;
    }
}
