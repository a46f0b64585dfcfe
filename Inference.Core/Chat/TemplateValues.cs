using System.Collections;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;

namespace Inference.Chat;

/// <summary>Jinja's undefined value: what a missing variable, key or index evaluates to. Renders as "".</summary>
internal sealed class TemplateUndefined
{
    public static TemplateUndefined Instance { get; } = new();

    private TemplateUndefined() { }

    public override string ToString() => "";
}

/// <summary>The object <c>namespace(...)</c> returns: attributes that <c>{% set ns.x = … %}</c> may change from inside a loop.</summary>
internal sealed class TemplateNamespace : Dictionary<string, object?>
{
    public TemplateNamespace() : base(StringComparer.Ordinal) { }
}

/// <summary>A function or bound method callable from a template.</summary>
internal delegate object? TemplateCallable(List<object?> positional, Dictionary<string, object?> named);

/// <summary>
/// The value model of the template interpreter, with Python semantics: null is <c>none</c>, strings, <see cref="long"/>
/// and <see cref="double"/> numbers, <see cref="bool"/>, <see cref="List{T}"/> of values, string-keyed
/// <see cref="Dictionary{TKey, TValue}"/>, <see cref="TemplateUndefined"/> and <see cref="TemplateCallable"/>.
/// </summary>
internal static class TemplateValues
{
    /// <summary>
    /// How deeply lists and dictionaries may nest when a value is printed, serialized or compared. A template can build a
    /// list that holds itself (<c>x.append(x)</c>) or nest one a hundred thousand deep in a loop; walking either without
    /// a bound would overflow the stack, which ends the process.
    /// </summary>
    /// <remarks>NOTE: real values nest a few levels (tool schemas a few dozen at most; request JSON stops at 64).</remarks>
    public const int MaxNesting = 256;

    private static void Nest(int depth)
    {
        if (depth > MaxNesting) throw new ChatTemplateException($"the chat template builds a value nested more than {MaxNesting} deep (or one that contains itself)");
        RuntimeHelpers.EnsureSufficientExecutionStack();
    }

