using System.Text.Json;
using Inference.Loading;
using static Inference.Loading.HfCheckpointJson;

namespace Inference.Tokenization;

/// <summary>
/// Builds a <see cref="ModelTokenizer"/> from a Hugging Face <c>tokenizer.json</c> (and <c>tokenizer_config.json</c>):
/// byte-level BPE (GPT-2, Llama 3, Qwen2: <c>ByteLevel</c> pre-tokenizer, optionally after a <c>Split</c> regex) and the
/// SentencePiece-derived BPE of Llama 2 (<c>▁</c> for spaces, <c>byte_fallback</c>).
/// </summary>
/// <remarks>
/// NOTE: rather than a second encoder, the file is translated into the <c>tokenizer.ggml.*</c> keys llama.cpp's converter
/// writes, and those go through <see cref="ModelTokenizer.FromGguf"/> — one validation and encoding path for both
/// formats. Byte-level BPE runs on Microsoft.ML.Tokenizers' <c>BpeTokenizer</c> there. For the SentencePiece-derived
/// kind, <c>tokenizer.json</c> has merges but no piece scores; a piece's score is minus the rank of the first merge that
/// produces it, which orders the merges exactly as the file does (the merges of such files were generated from the
/// SentencePiece scores in that order).
/// Differences to Hugging Face's own tokenizers: normalizers other than the SentencePiece space handling (Qwen2's NFC)
/// are not applied, <c>ignore_merges</c> (Llama 3: a pre-token that is itself a token is not merged) is left to the
/// BPE encoder, and special-token texts in the input are encoded as plain text.
/// </remarks>
public static class HfTokenizerJson
{
    // The Split regexes of known byte-level tokenizers, and the pre-tokenizer names ModelTokenizer knows them by.
    private static readonly (string Regex, string Name)[] KnownSplitRegexes =
    [
        (@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", "llama-bpe"),
        (@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", "qwen2"),
        (@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", "gpt-2"),
    ];

    /// <summary>
    /// Loads <paramref name="tokenizerJsonPath"/> with the settings of <paramref name="config"/> (from
    /// <c>tokenizer_config.json</c>; may be null).
    /// </summary>
    /// <param name="tokenizerJsonPath">The <c>tokenizer.json</c> file.</param>
    /// <param name="config">Special tokens and BOS/EOS settings, or null.</param>
    /// <param name="minimumVocabularySize">
    /// The model's vocabulary size: ids up to it that the file does not define become unused placeholder tokens, so every
    /// id the model can produce decodes.
    /// </param>
    /// <exception cref="ModelFormatException">The file is missing, malformed, or a kind of tokenizer not supported here.</exception>
    public static ModelTokenizer Load(string tokenizerJsonPath, HfTokenizerJsonConfig? config, int minimumVocabularySize = 0)
    {
        using var gguf = LoadAsGguf(tokenizerJsonPath, config, minimumVocabularySize);
        return ModelTokenizer.FromGguf(gguf);
    }

    /// <summary>The tokenizer as in-memory GGUF tokenizer metadata (<c>tokenizer.ggml.*</c>, and the chat template when the config has one).</summary>
    internal static GgufFile LoadAsGguf(string tokenizerJsonPath, HfTokenizerJsonConfig? config, int minimumVocabularySize)
    {
        var data = Parse(tokenizerJsonPath, config, minimumVocabularySize);
        using var stream = new MemoryStream();
        using (var w = new GgufWriter(stream))
        {
            AddGgufMetadata(w, data);
            if (config?.ChatTemplate is { Length: > 0 } template) w.AddString("tokenizer.chat_template", template);
            w.WriteHeader();
            w.Complete();
        }
        // NOTE: errors found by the GGUF validation name tokenizer.json; their offsets refer to the translated keys.
        return GgufFile.OpenBuffer(stream.ToArray(), tokenizerJsonPath);
    }

    /// <summary>The contents of a <c>tokenizer.json</c> as GGUF tokenizer metadata.</summary>
    internal sealed record Data(
        string Model, string? Pre, string[] Tokens, float[]? Scores, int[] Types, string[]? Merges,
        int? BosId, int? EosId, int? UnknownId, int? PaddingId, bool AddBos, bool AddEos, bool? AddSpacePrefix);

    /// <summary>Writes <paramref name="data"/> as <c>tokenizer.ggml.*</c> keys.</summary>
    internal static void AddGgufMetadata(GgufWriter w, Data data)
    {
        const string P = "tokenizer.ggml.";
        w.AddString(P + "model", data.Model);
        if (data.Pre is not null) w.AddString(P + "pre", data.Pre);
        w.AddStringArray(P + "tokens", data.Tokens);
        if (data.Scores is not null) w.AddArray<float>(P + "scores", data.Scores);
        w.AddArray<int>(P + "token_type", data.Types);
        if (data.Merges is not null) w.AddStringArray(P + "merges", data.Merges);
        if (data.BosId is int bos) w.AddUInt32(P + "bos_token_id", (uint)bos);
        if (data.EosId is int eos) w.AddUInt32(P + "eos_token_id", (uint)eos);
        if (data.UnknownId is int unk) w.AddUInt32(P + "unknown_token_id", (uint)unk);
        if (data.PaddingId is int pad) w.AddUInt32(P + "padding_token_id", (uint)pad);
        w.AddBool(P + "add_bos_token", data.AddBos);
        w.AddBool(P + "add_eos_token", data.AddEos);
        if (data.AddSpacePrefix is bool prefix) w.AddBool(P + "add_space_prefix", prefix);
    }

    /// <summary>Reads and validates <paramref name="path"/>.</summary>
    internal static Data Parse(string path, HfTokenizerJsonConfig? config, int minimumVocabularySize)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        using var doc = HfCheckpointJson.Load(path, MaxTokenizerBytes, optional: false)!;
        var root = doc.RootElement;
        ModelFormatException Bad(string reason) => new(path, -1, reason);

        if (Find(root, "model") is not JsonElement model || model.ValueKind != JsonValueKind.Object) throw Bad("'model' is missing");
        string type = String(path, model, "type") ?? "BPE";
        if (type != "BPE") throw Bad($"unsupported tokenizer model type '{type}' (supported: BPE)");
        bool byteFallback = Bool(path, model, "byte_fallback") ?? false;

        // ---- vocabulary: model.vocab plus added_tokens -----------------------------------------------------------------
        if (Find(model, "vocab") is not JsonElement vocab || vocab.ValueKind != JsonValueKind.Object) throw Bad("'model.vocab' is missing");
        var byId = new Dictionary<int, string>();
        var byText = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in vocab.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0)
                throw Bad($"'model.vocab' gives '{entry.Name}' the id {entry.Value.GetRawText()}, expected a non-negative integer");
            if (!byText.TryAdd(entry.Name, id)) throw Bad($"token '{entry.Name}' appears twice in 'model.vocab'");
            if (!byId.TryAdd(id, entry.Name)) throw Bad($"id {id} is given to both '{byId[id]}' and '{entry.Name}'");
        }
        var special = new HashSet<int>();
        var added = new HashSet<int>();
        if (Find(root, "added_tokens") is JsonElement addedTokens)
        {
            if (addedTokens.ValueKind != JsonValueKind.Array) throw Bad("'added_tokens' is not a list");
            foreach (var t in addedTokens.EnumerateArray())
            {
                int id = Int(path, t, "id", 0, int.MaxValue) ?? throw Bad("an entry of 'added_tokens' has no 'id'");
                string content = String(path, t, "content") ?? throw Bad($"added token {id} has no 'content'");
                if (byId.TryGetValue(id, out var existing) && existing != content)
                    throw Bad($"added token {id} '{content}' collides with vocabulary token '{existing}'");
                if (byText.TryGetValue(content, out int other) && other != id)
                    throw Bad($"added token '{content}' has id {id}, but the vocabulary gives it {other}");
                byId[id] = content;
                byText[content] = id;
                added.Add(id);
                if (Bool(path, t, "special") ?? false) special.Add(id);
            }
        }
        if (byId.Count == 0) throw Bad("the vocabulary is empty");
        int maxId = byId.Keys.Max();
        if (maxId >= 1 << 24) throw Bad($"token id {maxId} is too large");
        int count = Math.Max(maxId + 1, minimumVocabularySize);

        // ---- merges ----------------------------------------------------------------------------------------------------
        if (Find(model, "merges") is not JsonElement mergesElement || mergesElement.ValueKind != JsonValueKind.Array)
            throw Bad("'model.merges' is missing");
        var merges = new string[mergesElement.GetArrayLength()];
        int m = 0;
        foreach (var e in mergesElement.EnumerateArray())
        {
            string merge;
            if (e.ValueKind == JsonValueKind.String) merge = e.GetString()!;
            else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2 && e[0].ValueKind == JsonValueKind.String && e[1].ValueKind == JsonValueKind.String)
            {
                string left = e[0].GetString()!, right = e[1].GetString()!;
                if (left.Contains(' ') || right.Contains(' ')) throw Bad($"merge {m} ['{left}', '{right}'] has a piece with a space, which GGUF merges cannot express");
                merge = left + " " + right;
            }
            else throw Bad($"merge {m} is neither \"left right\" nor [left, right]");
            int space = merge.IndexOf(' ', 1);
            if (space <= 0 || space == merge.Length - 1 || merge.IndexOf(' ', space + 1) >= 0)
                throw Bad($"merge {m} '{merge}' is not two pieces separated by one space");
            // NOTE: as in Hugging Face's own loader, both pieces and their concatenation must be tokens.
            string leftPiece = merge[..space], rightPiece = merge[(space + 1)..];
            if (!byText.ContainsKey(leftPiece) || !byText.ContainsKey(rightPiece) || !byText.ContainsKey(leftPiece + rightPiece))
                throw Bad($"merge {m} '{merge}' uses or produces a piece that is not in the vocabulary");
            merges[m++] = merge;
        }

