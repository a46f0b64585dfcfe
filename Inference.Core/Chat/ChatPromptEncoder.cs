using Inference.Loading;
using Inference.Tokenization;

namespace Inference.Chat;

/// <summary>
/// Tokenizes rendered chat prompts: control-token texts in the prompt (<c>&lt;s&gt;</c>, <c>&lt;|im_start|&gt;</c>,
/// <c>&lt;|eot_id|&gt;</c>, …) become their token ids, the text between them is encoded as plain text (llama.cpp's
/// <c>parse_special = true</c>), and BOS is prepended when the model asks for it and the template did not emit it.
/// Immutable and thread-safe.
/// </summary>
internal sealed class ChatPromptEncoder
{
    private readonly ModelTokenizer _tokenizer;
    private readonly (string Text, int Id)[] _controlTokens; // longest first

    private ChatPromptEncoder(ModelTokenizer tokenizer, (string Text, int Id)[] controlTokens, string bosText, string eosText)
    {
        _tokenizer = tokenizer;
        _controlTokens = controlTokens;
        BosText = bosText;
        EosText = eosText;
    }

    /// <summary>The text of the BOS token (template variable <c>bos_token</c>); empty when the model has none.</summary>
    public string BosText { get; }

    /// <summary>The text of the EOS token (template variable <c>eos_token</c>); empty when the model has none.</summary>
    public string EosText { get; }

    public static ChatPromptEncoder Create(GgufFile gguf, ModelTokenizer tokenizer)
    {
        var metadata = GgufTokenizerMetadata.Read(gguf);
        var control = new List<(string Text, int Id)>();
        for (int id = 0; id < metadata.Tokens.Length; id++)
            if (metadata.Types[id] == TokenType.Control && metadata.Tokens[id].Length > 0) control.Add((metadata.Tokens[id], id));
        control.Sort((a, b) => b.Text.Length != a.Text.Length ? b.Text.Length.CompareTo(a.Text.Length) : a.Id.CompareTo(b.Id));
        string TextOf(int? id) => id is int i && (uint)i < (uint)metadata.Tokens.Length ? metadata.Tokens[i] : "";
        return new ChatPromptEncoder(tokenizer, control.ToArray(), TextOf(tokenizer.BosId), TextOf(tokenizer.EosId));
    }

    /// <summary>Token ids of a rendered prompt.</summary>
    public int[] Encode(string prompt)
    {
        var output = new List<int>(prompt.Length / 3 + 2);
        int start = 0;
        while (start <= prompt.Length)
        {
            // The earliest control token in the rest of the prompt; the longest one where several start together.
            int matchAt = prompt.Length, matchId = -1, matchLength = 0;
            foreach (var (text, id) in _controlTokens)
            {
                int at = prompt.IndexOf(text, start, matchAt - start, StringComparison.Ordinal);
                if (at >= 0 && at < matchAt) (matchAt, matchId, matchLength) = (at, id, text.Length);
                if (matchAt == start) break;
            }
            if (matchAt > start) output.AddRange(_tokenizer.Encode(prompt[start..matchAt], addSpecial: false));
            if (matchId < 0) break;
            output.Add(matchId);
            start = matchAt + matchLength;
        }

        // NOTE: BOS follows the model's add_bos rule, but a template that writes bos_token itself already put it
        // there; a second BOS would be out of distribution (llama.cpp warns about it). EOS is never appended: the
        // prompt ends where the assistant's reply begins.
        if (_tokenizer.AddBos && (output.Count == 0 || output[0] != _tokenizer.BosId))
            output.Insert(0, _tokenizer.BosId!.Value);
        return output.ToArray();
    }
}
