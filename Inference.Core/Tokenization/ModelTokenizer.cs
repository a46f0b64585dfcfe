using System.Text;
using Inference.Loading;

namespace Inference.Tokenization;

/// <summary>
/// The tokenizer of a model, built from the <c>tokenizer.ggml.*</c> metadata of its GGUF file: text to token ids and
/// token ids back to text. Supports the SentencePiece-style <c>llama</c> model and the GPT-2-style byte-level
/// <c>gpt2</c> model (pre-tokenizers <c>gpt-2</c>, <c>deepseek-llm</c>, <c>llama3</c>/<c>llama-bpe</c>, <c>qwen2</c>).
/// </summary>
/// <remarks>
/// Immutable after creation and safe to use from several threads. By default special-token texts written in the text
/// (for example "&lt;s&gt;") are encoded as plain text, never as control tokens (llama.cpp's
/// <c>parse_special = false</c>); <see cref="SpecialTokenText.Token"/> turns them into their tokens (for chat
/// templates). User-defined tokens are always matched whole before the BPE merges run, as llama.cpp and Hugging Face do.
/// </remarks>
public sealed class ModelTokenizer
{
    // NOTE: llama.cpp decodes the unknown token of a SentencePiece vocabulary as U+2585 '▅'; we follow it.
    private static readonly byte[] UnknownPieceBytes = "\u2585"u8.ToArray();

    // Token texts llama.cpp also treats as end of generation when the vocabulary marks them as control or user-defined.
    private static readonly string[] EndOfGenerationTexts =
        ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<｜end▁of▁sentence｜>"];

    private readonly GgufTokenizerMetadata _metadata;
    private readonly byte[][] _tokenBytes;          // UTF-8 bytes each token stands for, by id
    private readonly bool[] _isEndOfGeneration;     // by id
    private readonly WholeTokenMatcher _userDefined;    // user-defined tokens
    private readonly WholeTokenMatcher _special;        // user-defined, control and unknown tokens
    private readonly SentencePieceEncoder? _sentencePiece;
    private readonly BytePairEncoder? _bytePair;

    private ModelTokenizer(GgufTokenizerMetadata metadata, byte[][] tokenBytes, bool[] isEndOfGeneration,
        WholeTokenMatcher userDefined, WholeTokenMatcher special, SentencePieceEncoder? sentencePiece, BytePairEncoder? bytePair)
    {
        _metadata = metadata;
        _tokenBytes = tokenBytes;
        _isEndOfGeneration = isEndOfGeneration;
        _userDefined = userDefined;
        _special = special;
        _sentencePiece = sentencePiece;
        _bytePair = bytePair;
    }

    /// <summary>The tokenizer family.</summary>
    public TokenizerKind Kind => _metadata.Kind;

    /// <summary>Number of tokens in the vocabulary; valid ids are 0 to <c>VocabularySize - 1</c>.</summary>
    public int VocabularySize => _metadata.Tokens.Length;

    /// <summary>The beginning-of-sequence token, if the model has one.</summary>
    public int? BosId => _metadata.BosId;

    /// <summary>The end-of-sequence token, if the model has one.</summary>
    public int? EosId => _metadata.EosId;

    /// <summary>
    /// Whether <see cref="Encode(string, bool)"/> prepends <see cref="BosId"/> when asked to add special tokens:
    /// <c>tokenizer.ggml.add_bos_token</c>, else the family default (SentencePiece: true, GPT-2: false).
    /// </summary>
    public bool AddBos => _metadata.AddBos && _metadata.BosId is not null;

    /// <summary>
    /// Whether <see cref="Encode(string, bool)"/> appends <see cref="EosId"/> when asked to add special tokens
    /// (<c>tokenizer.ggml.add_eos_token</c>, default false).
    /// </summary>
    public bool AddEos => _metadata.AddEos && _metadata.EosId is not null;