        // ---- which family --------------------------------------------------------------------------------------------
        var preTokenizers = Flatten(Find(root, "pre_tokenizer"), "pretokenizers");
        var normalizers = Flatten(Find(root, "normalizer"), "normalizers");
        bool byteLevel = preTokenizers.Any(p => TypeOf(p) == "ByteLevel");
        bool metaspace = preTokenizers.Any(p => TypeOf(p) == "Metaspace")
            || normalizers.Any(n => TypeOf(n) == "Replace" && IsSpaceToMetaspace(n))
            || byteFallback;

        // NOTE: without tokenizer_config.json, the special token a TemplateProcessing post-processor puts first (Llama 2's
        // "<s>") is taken as BOS, as transformers does when it adds it.
        var (firstSpecial, lastSpecial) = TemplateSpecialTokens(path, Find(root, "post_processor"));
        string? bosText = config?.BosToken ?? firstSpecial, eosText = config?.EosToken;
        string? unkText = String(path, model, "unk_token") ?? config?.UnknownToken;
        int? IdOf(string? text, string what)
        {
            if (text is null) return null;
            return byText.TryGetValue(text, out int id) ? id : throw Bad($"the {what} token '{text}' is not in the vocabulary");
        }
        int? bosId = IdOf(bosText, "BOS"), eosId = IdOf(eosText, "EOS"), unkId = IdOf(unkText, "unknown");
        int? padId = config?.PaddingToken is string padText && byText.TryGetValue(padText, out int pid) ? pid : null;
        bool? templateBos = firstSpecial is null && lastSpecial is null && !HasTemplate(Find(root, "post_processor")) ? null : firstSpecial is not null && firstSpecial == bosText;
        bool? templateEos = templateBos is null ? null : lastSpecial is not null && lastSpecial == eosText;

