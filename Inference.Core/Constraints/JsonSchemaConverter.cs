using System.Text;
using System.Text.Json;

namespace Inference.Constraints;

/// <summary>
/// Converts a JSON Schema into a GBNF grammar whose strings are exactly JSON texts that validate (for the supported
/// keywords), compactly spaced.
/// </summary>
/// <remarks>
/// Supported: <c>type</c> (one or a list), <c>properties</c>/<c>required</c> (properties in schema order, optional ones
/// may be left out), <c>additionalProperties</c> (a schema or <c>true</c> on an object without properties makes a
/// map; otherwise no extra properties are generated), <c>items</c>, <c>prefixItems</c>, <c>minItems</c>,
/// <c>maxItems</c>, <c>enum</c>, <c>const</c>, <c>anyOf</c>, <c>oneOf</c>, <c>allOf</c> of one schema, <c>$ref</c> to
/// <c>#/$defs/…</c> or <c>#/definitions/…</c> (recursion allowed), <c>nullable</c>, string <c>minLength</c>,
/// <c>maxLength</c>, <c>pattern</c> and the formats <c>date</c>, <c>time</c>, <c>date-time</c> and <c>uuid</c>.
/// Ignored (accepted, not enforced): numeric bounds, <c>multipleOf</c>, other formats and annotations.
/// NOTE: numbers are limited to 16 integer and 16 fraction digits and whitespace to one newline plus 20 spaces or
/// tabs between tokens, so that a model cannot loop on either.
/// </remarks>
internal sealed class JsonSchemaConverter
{
    private const string CommonRules = """
        ws ::= ( " " | "\n" [ \t]{0,20} )?
        json-char ::= [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" ( [0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2} ) )
        json-string ::= "\"" json-char* "\""
        json-integer ::= "-"? ( "0" | [1-9] [0-9]{0,15} )
        json-number ::= json-integer ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?
        json-boolean ::= "true" | "false"
        json-null ::= "null"
        json-value ::= json-object | json-array | json-string | json-number | json-boolean | json-null
        json-object ::= "{" ws ( json-string ws ":" ws json-value ws ( "," ws json-string ws ":" ws json-value ws )* )? "}"
        json-array ::= "[" ws ( json-value ws ( "," ws json-value ws )* )? "]"

        """;

    private readonly StringBuilder _rules = new();
    private readonly JsonElement _root;
    private readonly Dictionary<string, string> _refs = new(StringComparer.Ordinal);
    private int _next;

    private JsonSchemaConverter(JsonElement root) => _root = root;

