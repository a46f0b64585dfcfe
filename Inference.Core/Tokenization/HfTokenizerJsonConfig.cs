using System.Text.Json;
using Inference.Loading;
using static Inference.Loading.HfCheckpointJson;

namespace Inference.Tokenization;

/// <summary>
/// The parts of a Hugging Face <c>tokenizer_config.json</c> that inference needs: special-token texts, whether BOS/EOS are
/// added, and the chat template.
/// </summary>
public sealed record HfTokenizerJsonConfig
{
    /// <summary>The beginning-of-sequence token text (<c>bos_token</c>), if given.</summary>
    public string? BosToken { get; init; }
    /// <summary>The end-of-sequence token text (<c>eos_token</c>), if given.</summary>
    public string? EosToken { get; init; }
    /// <summary>The unknown token text (<c>unk_token</c>), if given.</summary>
    public string? UnknownToken { get; init; }
    /// <summary>The padding token text (<c>pad_token</c>), if given.</summary>
    public string? PaddingToken { get; init; }
    /// <summary><c>add_bos_token</c>, or null when the file does not say.</summary>
    public bool? AddBosToken { get; init; }
    /// <summary><c>add_eos_token</c>, or null when the file does not say.</summary>
    public bool? AddEosToken { get; init; }
    /// <summary>The chat template (Jinja), if given; of a list of named templates, the one named <c>default</c> or else the first.</summary>
    public string? ChatTemplate { get; init; }

    /// <summary>Reads <paramref name="path"/>; null when the file does not exist.</summary>
    /// <exception cref="ModelFormatException">The file is malformed.</exception>
    public static HfTokenizerJsonConfig? Read(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        using var doc = Load(path, MaxConfigBytes, optional: true);
        if (doc is null) return null;
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, -1, "expected a JSON object");
        return new HfTokenizerJsonConfig
        {
            BosToken = TokenText(path, root, "bos_token"),
            EosToken = TokenText(path, root, "eos_token"),
            UnknownToken = TokenText(path, root, "unk_token"),
            PaddingToken = TokenText(path, root, "pad_token"),
            AddBosToken = Bool(path, root, "add_bos_token"),
            AddEosToken = Bool(path, root, "add_eos_token"),
            ChatTemplate = Template(path, root),
        };
    }

    /// <summary>A special token given as a string or as an added-token object with <c>content</c>.</summary>
    private static string? TokenText(string path, JsonElement root, string key)
    {
        if (Find(root, key) is not JsonElement v) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        if (v.ValueKind == JsonValueKind.Object && String(path, v, "content") is string content) return content;
        throw new ModelFormatException(path, -1, $"'{key}' is {v.ValueKind}, expected a string or an object with 'content'");
    }

    private static string? Template(string path, JsonElement root)
    {
        if (Find(root, "chat_template") is not JsonElement v) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        if (v.ValueKind != JsonValueKind.Array) throw new ModelFormatException(path, -1, "'chat_template' is neither a string nor a list");
        string? first = null;
        foreach (var item in v.EnumerateArray())
        {
            string? name = String(path, item, "name");
            string? template = String(path, item, "template");
            if (template is null) continue;
            if (name == "default") return template;
            first ??= template;
        }
        return first;
    }
}