        var tokens = new string[count];
        var types = new int[count];
        for (int id = 0; id < count; id++)
        {
            if (byId.TryGetValue(id, out var text))
            {
                tokens[id] = text;
                types[id] = id == unkId ? (int)TokenType.Unknown
                    : special.Contains(id) ? (int)TokenType.Control
                    : added.Contains(id) ? (int)TokenType.UserDefined
                    : metaspace && byteFallback && IsByteToken(text) ? (int)TokenType.Byte
                    : (int)TokenType.Normal;
            }
            else
            {
                // NOTE: llama.cpp's converter fills ids the file skips with "[PAD{id}]" placeholders of type unused.
                string pad = $"[PAD{id}]";
                if (byText.ContainsKey(pad)) throw Bad($"cannot name unused id {id}: '{pad}' is already a token");
                tokens[id] = pad;
                types[id] = (int)TokenType.Unused;
            }
        }

        if (byteLevel)
        {
            string pre = "gpt-2";
            foreach (var p in preTokenizers)
            {
                if (TypeOf(p) != "Split") continue;
                string? regex = Find(p, "pattern") is JsonElement pattern ? String(path, pattern, "Regex") : null;
                if (regex is null) throw Bad("a 'Split' pre-tokenizer without a 'pattern.Regex' is not supported");
                pre = Array.Find(KnownSplitRegexes, k => k.Regex == regex).Name
                    ?? throw Bad($"unsupported pre-tokenizer regex '{regex}' (supported: the Llama 3, Qwen2 and GPT-2 patterns)");
            }
            return new Data("gpt2", pre, tokens, null, types, merges, bosId, eosId, unkId, padId,
                AddBos: config?.AddBosToken ?? templateBos ?? false,
                AddEos: config?.AddEosToken ?? templateEos ?? false,
                AddSpacePrefix: null);
        }
        if (!metaspace)
            throw Bad("unsupported tokenizer: neither byte-level BPE (a ByteLevel pre-tokenizer) nor SentencePiece-style BPE (Metaspace or byte_fallback)");