    /// <summary>Builds the tokenizer from the metadata of <paramref name="gguf"/>.</summary>
    /// <exception cref="ModelFormatException">
    /// A required key is missing or invalid (wrong type, wrong length, an id outside the vocabulary, a duplicated token
    /// text, a malformed merge or byte token), or the tokenizer model or pre-tokenizer is not supported.
    /// </exception>
    public static ModelTokenizer FromGguf(GgufFile gguf)
    {
        ArgumentNullException.ThrowIfNull(gguf);
        var metadata = GgufTokenizerMetadata.Read(gguf);
        string[] tokens = metadata.Tokens;
        TokenType[] types = metadata.Types;
        long tokensAt = GgufTokenizerMetadata.OffsetOf(gguf, "tokenizer.ggml.tokens");

        var byText = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
        for (int id = 0; id < tokens.Length; id++)
            if (!byText.TryAdd(tokens[id], id))
                throw gguf.Bad(tokensAt, $"token text {GgufFile.Quote(tokens[id])} appears twice in 'tokenizer.ggml.tokens' (ids {byText[tokens[id]]} and {id})");

        var tokenBytes = new byte[tokens.Length][];
        for (int id = 0; id < tokens.Length; id++)
            tokenBytes[id] = metadata.Kind == TokenizerKind.SentencePiece
                ? SentencePieceTokenBytes(gguf, tokensAt, tokens[id], types[id], id)
                : BytePairTokenBytes(tokens[id], types[id]);

        var isEndOfGeneration = new bool[tokens.Length];
        foreach (int? id in (ReadOnlySpan<int?>)[metadata.EosId, metadata.EotId, metadata.EomId])
            if (id is int i) isEndOfGeneration[i] = true;
        foreach (string text in EndOfGenerationTexts)
            if (byText.TryGetValue(text, out int i) && types[i] is TokenType.Control or TokenType.UserDefined) isEndOfGeneration[i] = true;

        var userDefined = new List<(string Text, int Id)>();
        var special = new List<(string Text, int Id)>();
        for (int id = 0; id < tokens.Length; id++)
        {
            if (types[id] == TokenType.UserDefined) userDefined.Add((tokens[id], id));
            if (types[id] is TokenType.UserDefined or TokenType.Control or TokenType.Unknown) special.Add((tokens[id], id));
        }

        SentencePieceEncoder? sentencePiece = null;
        BytePairEncoder? bytePair = null;
        if (metadata.Kind == TokenizerKind.SentencePiece)
        {
            // NOTE: only normal and user-defined pieces take part in merges. llama.cpp also merges into control and
            // byte tokens (text "<s>" could become BOS when "s>" is a piece); SentencePiece never produces those from text.
            var pieces = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
            for (int id = 0; id < tokens.Length; id++)
                if (types[id] is TokenType.Normal or TokenType.UserDefined) pieces[tokens[id]] = id;
            var byteIds = new int[256];
            for (int b = 0; b < 256; b++)
                byteIds[b] = byText.TryGetValue($"<0x{b:X2}>", out int id) && types[id] == TokenType.Byte ? id : -1;
            sentencePiece = new SentencePieceEncoder(pieces, metadata.Scores, byteIds, metadata.UnknownId ?? -1);
        }
        else
        {
            var regexes = PreTokenizerPatterns.ForName(metadata.PreTokenizer)
                ?? throw gguf.Bad(metadata.PreTokenizerOffset,
                    $"unsupported pre-tokenizer {GgufFile.Quote(metadata.PreTokenizer ?? "")} in 'tokenizer.ggml.pre' (supported: {string.Join(", ", PreTokenizerPatterns.SupportedNames)})");
            // Every merge must join two tokens into a third; Microsoft.ML.Tokenizers rejects anything else.
            long mergesAt = GgufTokenizerMetadata.OffsetOf(gguf, "tokenizer.ggml.merges");
            var lookup = byText.GetAlternateLookup<ReadOnlySpan<char>>();
            for (int i = 0; i < metadata.Merges.Length; i++)
            {
                string merge = metadata.Merges[i];
                int space = merge.IndexOf(' ');
                if (!lookup.ContainsKey(merge.AsSpan(0, space)) || !lookup.ContainsKey(merge.AsSpan(space + 1))
                    || !byText.ContainsKey(string.Concat(merge.AsSpan(0, space), merge.AsSpan(space + 1))))
                    throw gguf.Bad(mergesAt, $"'tokenizer.ggml.merges'[{i}] is {GgufFile.Quote(merge)}, but its pieces or their concatenation are not tokens");
            }
            bytePair = new BytePairEncoder(byText, metadata.Merges, regexes);
        }

        return new ModelTokenizer(metadata, tokenBytes, isEndOfGeneration, new WholeTokenMatcher(userDefined), new WholeTokenMatcher(special), sentencePiece, bytePair);
    }

