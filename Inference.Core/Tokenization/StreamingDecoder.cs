using System.Text;

namespace Inference.Tokenization;

/// <summary>
/// Turns generated tokens into text one token at a time. A token may end in the middle of a multi-byte UTF-8
/// character (byte-fallback and byte-level tokens do); the incomplete bytes are held back until a later token completes
/// them, so <see cref="Push"/> never returns half a character. Not thread-safe: one decoder per sequence.
/// </summary>
public sealed class StreamingDecoder
{
    private readonly ModelTokenizer _tokenizer;
    private byte[] _pending = new byte[16]; // bytes of an incomplete character, at most 3 between calls
    private int _pendingCount;
    private int? _previousTokenId;

    internal StreamingDecoder(ModelTokenizer tokenizer, int? previousTokenId)
    {
        _tokenizer = tokenizer;
        _previousTokenId = previousTokenId;
    }

    /// <summary>
    /// Adds <paramref name="tokenId"/> and returns the text it completes: empty while a character is still incomplete,
    /// several characters when it completes a held one and adds more. Invalid byte sequences become U+FFFD.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The id is outside the vocabulary.</exception>
    public string Push(int tokenId)
    {
        var piece = _tokenizer.GetTokenBytes(tokenId);
        if (_tokenizer.DropsLeadingSpaceAfter(_previousTokenId)) piece = ModelTokenizer.TrimOneSpace(piece);
        _previousTokenId = tokenId;
        if (piece.IsEmpty) return string.Empty;

        if (_pending.Length < _pendingCount + piece.Length) Array.Resize(ref _pending, Math.Max(_pending.Length * 2, _pendingCount + piece.Length));
        piece.CopyTo(_pending.AsSpan(_pendingCount));
        _pendingCount += piece.Length;

        var bytes = _pending.AsSpan(0, _pendingCount);
        int complete = CompletePrefixLength(bytes);
        if (complete == 0) return string.Empty;
        string text = Encoding.UTF8.GetString(bytes[..complete]);
        bytes[complete..].CopyTo(_pending);
        _pendingCount -= complete;
        return text;
    }

    /// <summary>Returns whatever is still held (an incomplete character, as U+FFFD) and empties the decoder.</summary>
    public string Flush()
    {
        if (_pendingCount == 0) return string.Empty;
        string text = Encoding.UTF8.GetString(_pending, 0, _pendingCount);
        _pendingCount = 0;
        return text;
    }

    /// <summary>
    /// Length of <paramref name="bytes"/> without a trailing incomplete character: a lead byte in the last three
    /// positions that starts a valid but truncated sequence. Anything invalid counts as complete (it decodes to U+FFFD).
    /// </summary>
    internal static int CompletePrefixLength(ReadOnlySpan<byte> bytes)
    {
        for (int back = 1; back <= 3 && back <= bytes.Length; back++)
        {
            byte b = bytes[^back];
            if (b < 0x80) return bytes.Length;       // ASCII: nothing pending
            if (b >= 0xC0)                            // a lead byte: is what follows it a truncated character?
                return System.Text.Rune.DecodeFromUtf8(bytes[^back..], out _, out _) == System.Buffers.OperationStatus.NeedMoreData
                    ? bytes.Length - back
                    : bytes.Length;
            // a continuation byte: keep looking back for its lead byte
        }
        return bytes.Length;
    }
}
