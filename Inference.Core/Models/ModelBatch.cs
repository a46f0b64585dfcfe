namespace Inference.Models;

/// <summary>
/// The tokens of one forward pass, grouped by sequence. Tokens of a sequence are contiguous and in position order.
/// </summary>
/// <remarks>
/// <code>
///  token index   0    1    2    3    4    5
///  token id      1  403  407  261   17   99
///  position      0    1    2    3   41    7
///  sequence      A    A    A    A    B    C      segments: A = [0, 4) from 0, B = [4, 5) from 41, C = [5, 6) from 7
/// </code>
/// Logits are produced only for the segments that ask for them: at their last token, or at their last n tokens (a
/// speculative verification needs the logits after every proposed token, prompt scoring after every prompt token).
/// Rows of the logits output follow the segments' order, and a segment's rows follow its positions.
/// </remarks>
public sealed class ModelBatch
{
    private readonly List<int> _tokens = new();
    private readonly List<int> _positions = new();
    private readonly List<BatchSegment> _segments = new();

    /// <summary>Token ids, [tokenCount].</summary>
    public IReadOnlyList<int> Tokens => _tokens;
    /// <summary>Absolute positions, [tokenCount].</summary>
    public IReadOnlyList<int> Positions => _positions;
    /// <summary>One entry per sequence in the batch.</summary>
    public IReadOnlyList<BatchSegment> Segments => _segments;
    /// <summary>Number of tokens.</summary>
    public int TokenCount => _tokens.Count;
    /// <summary>Number of logits rows the batch produces (over all segments).</summary>
    public int LogitCount { get; private set; }

    /// <summary>Appends <paramref name="tokens"/> of sequence <paramref name="sequenceId"/> starting at <paramref name="startPosition"/>.</summary>
    public void Add(long sequenceId, ReadOnlySpan<int> tokens, int startPosition, bool wantLogits) =>
        Add(sequenceId, tokens, startPosition, wantLogits ? 1 : 0);

    /// <summary>
    /// Appends <paramref name="tokens"/> of sequence <paramref name="sequenceId"/> starting at
    /// <paramref name="startPosition"/>, with logits for its last <paramref name="logitCount"/> tokens.
    /// </summary>
    public void Add(long sequenceId, ReadOnlySpan<int> tokens, int startPosition, int logitCount)
    {
        if (tokens.IsEmpty) throw new ArgumentException("a segment needs at least one token", nameof(tokens));
        ArgumentOutOfRangeException.ThrowIfNegative(startPosition);
        if ((uint)logitCount > (uint)tokens.Length) throw new ArgumentOutOfRangeException(nameof(logitCount), logitCount, $"a segment of {tokens.Length} tokens has 0 to {tokens.Length} logits rows");
        int start = _tokens.Count;
        for (int i = 0; i < tokens.Length; i++)
        {
            _tokens.Add(tokens[i]);
            _positions.Add(startPosition + i);
        }
        _segments.Add(new BatchSegment(sequenceId, start, tokens.Length, startPosition, logitCount > 0 ? LogitCount : -1, logitCount));
        LogitCount += logitCount;
    }

    /// <summary>Empties the batch for reuse.</summary>
    public void Clear()
    {
        _tokens.Clear();
        _positions.Clear();
        _segments.Clear();
        LogitCount = 0;
    }
}

/// <summary>One sequence's tokens in a <see cref="ModelBatch"/>.</summary>
/// <param name="SequenceId">The sequence (the KV cache keys on it).</param>
/// <param name="TokenStart">Index of the segment's first token in the batch.</param>
/// <param name="TokenCount">Number of tokens of the segment.</param>
/// <param name="StartPosition">Absolute position of the first token.</param>
/// <param name="LogitIndex">Row of the logits output for this segment's first logits position (its last token when it
/// has one row), or -1 when none is wanted.</param>
/// <param name="LogitRowCount">Logits rows of the segment: its last <c>LogitRowCount</c> tokens' logits, in position order.</param>
public readonly record struct BatchSegment(long SequenceId, int TokenStart, int TokenCount, int StartPosition, int LogitIndex, int LogitRowCount)
{
    /// <summary>Index in the batch of the token whose logits are row <see cref="LogitIndex"/>.</summary>
    public int FirstLogitToken => TokenStart + TokenCount - LogitRowCount;
}
