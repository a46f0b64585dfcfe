using System.Globalization;
using System.Text;
using static Inference.Chat.TemplateValues;

namespace Inference.Chat;

/// <summary>The filters (<c>value | name</c>) and tests (<c>value is name</c>) templates may use.</summary>
internal static class TemplateFilters
{
    public static object? Apply(string name, object? value, List<object?> args, Dictionary<string, object?> named)
    {
        object? Arg(int i, string key, object? fallback) =>
            i < args.Count ? args[i] : named.TryGetValue(key, out var v) ? v : fallback;

        switch (name)
        {
            case "trim":
                return Arg(0, "chars", null) is string chars ? AsString(value, name).Trim(chars.ToCharArray()) : AsString(value, name).Trim();
            case "upper": return AsString(value, name).ToUpperInvariant();
            case "lower": return AsString(value, name).ToLowerInvariant();
            case "capitalize":
            {
                string s = AsString(value, name);
                return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();
            }
            case "title": return TemplateMethods.Title(AsString(value, name));
            case "length" or "count":
                return value switch
                {
                    string s => (long)s.Length,
                    List<object?> l => (long)l.Count,
                    Dictionary<string, object?> d => (long)d.Count,
                    TemplateUndefined => 0L,
                    _ => throw new ChatTemplateException($"'{name}' needs a string, list or dict, not {TypeName(value)}"),
                };
            case "tojson":
            {
                var indent = Arg(0, "indent", null);
                return ToJson(value, indent is null ? null : (int)TemplateEvaluator.AsLong(indent));
            }
            case "string": return ToText(value);
            case "int":
                return value switch
                {
                    double d => (long)d,
                    string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => (long)d,
                    long or bool => TemplateEvaluator.AsLong(value),
                    _ => Arg(0, "default", 0L),
                };
            case "float":
                return value switch
                {
                    string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
                    long or double or bool => ToDouble(value),
                    _ => Arg(0, "default", 0.0),
                };
            case "abs": return value is long l0 ? (object)Math.Abs(l0) : Math.Abs(ToDouble(value));
            case "default" or "d":
            {
                bool boolean = IsTruthy(Arg(1, "boolean", false));
                bool useDefault = value is TemplateUndefined || (boolean && !IsTruthy(value));
                return useDefault ? Arg(0, "default_value", "") : value;
            }
            case "first": return AsList(value, name) is { Count: > 0 } first ? first[0] : TemplateUndefined.Instance;
            case "last": return AsList(value, name) is { Count: > 0 } last ? last[^1] : TemplateUndefined.Instance;
            case "list": return AsList(value, name);
            case "reverse":
                if (value is string rs) { var letters = rs.ToCharArray(); Array.Reverse(letters); return new string(letters); }
                var reversed = new List<object?>(AsList(value, name));
                reversed.Reverse();
                return reversed;
            case "join":
            {
                string separator = Arg(0, "d", "") is string sep ? sep : "";
                var attribute = Arg(1, "attribute", null);
                var sb = TemplateLimits.NewBuilder();
                var items = AsList(value, name);
                for (int i = 0; i < items.Count; i++)
                {
                    if (i > 0) sb.Append(separator);
                    sb.Append(ToText(attribute is string a ? TemplateEvaluator.GetItem(items[i], a) : items[i]));
                }
                return sb.ToString();
            }
            case "replace":
            {
                string s = AsString(value, name);
                string old = AsString(Arg(0, "old", null), name), replacement = AsString(Arg(1, "new", null), name);
                return TemplateLimits.Replace(s, old, replacement);
            }
            case "items":
                return value is Dictionary<string, object?> dict ? TemplateMethods.Items(dict) : throw new ChatTemplateException($"'items' needs a dict, not {TypeName(value)}");
            case "map":
            {
                var result = new List<object?>();
                if (named.TryGetValue("attribute", out var attr))
                {
                    foreach (var item in AsList(value, name)) result.Add(TemplateEvaluator.GetItem(item, attr));
                    return result;
                }
                if (args.Count > 0 && args[0] is string filter)
                {
                    foreach (var item in AsList(value, name)) result.Add(Apply(filter, item, args.GetRange(1, args.Count - 1), []));
                    return result;
                }
                throw new ChatTemplateException("'map' needs attribute= or a filter name");
            }
            case "select" or "reject":
            {
                var result = new List<object?>();
                foreach (var item in AsList(value, name))
                {
                    bool pass = args.Count == 0 ? IsTruthy(item) : Test(AsString(args[0], name), item, args.GetRange(1, args.Count - 1));
                    if (pass == (name == "select")) result.Add(item);
                }
                return result;
            }
            case "selectattr" or "rejectattr":
            {
                if (args.Count == 0 || args[0] is not string attribute) throw new ChatTemplateException($"'{name}' needs an attribute name");
                var result = new List<object?>();
                foreach (var item in AsList(value, name))
                {
                    var attributeValue = TemplateEvaluator.GetItem(item, attribute);
                    bool pass = args.Count == 1 ? IsTruthy(attributeValue) : Test(AsString(args[1], name), attributeValue, args.GetRange(2, args.Count - 2));
                    if (pass == (name == "selectattr")) result.Add(item);
                }
                return result;
            }
            case "safe": return value;
            default:
                throw new ChatTemplateException($"unsupported filter '{name}'");
        }
    }

    public static bool Test(string name, object? value, List<object?> args)
    {
        switch (name)
        {
            case "defined": return value is not TemplateUndefined;
            case "undefined": return value is TemplateUndefined;
            case "none": return value is null;
            case "string": return value is string;
            case "number": return value is long or double;
            case "integer": return value is long;
            case "float": return value is double;
            case "boolean": return value is bool;
            case "true": return value is true;
            case "false": return value is false;
            case "mapping": return value is Dictionary<string, object?>;
            case "sequence" or "iterable": return value is string or List<object?> or Dictionary<string, object?>;
            case "callable": return value is TemplateCallable;
            case "lower": return value is string lo && lo == lo.ToLowerInvariant();
            case "upper": return value is string up && up == up.ToUpperInvariant();
            case "even": return TemplateEvaluator.AsLong(value) % 2 == 0;
            case "odd": return TemplateEvaluator.AsLong(value) % 2 != 0;
            case "divisibleby": return args.Count == 1 && TemplateEvaluator.AsLong(value) % TemplateEvaluator.AsLong(args[0]) == 0;
            case "equalto" or "eq" or "==" or "sameas": return args.Count == 1 && AreEqual(value, args[0]);
            case "ne" or "!=": return args.Count == 1 && !AreEqual(value, args[0]);
            case "in": return args.Count == 1 && args[0] switch
            {
                List<object?> l => l.Exists(x => AreEqual(x, value)),
                string s => value is string v && s.Contains(v, StringComparison.Ordinal),
                Dictionary<string, object?> d => value is string k && d.ContainsKey(k),
                _ => false,
            };
            default: throw new ChatTemplateException($"unsupported test '{name}'");
        }
    }

    private static string AsString(object? value, string filter) => value switch
    {
        string s => s,
        TemplateUndefined => "",
        _ => throw new ChatTemplateException($"'{filter}' needs a string, not {TypeName(value)}"),
    };

    private static List<object?> AsList(object? value, string filter) => value switch
    {
        List<object?> l => l,
        string s => s.Select(c => (object?)c.ToString()).ToList(),
        Dictionary<string, object?> d => d.Keys.Cast<object?>().ToList(),
        TemplateUndefined => [],
        _ => throw new ChatTemplateException($"'{filter}' needs a sequence, not {TypeName(value)}"),
    };
}
