using Inference.Loading;

namespace Inference.Tokenization;

/// <summary>
/// The <c>tokenizer.ggml.*</c> keys of a GGUF file, read and validated. Every problem is a
/// <see cref="ModelFormatException"/> naming the file, the offset of the offending value and the key.
/// </summary>
internal sealed class GgufTokenizerMetadata
{
    private const string Prefix = "tokenizer.ggml.";

    /// <summary>The tokenizer family.</summary>
    public required TokenizerKind Kind { get; init; }
    /// <summary>Token texts by id.</summary>
    public required string[] Tokens { get; init; }
    /// <summary>Scores by id (all zero when the file has none and the family does not need them).</summary>
    public required float[] Scores { get; init; }
    /// <summary>Types by id (<see cref="TokenType.Normal"/> when the file has none).</summary>
    public required TokenType[] Types { get; init; }
    /// <summary>BPE merges in rank order ("left right"); empty for SentencePiece.</summary>
    public required string[] Merges { get; init; }
    /// <summary>The pre-tokenizer name, or null when absent.</summary>
    public string? PreTokenizer { get; init; }
    /// <summary>Byte offset of the pre-tokenizer value, or -1.</summary>
    public long PreTokenizerOffset { get; init; } = -1;
    /// <summary>Beginning-of-sequence id.</summary>
    public int? BosId { get; init; }
    /// <summary>End-of-sequence id.</summary>
    public int? EosId { get; init; }
    /// <summary>End-of-turn id.</summary>
    public int? EotId { get; init; }
    /// <summary>End-of-message id.</summary>
    public int? EomId { get; init; }
    /// <summary>Unknown-token id.</summary>
    public int? UnknownId { get; init; }
    /// <summary>Padding id.</summary>
    public int? PaddingId { get; init; }
    /// <summary><c>add_bos_token</c>, or the family default.</summary>
    public required bool AddBos { get; init; }
    /// <summary><c>add_eos_token</c>, or false.</summary>
    public required bool AddEos { get; init; }
    /// <summary><c>add_space_prefix</c> (SentencePiece's add_dummy_prefix), or the family default.</summary>
    public required bool AddSpacePrefix { get; init; }

    /// <summary>Reads the tokenizer keys of <paramref name="gguf"/>.</summary>
    public static GgufTokenizerMetadata Read(GgufFile gguf)
    {
        string model = gguf.GetString(Prefix + "model") ?? throw gguf.Bad(-1, $"metadata '{Prefix}model' is missing");
        var kind = model switch
        {
            "llama" => TokenizerKind.SentencePiece,
            "gpt2" => TokenizerKind.BytePair,
            _ => throw gguf.Bad(OffsetOf(gguf, Prefix + "model"), $"unsupported tokenizer model {GgufFile.Quote(model)} in '{Prefix}model' (supported: llama, gpt2)"),
        };

        string[] tokens = gguf.GetArray<string>(Prefix + "tokens") ?? throw gguf.Bad(-1, $"metadata '{Prefix}tokens' is missing");
        if (tokens.Length == 0) throw gguf.Bad(OffsetOf(gguf, Prefix + "tokens"), $"'{Prefix}tokens' is empty");
        int count = tokens.Length;

        float[]? scores = gguf.GetArray<float>(Prefix + "scores");
        if (scores is null && kind == TokenizerKind.SentencePiece) throw gguf.Bad(-1, $"metadata '{Prefix}scores' is missing (required by the llama tokenizer)");
        if (scores is not null && scores.Length != count)
            throw gguf.Bad(OffsetOf(gguf, Prefix + "scores"), $"'{Prefix}scores' has {scores.Length} entries, expected {count} (one per token)");
        if (scores is not null)
        {
            for (int i = 0; i < scores.Length; i++)
                if (!float.IsFinite(scores[i])) throw gguf.Bad(OffsetOf(gguf, Prefix + "scores"), $"'{Prefix}scores'[{i}] is {scores[i]}, expected a finite number");
        }

        var types = new TokenType[count];
        int[]? rawTypes = gguf.GetIntArray(Prefix + "token_type");
        if (rawTypes is null) Array.Fill(types, TokenType.Normal);
        else
        {
            long at = OffsetOf(gguf, Prefix + "token_type");
            if (rawTypes.Length != count) throw gguf.Bad(at, $"'{Prefix}token_type' has {rawTypes.Length} entries, expected {count} (one per token)");
            for (int i = 0; i < count; i++)
            {
                if (rawTypes[i] is < 0 or > (int)TokenType.Byte) throw gguf.Bad(at, $"'{Prefix}token_type'[{i}] is {rawTypes[i]}, expected 0 to 6");
                types[i] = rawTypes[i] == 0 ? TokenType.Normal : (TokenType)rawTypes[i];
            }
        }

        string[] merges = [];
        if (kind == TokenizerKind.BytePair)
        {
            merges = gguf.GetArray<string>(Prefix + "merges") ?? throw gguf.Bad(-1, $"metadata '{Prefix}merges' is missing (required by the gpt2 tokenizer)");
            for (int i = 0; i < merges.Length; i++)
            {
                int space = merges[i].IndexOf(' ', 1);
                if (space <= 0 || space == merges[i].Length - 1 || merges[i].IndexOf(' ', space + 1) >= 0)
                    throw gguf.Bad(OffsetOf(gguf, Prefix + "merges"), $"'{Prefix}merges'[{i}] is {GgufFile.Quote(merges[i])}, expected two pieces separated by one space");
            }
        }

        return new GgufTokenizerMetadata
        {
            Kind = kind,
            Tokens = tokens,
            Scores = scores ?? new float[count],
            Types = types,
            Merges = merges,
            PreTokenizer = gguf.GetString(Prefix + "pre"),
            PreTokenizerOffset = OffsetOf(gguf, Prefix + "pre"),
            BosId = ReadId(gguf, "bos_token_id", count),
            EosId = ReadId(gguf, "eos_token_id", count),
            EotId = ReadId(gguf, "eot_token_id", count),
            EomId = ReadId(gguf, "eom_token_id", count),
            UnknownId = ReadId(gguf, "unknown_token_id", count),
            PaddingId = ReadId(gguf, "padding_token_id", count),
            // NOTE: llama.cpp's defaults when the keys are absent: SentencePiece adds BOS and a dummy prefix, GPT-2 neither.
            AddBos = gguf.GetBool(Prefix + "add_bos_token") ?? kind == TokenizerKind.SentencePiece,
            AddEos = gguf.GetBool(Prefix + "add_eos_token") ?? false,
            AddSpacePrefix = gguf.GetBool(Prefix + "add_space_prefix") ?? kind == TokenizerKind.SentencePiece,
        };
    }

    /// <summary>Reads an optional token id; absent, -1 and 0xFFFFFFFF (how converters write "none") give null.</summary>
    private static int? ReadId(GgufFile gguf, string name, int count)
    {
        string key = Prefix + name;
        long? value = gguf.GetInteger(key);
        if (value is null or -1 or 0xFFFFFFFF) return null;
        if (value < 0 || value >= count)
            throw gguf.Bad(OffsetOf(gguf, key), $"'{key}' is {value}, outside the vocabulary of {count} tokens");
        return (int)value.Value;
    }

    /// <summary>Byte offset of the value of <paramref name="key"/>, or -1 when absent.</summary>
    public static long OffsetOf(GgufFile gguf, string key) => gguf.Metadata.TryGetValue(key, out var v) ? v.Offset : -1;
}