    /// <summary>The GBNF grammar for <paramref name="schema"/> (root rule <c>root</c>).</summary>
    /// <exception cref="InvalidConstraintException">The schema is not JSON or uses something that cannot be enforced.</exception>
    public static string ToGbnf(string schema)
    {
        ArgumentNullException.ThrowIfNull(schema);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(schema); }
        catch (JsonException e) { throw new InvalidConstraintException($"the JSON schema is not valid JSON: {e.Message}", e); }
        using (doc) return ToGbnf(doc.RootElement);
    }

    /// <summary>The GBNF grammar for <paramref name="schema"/> (root rule <c>root</c>).</summary>
    public static string ToGbnf(JsonElement schema, string rootName = "root")
    {
        var c = new JsonSchemaConverter(schema);
        string root = c.Visit(schema, rootName);
        return CommonRules + c._rules + rootName + " ::= " + root + "\n";
    }

    /// <summary>The GBNF grammar accepting any JSON object.</summary>
    public static string JsonObjectGbnf() => CommonRules + "root ::= json-object\n";

    private string NewRule(string hint, string body)
    {
        var name = new StringBuilder();
        foreach (char ch in hint) name.Append(char.IsAsciiLetterOrDigit(ch) ? ch : '-');
        if (name.Length > 40) name.Length = 40;
        string rule = $"s{_next++}-{name}";
        _rules.Append(rule).Append(" ::= ").Append(body).Append('\n');
        return rule;
    }

    /// <summary>A GBNF expression (one element: a rule name or a parenthesized group) for <paramref name="schema"/>.</summary>
    private string Visit(JsonElement schema, string hint)
    {
        if (schema.ValueKind == JsonValueKind.True) return "json-value";
        if (schema.ValueKind == JsonValueKind.False) throw new InvalidConstraintException($"schema '{hint}' is false: nothing validates");
        if (schema.ValueKind != JsonValueKind.Object) throw new InvalidConstraintException($"schema '{hint}' must be an object or a boolean, not {schema.ValueKind}");

        if (schema.TryGetProperty("$ref", out var reference)) return Ref(reference, hint);
        if (schema.TryGetProperty("const", out var constant)) return Literal(constant);
        if (schema.TryGetProperty("enum", out var values))
        {
            if (values.ValueKind != JsonValueKind.Array || values.GetArrayLength() == 0) throw new InvalidConstraintException($"schema '{hint}': 'enum' must be a non-empty array");
            var alts = new List<string>();
            foreach (var v in values.EnumerateArray()) alts.Add(Literal(v));
            return "(" + string.Join(" | ", alts) + ")";
        }
        foreach (string key in (ReadOnlySpan<string>)["anyOf", "oneOf"])
        {
            if (!schema.TryGetProperty(key, out var list)) continue;
            if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0) throw new InvalidConstraintException($"schema '{hint}': '{key}' must be a non-empty array");
            var alts = new List<string>();
            int i = 0;
            foreach (var s in list.EnumerateArray()) alts.Add(Visit(s, $"{hint}-{i++}"));
            return "(" + string.Join(" | ", alts) + ")";
        }
        if (schema.TryGetProperty("allOf", out var all))
        {
            if (all.ValueKind != JsonValueKind.Array || all.GetArrayLength() != 1) throw new InvalidConstraintException($"schema '{hint}': 'allOf' is supported with exactly one schema");
            return Visit(all[0], hint);
        }

        bool nullable = schema.TryGetProperty("nullable", out var n) && n.ValueKind == JsonValueKind.True;
        var types = new List<string>();
        if (schema.TryGetProperty("type", out var type))
        {
            if (type.ValueKind == JsonValueKind.String) types.Add(type.GetString()!);
            else if (type.ValueKind == JsonValueKind.Array)
            {
                foreach (var t in type.EnumerateArray())
                    types.Add(t.ValueKind == JsonValueKind.String ? t.GetString()! : throw new InvalidConstraintException($"schema '{hint}': 'type' entries must be strings"));
            }
            else throw new InvalidConstraintException($"schema '{hint}': 'type' must be a string or an array of strings");
        }
        else if (schema.TryGetProperty("properties", out _) || schema.TryGetProperty("additionalProperties", out _)) types.Add("object");
        else if (schema.TryGetProperty("items", out _) || schema.TryGetProperty("prefixItems", out _)) types.Add("array");
        else return nullable ? "json-value" : "json-value";
        if (nullable && !types.Contains("null")) types.Add("null");

        var parts = new List<string>();
        foreach (string t in types) parts.Add(VisitType(schema, t, hint));
        return parts.Count == 1 ? parts[0] : "(" + string.Join(" | ", parts) + ")";
    }

    private string VisitType(JsonElement schema, string type, string hint) => type switch
    {
        "object" => ObjectRule(schema, hint),
        "array" => ArrayRule(schema, hint),
        "string" => StringRule(schema, hint),
        "number" => "json-number",
        "integer" => "json-integer",
        "boolean" => "json-boolean",
        "null" => "json-null",
        _ => throw new InvalidConstraintException($"schema '{hint}': unknown type '{type}'"),
    };

    private string Ref(JsonElement reference, string hint)
    {
        string path = reference.ValueKind == JsonValueKind.String ? reference.GetString()! : throw new InvalidConstraintException($"schema '{hint}': '$ref' must be a string");
        if (_refs.TryGetValue(path, out var rule)) return rule;
        if (!path.StartsWith("#/", StringComparison.Ordinal)) throw new InvalidConstraintException($"schema '{hint}': only local references ('#/$defs/...') are supported, not '{path}'");
        var target = _root;
        foreach (string raw in path[2..].Split('/'))
        {
            string part = raw.Replace("~1", "/").Replace("~0", "~");
            if (target.ValueKind != JsonValueKind.Object || !target.TryGetProperty(part, out target))
                throw new InvalidConstraintException($"schema '{hint}': reference '{path}' does not resolve");
        }
        // Declared before it is visited, so a recursive reference finds it.
        string name = $"ref{_next++}";
        _refs.Add(path, name);
        string body = Visit(target, path);
        _rules.Append(name).Append(" ::= ").Append(body).Append('\n');
        return name;
    }

    private string ObjectRule(JsonElement schema, string hint)
    {
        var required = new HashSet<string>(StringComparer.Ordinal);
        if (schema.TryGetProperty("required", out var req))
        {
            if (req.ValueKind != JsonValueKind.Array) throw new InvalidConstraintException($"schema '{hint}': 'required' must be an array");
            foreach (var r in req.EnumerateArray()) required.Add(r.GetString() ?? "");
        }
        var props = new List<(string Name, string Value)>();
        if (schema.TryGetProperty("properties", out var properties))
        {
            if (properties.ValueKind != JsonValueKind.Object) throw new InvalidConstraintException($"schema '{hint}': 'properties' must be an object");
            foreach (var p in properties.EnumerateObject()) props.Add((p.Name, Visit(p.Value, $"{hint}-{p.Name}")));
        }
        foreach (string r in required)
        {
            bool found = false;
            foreach (var p in props) found |= p.Name == r;
            if (!found) throw new InvalidConstraintException($"schema '{hint}': required property '{r}' is not among its properties");
        }
        if (props.Count == 0)
        {
            if (schema.TryGetProperty("additionalProperties", out var extra) && extra.ValueKind == JsonValueKind.False) return "( \"{\" ws \"}\" )";
            if (schema.TryGetProperty("additionalProperties", out extra) && extra.ValueKind == JsonValueKind.Object)
            {
                string value = Visit(extra, hint + "-value");
                return NewRule(hint, $"\"{{\" ws ( json-string ws \":\" ws {value} ws ( \",\" ws json-string ws \":\" ws {value} ws )* )? \"}}\"");
            }
            return "json-object";
        }
        // tail(i, first): the properties from i on; "first" when no property has been written yet (no comma before).
        int count = props.Count;
        var tails = new string[count + 1, 2];
        tails[count, 0] = tails[count, 1] = "\"\"";
        for (int i = count - 1; i >= 0; i--)
        {
            string kv = $"{Literal(props[i].Name)} ws \":\" ws {props[i].Value} ws";
            for (int first = 0; first < 2; first++)
            {
                string present = (first == 1 ? "" : "\",\" ws ") + kv + " " + tails[i + 1, 0];
                string body = required.Contains(props[i].Name) ? present : present + " | " + tails[i + 1, first];
                tails[i, first] = NewRule($"{hint}-{i}{(first == 1 ? "f" : "")}", body);
            }
        }
        return NewRule(hint, $"\"{{\" ws {tails[0, 1]} \"}}\"");
    }

    private string ArrayRule(JsonElement schema, string hint)
    {
        int min = schema.TryGetProperty("minItems", out var mi) ? Count(mi, hint, "minItems") : 0;
        int max = schema.TryGetProperty("maxItems", out var ma) ? Count(ma, hint, "maxItems") : -1;
        if (max >= 0 && max < min) throw new InvalidConstraintException($"schema '{hint}': maxItems {max} is below minItems {min}");
        if (schema.TryGetProperty("prefixItems", out var prefix))
        {
            // A tuple: exactly the prefix items (further items are not generated).
            var elems = new List<string>();
            int i = 0;
            foreach (var s in prefix.EnumerateArray()) elems.Add(Visit(s, $"{hint}-{i++}"));
            if (elems.Count == 0) return "( \"[\" ws \"]\" )";
            return NewRule(hint, "\"[\" ws " + string.Join(" \",\" ws ", elems.Select(e => e + " ws")) + " \"]\"");
        }
        string item = schema.TryGetProperty("items", out var items) ? Visit(items, hint + "-item") : "json-value";
        if (max == 0) return "( \"[\" ws \"]\" )";
        string more = $"( \",\" ws {item} ws )";
        string rest = max < 0 ? $"{more}{{{Math.Max(0, min - 1)},}}" : $"{more}{{{Math.Max(0, min - 1)},{max - 1}}}";
        string list = $"{item} ws {rest}";
        return NewRule(hint, min == 0 ? $"\"[\" ws ( {list} )? \"]\"" : $"\"[\" ws {list} \"]\"");
    }

    private string StringRule(JsonElement schema, string hint)
    {
        if (schema.TryGetProperty("pattern", out var pattern))
        {
            string p = pattern.GetString() ?? "";
            if (p.StartsWith('^')) p = p[1..];
            if (p.EndsWith('$') && !p.EndsWith("\\$", StringComparison.Ordinal)) p = p[..^1];
            return NewRule(hint, $"\"\\\"\" {RegexConverter.ToGbnf(p)} \"\\\"\"");
        }
        if (schema.TryGetProperty("format", out var format))
        {
            string? regex = format.GetString() switch
            {
                "date" => Date,
                "time" => Time,
                "date-time" => Date + "T" + Time,
                "uuid" => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                _ => null,
            };
            if (regex is not null) return NewRule(hint, $"\"\\\"\" {RegexConverter.ToGbnf(regex)} \"\\\"\"");
        }
        int min = schema.TryGetProperty("minLength", out var mi) ? Count(mi, hint, "minLength") : 0;
        int max = schema.TryGetProperty("maxLength", out var ma) ? Count(ma, hint, "maxLength") : -1;
        if (max >= 0 && max < min) throw new InvalidConstraintException($"schema '{hint}': maxLength {max} is below minLength {min}");
        if (min == 0 && max < 0) return "json-string";
        return NewRule(hint, $"\"\\\"\" json-char{{{min},{(max < 0 ? "" : max.ToString())}}} \"\\\"\"");
    }

    private const string Date = "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])";
    private const string Time = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])";

    private static int Count(JsonElement e, string hint, string key)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int v) || v < 0 || v > GrammarBuilder.MaxRepeat)
            throw new InvalidConstraintException($"schema '{hint}': '{key}' must be an integer in [0, {GrammarBuilder.MaxRepeat}]");
        return v;
    }

    /// <summary>A GBNF literal for the compact JSON form of <paramref name="value"/>.</summary>
    private static string Literal(JsonElement value)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            value.WriteTo(writer);
        return GbnfParser.Quote(Encoding.UTF8.GetString(buffer.WrittenSpan));
    }

    /// <summary>A GBNF literal for the JSON string <paramref name="text"/>.</summary>
    private static string Literal(string text) =>
        GbnfParser.Quote(JsonSerializer.Serialize(text, new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
}