        // Scores: minus the rank of the first merge producing each piece; pieces no merge produces rank after all merges.
        var scores = new float[count];
        var rank = new Dictionary<string, int>(merges.Length, StringComparer.Ordinal);
        for (int r = 0; r < merges.Length; r++) rank.TryAdd(merges[r].Replace(" ", "", StringComparison.Ordinal), r);
        for (int id = 0; id < count; id++)
            scores[id] = rank.TryGetValue(tokens[id], out int r) ? -r : -(merges.Length + id);

        bool addPrefix = normalizers.Any(n => TypeOf(n) == "Prepend" && String(path, n, "prepend") == "▁")
            || preTokenizers.Any(p => TypeOf(p) == "Metaspace" && String(path, p, "prepend_scheme") is not "never" && Bool(path, p, "add_prefix_space") != false);
        return new Data("llama", "default", tokens, scores, types, null, bosId, eosId, unkId, padId,
            AddBos: config?.AddBosToken ?? templateBos ?? true,
            AddEos: config?.AddEosToken ?? templateEos ?? false,
            AddSpacePrefix: addPrefix);
    }

    private static string? TypeOf(JsonElement e) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;

    /// <summary>A component and, for a <c>Sequence</c>, its members (one level).</summary>
    private static List<JsonElement> Flatten(JsonElement? element, string listKey)
    {
        var result = new List<JsonElement>();
        if (element is not JsonElement e) return result;
        if (TypeOf(e) == "Sequence" && e.TryGetProperty(listKey, out var list) && list.ValueKind == JsonValueKind.Array)
            result.AddRange(list.EnumerateArray());
        else result.Add(e);
        return result;
    }

    private static bool IsSpaceToMetaspace(JsonElement replace) =>
        replace.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String && c.GetString() == "▁"
        && replace.TryGetProperty("pattern", out var p) && p.ValueKind == JsonValueKind.Object
        && p.TryGetProperty("String", out var s) && s.ValueKind == JsonValueKind.String && s.GetString() == " ";

    private static bool IsByteToken(string text) =>
        text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>' && Uri.IsHexDigit(text[3]) && Uri.IsHexDigit(text[4]);

    /// <summary>
    /// The special tokens a <c>TemplateProcessing</c> post-processor puts first and last around a single sequence (how
    /// Llama 2 and Llama 3 tokenizer.json files add BOS); nulls when there is none.
    /// </summary>
    private static (string? First, string? Last) TemplateSpecialTokens(string path, JsonElement? postProcessor)
    {
        foreach (var p in Flatten(postProcessor, "processors"))
        {
            if (TypeOf(p) != "TemplateProcessing" || Find(p, "single") is not JsonElement single || single.ValueKind != JsonValueKind.Array) continue;
            int n = single.GetArrayLength();
            if (n == 0) return (null, null);
            string? SpecialId(JsonElement item) => Find(item, "SpecialToken") is JsonElement st ? String(path, st, "id") : null;
            return (SpecialId(single[0]), SpecialId(single[n - 1]));
        }
        return (null, null);
    }

    private static bool HasTemplate(JsonElement? postProcessor) =>
        Flatten(postProcessor, "processors").Any(p => TypeOf(p) == "TemplateProcessing");
}
