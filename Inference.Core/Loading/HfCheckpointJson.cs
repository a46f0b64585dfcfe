using System.Text.Json;

namespace Inference.Loading;

/// <summary>
/// Bounded reading of the small JSON files of a Hugging Face checkpoint (<c>config.json</c>, <c>tokenizer.json</c>, …):
/// size and nesting limits, and typed accessors whose failures are <see cref="ModelFormatException"/>s naming the file and key.
/// </summary>
internal static class HfCheckpointJson
{
    /// <summary>Largest accepted configuration file (config, generation config, tokenizer config, index).</summary>
    public const long MaxConfigBytes = 16L << 20;
    /// <summary>Largest accepted <c>tokenizer.json</c> (large vocabularies with merges reach tens of MiB).</summary>
    public const long MaxTokenizerBytes = 256L << 20;
    /// <summary>Deepest accepted JSON nesting.</summary>
    public const int MaxDepth = 64;

    /// <summary>Parses <paramref name="path"/>, or returns null when it does not exist and <paramref name="optional"/>.</summary>
    public static JsonDocument? Load(string path, long maxBytes, bool optional)
    {
        if (!File.Exists(path))
        {
            if (optional) return null;
            throw new ModelFormatException(path, -1, "file is missing");
        }
        long length = MappedMemory.FileOf(path).Length;
        if (length > maxBytes) throw new ModelFormatException(path, -1, $"file is {length} bytes, more than the limit of {maxBytes}");
        byte[] bytes = File.ReadAllBytes(path);
        try
        {
            return JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = MaxDepth, CommentHandling = JsonCommentHandling.Disallow });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, e.BytePositionInLine is long p && e.LineNumber == 0 ? p : -1, $"malformed JSON: {e.Message}");
        }
    }

    /// <summary>The property <paramref name="key"/> of object <paramref name="obj"/>, or null when absent or JSON null.</summary>
    public static JsonElement? Find(JsonElement obj, string key) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    /// <summary>An integer in [<paramref name="min"/>, <paramref name="max"/>], or null when absent.</summary>
    public static int? Int(string path, JsonElement obj, string key, int min, int max)
    {
        if (Find(obj, key) is not JsonElement v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long n))
            throw new ModelFormatException(path, -1, $"'{key}' is {v.ValueKind} {Shorten(v)}, expected an integer");
        if (n < min || n > max) throw new ModelFormatException(path, -1, $"'{key}' = {n} is outside [{min}, {max}]");
        return (int)n;
    }

    /// <summary>A required integer in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public static int RequiredInt(string path, JsonElement obj, string key, int min, int max) =>
        Int(path, obj, key, min, max) ?? throw new ModelFormatException(path, -1, $"'{key}' is missing");

    /// <summary>A finite number, or null when absent.</summary>
    public static double? Number(string path, JsonElement obj, string key)
    {
        if (Find(obj, key) is not JsonElement v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d) || !double.IsFinite(d))
            throw new ModelFormatException(path, -1, $"'{key}' is {v.ValueKind} {Shorten(v)}, expected a finite number");
        return d;
    }

    /// <summary>A string, or null when absent.</summary>
    public static string? String(string path, JsonElement obj, string key)
    {
        if (Find(obj, key) is not JsonElement v) return null;
        if (v.ValueKind != JsonValueKind.String) throw new ModelFormatException(path, -1, $"'{key}' is {v.ValueKind}, expected a string");
        return v.GetString();
    }

    /// <summary>A bool, or null when absent.</summary>
    public static bool? Bool(string path, JsonElement obj, string key)
    {
        if (Find(obj, key) is not JsonElement v) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ModelFormatException(path, -1, $"'{key}' is {v.ValueKind}, expected true or false"),
        };
    }

    /// <summary>One integer or a list of integers (as <c>eos_token_id</c> may be), each in [0, <paramref name="max"/>]; empty when absent.</summary>
    public static int[] IntOrList(string path, JsonElement obj, string key, int max)
    {
        if (Find(obj, key) is not JsonElement v) return [];
        if (v.ValueKind == JsonValueKind.Number) return [Int(path, obj, key, 0, max)!.Value];
        if (v.ValueKind != JsonValueKind.Array) throw new ModelFormatException(path, -1, $"'{key}' is {v.ValueKind}, expected an integer or a list of integers");
        var result = new int[v.GetArrayLength()];
        int i = 0;
        foreach (var e in v.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long n) || n < 0 || n > max)
                throw new ModelFormatException(path, -1, $"'{key}'[{i}] is {Shorten(e)}, expected an integer in [0, {max}]");
            result[i++] = (int)n;
        }
        return result;
    }

    private static string Shorten(JsonElement e)
    {
        string raw = e.GetRawText();
        return raw.Length <= 40 ? raw : raw[..40] + "…";
    }
}
