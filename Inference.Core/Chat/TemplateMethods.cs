using System.Text;
using static Inference.Chat.TemplateValues;

namespace Inference.Chat;

/// <summary>The Python methods templates call on values: <c>str.strip()</c>, <c>dict.get()</c>, <c>list.append()</c> and friends.</summary>
internal static class TemplateMethods
{
    /// <summary>The method <paramref name="name"/> bound to <paramref name="target"/>, or null when there is none.</summary>
    public static TemplateCallable? Bind(object? target, string name) => target switch
    {
        string s => BindString(s, name),
        Dictionary<string, object?> d => BindDictionary(d, name),
        List<object?> l => name == "append" ? (args, _) => { l.Add(args.Count > 0 ? args[0] : null); return null; } : null,
        _ => null,
    };

    private static TemplateCallable? BindString(string s, string name) => name switch
    {
        "strip" => (args, _) => Strip(s, args, start: true, end: true),
        "lstrip" => (args, _) => Strip(s, args, start: true, end: false),
        "rstrip" => (args, _) => Strip(s, args, start: false, end: true),
        "upper" => (_, _) => s.ToUpperInvariant(),
        "lower" => (_, _) => s.ToLowerInvariant(),
        "title" => (_, _) => Title(s),
        "capitalize" => (_, _) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(),
        "startswith" => (args, _) => AnyAffix(args, a => s.StartsWith(a, StringComparison.Ordinal)),
        "endswith" => (args, _) => AnyAffix(args, a => s.EndsWith(a, StringComparison.Ordinal)),
        "split" => (args, named) => Split(s, args.Count > 0 ? args[0] : named.GetValueOrDefault("sep"),
            args.Count > 1 ? TemplateEvaluator.AsLong(args[1]) : named.TryGetValue("maxsplit", out var m) ? TemplateEvaluator.AsLong(m) : -1),
        "replace" => (args, _) =>
        {
            if (args.Count < 2 || args[0] is not string old || args[1] is not string replacement)
                throw new ChatTemplateException("str.replace() needs two strings");
            return TemplateLimits.Replace(s, old, replacement);
        },
        "find" => (args, _) => args.Count > 0 && args[0] is string needle ? (long)s.IndexOf(needle, StringComparison.Ordinal) : throw new ChatTemplateException("str.find() needs a string"),
        "count" => (args, _) =>
        {
            if (args.Count == 0 || args[0] is not string needle || needle.Length == 0) throw new ChatTemplateException("str.count() needs a non-empty string");
            long n = 0;
            for (int i = s.IndexOf(needle, StringComparison.Ordinal); i >= 0; i = s.IndexOf(needle, i + needle.Length, StringComparison.Ordinal)) n++;
            return n;
        },
        "join" => (args, _) =>
        {
            var sb = TemplateLimits.NewBuilder();
            if (args.Count > 0 && args[0] is List<object?> items)
                for (int i = 0; i < items.Count; i++)
                {
                    if (i > 0) sb.Append(s);
                    sb.Append(ToText(items[i]));
                }
            return sb.ToString();
        },
        _ => null,
    };

    private static TemplateCallable? BindDictionary(Dictionary<string, object?> d, string name) => name switch
    {
        "get" => (args, _) => args.Count > 0 && args[0] is string key && d.TryGetValue(key, out var v) ? v : args.Count > 1 ? args[1] : null,
        "items" => (_, _) => Items(d),
        "keys" => (_, _) => d.Keys.Cast<object?>().ToList(),
        "values" => (_, _) => d.Values.ToList(),
        _ => null,
    };

    public static List<object?> Items(Dictionary<string, object?> d)
    {
        var result = new List<object?>(d.Count);
        foreach (var (key, value) in d) result.Add(new List<object?> { key, value });
        return result;
    }

    public static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool previousIsLetter = false;
        foreach (char c in s)
        {
            sb.Append(previousIsLetter ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            previousIsLetter = char.IsLetter(c);
        }
        return sb.ToString();
    }

    private static string Strip(string s, List<object?> args, bool start, bool end)
    {
        if (args.Count > 0 && args[0] is string chars)
        {
            var set = chars.ToCharArray();
            return start && end ? s.Trim(set) : start ? s.TrimStart(set) : s.TrimEnd(set);
        }
        return start && end ? s.Trim() : start ? s.TrimStart() : s.TrimEnd();
    }

    private static bool AnyAffix(List<object?> args, Func<string, bool> matches)
    {
        if (args.Count == 0) throw new ChatTemplateException("startswith/endswith need an argument");
        if (args[0] is string a) return matches(a);
        if (args[0] is List<object?> options)
        {
            foreach (var o in options)
                if (o is string option && matches(option)) return true;
            return false;
        }
        throw new ChatTemplateException($"startswith/endswith need a string or a tuple, not {TypeName(args[0])}");
    }

    private static List<object?> Split(string s, object? separator, long maxSplit)
    {
        var result = new List<object?>();
        if (separator is string sep)
        {
            if (sep.Length == 0) throw new ChatTemplateException("empty separator");
            int start = 0;
            while (maxSplit < 0 || result.Count < maxSplit)
            {
                int at = s.IndexOf(sep, start, StringComparison.Ordinal);
                if (at < 0) break;
                result.Add(s[start..at]);
                start = at + sep.Length;
            }
            result.Add(s[start..]);
            return result;
        }
        // No separator: runs of whitespace, leading and trailing whitespace ignored.
        foreach (var part in s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)) result.Add(part);
        return result;
    }
}
