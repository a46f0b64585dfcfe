using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Inference.Tokenization;

/// <summary>
/// GPT-2-style byte-level BPE: the text is split by the model's pre-tokenizer regexes, each piece's UTF-8 bytes are
/// mapped to characters (<see cref="ByteLevelMapping"/>), and the ranked merges run over those characters.
/// The merging itself is Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/> built from the GGUF vocabulary and merges.
/// </summary>
/// <remarks>Thread-safe: the underlying tokenizer is immutable after creation.</remarks>
internal sealed class BytePairEncoder
{
    private readonly BpeTokenizer _tokenizer;

    /// <summary>Creates the encoder.</summary>
    /// <param name="vocabulary">Token text (byte-level form) to id; every token of the model.</param>
    /// <param name="merges">The merges in rank order, each "left right".</param>
    /// <param name="preTokenizer">The model's pre-tokenizer regexes, applied in sequence.</param>
    public BytePairEncoder(Dictionary<string, int> vocabulary, string[] merges, Regex[] preTokenizer)
    {
        _tokenizer = BpeTokenizer.Create(new BpeOptions(vocabulary)
        {
            Merges = merges,
            PreTokenizer = new SequentialRegexPreTokenizer(preTokenizer),
            ByteLevel = true,
        });
    }

    /// <summary>Appends the token ids of <paramref name="text"/> to <paramref name="output"/>.</summary>
    public void Encode(ReadOnlySpan<char> text, List<int> output)
    {
        if (text.IsEmpty) return;
        output.AddRange(_tokenizer.EncodeToIds(text, considerPreTokenization: true, considerNormalization: false));
    }
}
