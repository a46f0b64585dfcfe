using System.Text;

namespace Inference.Tokenization;

/// <summary>
/// SentencePiece-style BPE encoding driven by piece scores, as llama.cpp's <c>llm_tokenizer_spm</c> does it: start from
/// single characters, repeatedly merge the adjacent pair whose concatenation is the vocabulary piece with the highest
/// score (ties: the leftmost pair), and emit each final symbol as its piece or, when it is not a piece, as its UTF-8
/// bytes through the <c>&lt;0xNN&gt;</c> byte tokens.
/// </summary>
/// <remarks>
/// NOTE: this replaces Microsoft.ML.Tokenizers' <c>LlamaTokenizer</c> for the <c>llama</c> tokenizer model. That
/// tokenizer breaks ties between equal-score merges differently and misses 2 of llama.cpp's 46 llama-spm test vectors
/// ("!!!!!!" and one long mixed case); the merge order below matches llama.cpp (and SentencePiece) exactly.
/// The input is expected already normalized: spaces replaced by '▁' and the dummy prefix added by the caller.
/// Symbols are Unicode scalar values (one UTF-16 char or a surrogate pair), which is what llama.cpp's UTF-8 characters
/// are. Thread-safe: all state of one call is local to it.
/// </remarks>
internal sealed class SentencePieceEncoder
{
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _pieces;
    private readonly float[] _scores;
    private readonly int[] _byteTokenIds; // [256], -1 when the vocabulary has no <0xNN> token for that byte
    private readonly int _unknownId;      // -1 when absent

    /// <summary>Creates the encoder.</summary>
    /// <param name="pieces">Pieces that text may be merged into (normal and user-defined tokens), by text.</param>
    /// <param name="scores">Score of every token id; higher merges first.</param>
    /// <param name="byteTokenIds">The id of the token for each byte value, or -1.</param>
    /// <param name="unknownId">The unknown token id used for bytes without a byte token, or -1.</param>
    public SentencePieceEncoder(Dictionary<string, int> pieces, float[] scores, int[] byteTokenIds, int unknownId)
    {
        _pieces = pieces.GetAlternateLookup<ReadOnlySpan<char>>();
        _scores = scores;
        _byteTokenIds = byteTokenIds;
        _unknownId = unknownId;
    }

    private struct Symbol
    {
        public int Start;  // char offset in the text
        public int Length; // chars; 0 once merged into its left neighbour
        public int Prev;   // index of the left neighbour, -1 at the start
        public int Next;   // index of the right neighbour, -1 at the end
    }

    private readonly record struct Bigram(int Left, int Right, int Length);

    /// <summary>Orders bigrams by score, highest first, then by left position, leftmost first.</summary>
    private sealed class BigramOrder : IComparer<(float Score, int Left)>
    {
        public static readonly BigramOrder Instance = new();

        public int Compare((float Score, int Left) x, (float Score, int Left) y)
        {
            int c = y.Score.CompareTo(x.Score);
            return c != 0 ? c : x.Left.CompareTo(y.Left);
        }
    }

    /// <summary>Appends the token ids of the normalized <paramref name="text"/> to <paramref name="output"/>.</summary>
    public void Encode(ReadOnlySpan<char> text, List<int> output)
    {
        if (text.IsEmpty) return;

        // Split into characters (a surrogate pair is one character).
        var symbols = new List<Symbol>(text.Length);
        for (int offset = 0; offset < text.Length;)
        {
            int length = char.IsHighSurrogate(text[offset]) && offset + 1 < text.Length && char.IsLowSurrogate(text[offset + 1]) ? 2 : 1;
            int index = symbols.Count;
            symbols.Add(new Symbol { Start = offset, Length = length, Prev = index - 1, Next = offset + length == text.Length ? -1 : index + 1 });
            offset += length;
        }
        var symbolSpan = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(symbols);

        var queue = new PriorityQueue<Bigram, (float Score, int Left)>(BigramOrder.Instance);
        for (int i = 1; i < symbolSpan.Length; i++) TryAddBigram(text, symbolSpan, queue, i - 1, i);

        while (queue.TryDequeue(out var bigram, out _))
        {
            ref var left = ref symbolSpan[bigram.Left];
            ref var right = ref symbolSpan[bigram.Right];
            // Skip pairs made stale by an earlier merge of either side.
            if (left.Length == 0 || right.Length == 0 || left.Length + right.Length != bigram.Length) continue;

            left.Length += right.Length;
            right.Length = 0;
            left.Next = right.Next;
            if (right.Next >= 0) symbolSpan[right.Next].Prev = bigram.Left;

            TryAddBigram(text, symbolSpan, queue, left.Prev, bigram.Left);
            TryAddBigram(text, symbolSpan, queue, bigram.Left, left.Next);
        }

        Span<byte> utf8 = stackalloc byte[8];
        for (int i = 0; i != -1; i = symbolSpan[i].Next)
        {
            var piece = text.Slice(symbolSpan[i].Start, symbolSpan[i].Length);
            if (_pieces.TryGetValue(piece, out int id))
            {
                output.Add(id);
                continue;
            }
            // Only single characters can be missing (merges only form pieces): fall back to their UTF-8 bytes.
            int byteCount = Encoding.UTF8.GetBytes(piece, utf8);
            for (int b = 0; b < byteCount; b++)
            {
                int byteId = _byteTokenIds[utf8[b]];
                if (byteId >= 0) output.Add(byteId);
                else if (_unknownId >= 0) output.Add(_unknownId);
                // NOTE: a vocabulary with neither byte tokens nor an unknown token cannot represent the byte; it is dropped.
            }
        }
    }

    private void TryAddBigram(ReadOnlySpan<char> text, Span<Symbol> symbols, PriorityQueue<Bigram, (float, int)> queue, int left, int right)
    {
        if (left < 0 || right < 0) return;
        int length = symbols[left].Length + symbols[right].Length;
        if (!_pieces.TryGetValue(text.Slice(symbols[left].Start, length), out int id)) return;
        queue.Enqueue(new Bigram(left, right, length), (_scores[id], left));
    }
}