    /// <summary>Template values of JSON text: objects as mappings, arrays as lists; text that is not JSON stays a string.</summary>
    public static object? FromJsonText(string json)
    {
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(json);
            return FromJson(doc.RootElement);
        }
        catch (System.Text.Json.JsonException)
        {
            return json;
        }
    }

    /// <summary>Template values of a JSON element.</summary>
    public static object? FromJson(System.Text.Json.JsonElement e)
    {
        switch (e.ValueKind)
        {
            case System.Text.Json.JsonValueKind.Object:
                var map = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var p in e.EnumerateObject()) map[p.Name] = FromJson(p.Value);
                return map;
            case System.Text.Json.JsonValueKind.Array:
                var list = new List<object?>();
                foreach (var item in e.EnumerateArray()) list.Add(FromJson(item));
                return list;
            case System.Text.Json.JsonValueKind.String: return e.GetString();
            case System.Text.Json.JsonValueKind.Number: return e.TryGetInt64(out long l) ? l : (object)e.GetDouble(); // NOTE: the cast keeps integers long (a bare conditional would widen them to double)
            case System.Text.Json.JsonValueKind.True: return true;
            case System.Text.Json.JsonValueKind.False: return false;
            default: return null;
        }
    }

    /// <summary>Converts a .NET value handed in by the caller into the value model.</summary>
    public static object? FromClr(object? value) => value switch
    {
        null => null,
        string or bool or long or double or TemplateUndefined or TemplateCallable => value,
        int i => (long)i,
        short s => (long)s,
        byte b => (long)b,
        uint u => (long)u,
        float f => (double)f,
        decimal m => (double)m,
        Enum e => e.ToString(),
        IDictionary dictionary => ToDictionary(dictionary),
        IEnumerable<KeyValuePair<string, object?>> pairs => ToDictionary(pairs),
        IEnumerable items => ToList(items),
        _ => value.ToString(),
    };

    private static Dictionary<string, object?> ToDictionary(IDictionary dictionary)
    {
        var result = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (DictionaryEntry entry in dictionary) result[Convert.ToString(entry.Key, CultureInfo.InvariantCulture)!] = FromClr(entry.Value);
        return result;
    }

    private static Dictionary<string, object?> ToDictionary(IEnumerable<KeyValuePair<string, object?>> pairs)
    {
        var result = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (key, value) in pairs) result[key] = FromClr(value);
        return result;
    }

    private static List<object?> ToList(IEnumerable items)
    {
        var result = new List<object?>();
        foreach (var item in items) result.Add(FromClr(item));
        return result;
    }

    public static bool IsTruthy(object? value) => value switch
    {
        null or TemplateUndefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        ICollection c => c.Count > 0,
        _ => true,
    };

    /// <summary>Python's <c>str(value)</c>, as <c>{{ }}</c>, <c>~</c> and <c>| string</c> render it.</summary>
    public static string ToText(object? value) => value switch
    {
        string s => s,
        TemplateUndefined => "",
        _ => Repr(value, topLevel: true),
    };

    /// <summary>Python's <c>repr(value)</c> (strings quoted), used inside lists and dictionaries.</summary>
    public static string Repr(object? value, bool topLevel = false) => Repr(value, topLevel, 0);

    private static string Repr(object? value, bool topLevel, int depth)
    {
        switch (value)
        {
            case null: return "None";
            case TemplateUndefined: return "";
            case bool b: return b ? "True" : "False";
            case long l: return l.ToString(CultureInfo.InvariantCulture);
            case double d: return FormatDouble(d);
            case string s: return topLevel ? s : "'" + s.Replace("\\", "\\\\").Replace("'", "\\'").Replace("\n", "\\n") + "'";
            case Dictionary<string, object?> dictionary:
            {
                Nest(depth + 1);
                var sb = TemplateLimits.NewBuilder().Append('{');
                foreach (var (key, item) in dictionary)
                {
                    if (sb.Length > 1) sb.Append(", ");
                    sb.Append(Repr(key)).Append(": ").Append(Repr(item, false, depth + 1));
                }
                return sb.Append('}').ToString();
            }
            case List<object?> list:
            {
                Nest(depth + 1);
                var sb = TemplateLimits.NewBuilder().Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    sb.Append(Repr(list[i], false, depth + 1));
                }
                return sb.Append(']').ToString();
            }
            default: return value.ToString() ?? "";
        }
    }

    private static string FormatDouble(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        string s = d.ToString("R", CultureInfo.InvariantCulture);
        return s.Contains('.') || s.Contains('E') ? s : s + ".0";
    }

    /// <summary>JSON text of a value the way Hugging Face's <c>tojson</c> writes it (<c>json.dumps</c>, non-ASCII kept).</summary>
    public static string ToJson(object? value, int? indent)
    {
        var sb = TemplateLimits.NewBuilder();
        WriteJson(sb, value, indent, 0);
        return sb.ToString();
    }

    private static void WriteJson(StringBuilder sb, object? value, int? indent, int depth)
    {
        switch (value)
        {
            case null or TemplateUndefined: sb.Append("null"); break;
            case bool b: sb.Append(b ? "true" : "false"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(double.IsFinite(d) ? FormatDouble(d) : d > 0 ? "Infinity" : d < 0 ? "-Infinity" : "NaN"); break;
            case string s: WriteJsonString(sb, s); break;
            case Dictionary<string, object?> dictionary:
            {
                if (dictionary.Count == 0) { sb.Append("{}"); break; }
                Nest(depth + 1);
                sb.Append('{');
                bool first = true;
                foreach (var (key, item) in dictionary)
                {
                    if (!first) sb.Append(indent is null ? ", " : ",");
                    first = false;
                    NewLine(sb, indent, depth + 1);
                    WriteJsonString(sb, key);
                    sb.Append(": ");
                    WriteJson(sb, item, indent, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append('}');
                break;
            }
            case List<object?> list:
            {
                if (list.Count == 0) { sb.Append("[]"); break; }
                Nest(depth + 1);
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(indent is null ? ", " : ",");
                    NewLine(sb, indent, depth + 1);
                    WriteJson(sb, list[i], indent, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append(']');
                break;
            }
            default: WriteJsonString(sb, value.ToString() ?? ""); break;
        }
    }

    private static void NewLine(StringBuilder sb, int? indent, int depth)
    {
        if (indent is int n) sb.Append('\n').Append(' ', n * depth);
    }

    private static void WriteJsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>Python equality: numbers by value (1 == 1.0), strings ordinally, lists and dictionaries by content.</summary>
    public static bool AreEqual(object? a, object? b) => AreEqual(a, b, 0);

    private static bool AreEqual(object? a, object? b, int depth)
    {
        if (a is null || b is null) return a is null && b is null;
        if (a is TemplateUndefined || b is TemplateUndefined) return a is TemplateUndefined && b is TemplateUndefined;
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is bool x && b is bool y) return x == y;
            return ToDouble(a) == ToDouble(b);
        }
        if (a is string sa && b is string sb) return string.Equals(sa, sb, StringComparison.Ordinal);
        if (a is List<object?> la && b is List<object?> lb)
        {
            if (ReferenceEquals(la, lb)) return true; // as Python compares a container with itself
            if (la.Count != lb.Count) return false;
            Nest(depth + 1);
            for (int i = 0; i < la.Count; i++)
                if (!AreEqual(la[i], lb[i], depth + 1)) return false;
            return true;
        }
        if (a is Dictionary<string, object?> da && b is Dictionary<string, object?> db)
        {
            if (ReferenceEquals(da, db)) return true;
            if (da.Count != db.Count) return false;
            Nest(depth + 1);
            foreach (var (key, value) in da)
                if (!db.TryGetValue(key, out var other) || !AreEqual(value, other, depth + 1)) return false;
            return true;
        }
        return ReferenceEquals(a, b);
    }

    public static bool IsNumber(object? value) => value is long or double or bool;

    public static double ToDouble(object? value) => value switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new ChatTemplateException($"expected a number, got {TypeName(value)}"),
    };

    public static string TypeName(object? value) => value switch
    {
        null => "none",
        TemplateUndefined => "undefined",
        string => "string",
        bool => "boolean",
        long => "integer",
        double => "float",
        List<object?> => "list",
        Dictionary<string, object?> => "dict",
        TemplateCallable => "function",
        _ => value.GetType().Name,
    };
}