    /// <summary>Whether generation should stop at <paramref name="tokenId"/>: EOS, EOT, EOM and the like.</summary>
    public bool IsEndOfGeneration(int tokenId) => (uint)tokenId < (uint)_isEndOfGeneration.Length && _isEndOfGeneration[tokenId];

    /// <summary>Encodes <paramref name="text"/> into token ids; special-token texts in it are encoded as plain text.</summary>
    /// <param name="text">The text.</param>
    /// <param name="addSpecial">
    /// When true, prepends BOS if <see cref="AddBos"/> and appends EOS if <see cref="AddEos"/>.
    /// </param>
    public int[] Encode(string text, bool addSpecial) => Encode(text, addSpecial, SpecialTokenText.Literal);

    /// <summary>Encodes <paramref name="text"/> into token ids.</summary>
    /// <param name="text">The text.</param>
    /// <param name="addSpecial">
    /// When true, prepends BOS if <see cref="AddBos"/> and appends EOS if <see cref="AddEos"/>.
    /// </param>
    /// <param name="specialTokenText">
    /// Whether texts of control tokens in <paramref name="text"/> (such as "&lt;|im_start|&gt;") become those tokens.
    /// </param>
    public int[] Encode(string text, bool addSpecial, SpecialTokenText specialTokenText)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (specialTokenText is not (SpecialTokenText.Literal or SpecialTokenText.Token))
            throw new ArgumentOutOfRangeException(nameof(specialTokenText), specialTokenText, "unknown special-token handling");
        var matcher = specialTokenText == SpecialTokenText.Token ? _special : _userDefined;
        // NOTE: a lone UTF-16 surrogate has no UTF-8 form; both encoders see U+FFFD in its place (a UTF-8 round trip
        // replaces exactly those), so the result does not depend on how each encoder would treat it.
        if (text.AsSpan().ContainsAnyInRange('\uD800', '\uDFFF')) text = Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(text));
        var output = new List<int>(text.Length / 3 + 2);
        if (addSpecial && AddBos) output.Add(_metadata.BosId!.Value);

        // Raw text between whole-matched tokens is encoded on its own; for SentencePiece each such run gets the dummy
        // prefix space, as in llama.cpp ("prefix with space if the previous fragment was special").
        int start = 0;
        while (matcher.TryFindNext(text, start, out int at, out int length, out int id))
        {
            EncodeRaw(text.AsSpan(start, at - start), output);
            output.Add(id);
            start = at + length;
        }
        EncodeRaw(text.AsSpan(start), output);

        if (addSpecial && AddEos) output.Add(_metadata.EosId!.Value);
        return output.ToArray();
    }

    private void EncodeRaw(ReadOnlySpan<char> text, List<int> output)
    {
        if (text.IsEmpty) return;
        if (_bytePair is not null)
        {
            _bytePair.Encode(text, output);
            return;
        }
        // SentencePiece normalization: the dummy prefix, then every space as '▁'.
        int prefix = _metadata.AddSpacePrefix ? 1 : 0;
        char[] buffer = new char[text.Length + prefix];
        if (prefix == 1) buffer[0] = '▁';
        for (int i = 0; i < text.Length; i++) buffer[prefix + i] = text[i] == ' ' ? '▁' : text[i];
        _sentencePiece!.Encode(buffer, output);
    }

    /// <summary>
    /// Decodes token ids into text. Control tokens decode to nothing and invalid UTF-8 to U+FFFD. For SentencePiece
    /// models with a dummy prefix, the leading space of the first piece (and of a piece right after BOS) is dropped, so
    /// text encoded without special tokens round-trips.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public string Decode(ReadOnlySpan<int> tokenIds)
    {
        var bytes = new List<byte>(tokenIds.Length * 4);
        for (int i = 0; i < tokenIds.Length; i++)
        {
            var piece = GetTokenBytes(tokenIds[i]);
            if (HasDummyPrefix && (i == 0 || tokenIds[i - 1] == BosId)) piece = TrimOneSpace(piece);
            bytes.AddRange(piece);
        }
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
    }

    /// <summary>
    /// The UTF-8 bytes token <paramref name="tokenId"/> stands for: SentencePiece '▁' as ' ' and <c>&lt;0xNN&gt;</c> as
    /// that byte; GPT-2's byte-to-character mapping undone; control tokens empty. One token may hold part of a
    /// multi-byte character. Does not allocate.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The id is outside the vocabulary.</exception>
    public ReadOnlySpan<byte> GetTokenBytes(int tokenId)
    {
        if ((uint)tokenId >= (uint)_tokenBytes.Length)
            throw new ArgumentOutOfRangeException(nameof(tokenId), tokenId, $"token id outside the vocabulary of {_tokenBytes.Length} tokens");
        return _tokenBytes[tokenId];
    }

    /// <summary>
    /// Creates a decoder for a stream of generated tokens. <paramref name="previousTokenId"/> is the token before the
    /// first one pushed (usually the last prompt token); when it is the BOS of a SentencePiece model with a dummy
    /// prefix, the leading space of the first piece is dropped ("Once", not " Once").
    /// </summary>
    public StreamingDecoder CreateStreamingDecoder(int? previousTokenId = null) => new(this, previousTokenId);

    /// <summary>Whether the piece after <paramref name="previousTokenId"/> loses its leading space when decoded.</summary>
    internal bool DropsLeadingSpaceAfter(int? previousTokenId) => HasDummyPrefix && previousTokenId is int p && p == _metadata.BosId;

    private bool HasDummyPrefix => _metadata.Kind == TokenizerKind.SentencePiece && _metadata.AddSpacePrefix;

    /// <summary><paramref name="piece"/> without one leading ' ', if it has one.</summary>
    internal static ReadOnlySpan<byte> TrimOneSpace(ReadOnlySpan<byte> piece) => piece.Length > 0 && piece[0] == (byte)' ' ? piece[1..] : piece;

    private static byte[] SentencePieceTokenBytes(GgufFile gguf, long tokensAt, string text, TokenType type, int id)
    {
        switch (type)
        {
            case TokenType.Control:
            case TokenType.Unused:
                return [];
            case TokenType.Unknown:
                return UnknownPieceBytes;
            case TokenType.Byte:
                // "<0xNN>" with two hex digits.
                if (text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>'
                    && byte.TryParse(text.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out byte value))
                    return [value];
                throw gguf.Bad(tokensAt, $"byte token {id} is {GgufFile.Quote(text)}, expected <0xNN>");
            default:
                return Encoding.UTF8.GetBytes(text.Replace('▁', ' '));
        }
    }

    private static byte[] BytePairTokenBytes(string text, TokenType type)
    {
        if (type is TokenType.Control or TokenType.Unused) return [];
        // NOTE: user-defined (added) tokens are stored as raw text, not in the byte-level form: deepseek-llm's 'ö' is
        // the text "ö", not the byte 0xF6. Anything else that falls outside the byte-level alphabet is taken as raw
        // text too rather than rejected.
        if (type == TokenType.UserDefined) return Encoding.UTF8.GetBytes(text);
        return ByteLevelMapping.TryToBytes(text, out var bytes) ? bytes : Encoding.UTF8.GetBytes(text);
    }
}
