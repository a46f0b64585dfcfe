using System.Runtime.CompilerServices;
using System.Text;

namespace Inference.Constraints;

/// <summary>
/// Converts a regular expression into a GBNF expression that matches the same whole strings. Supported: literals,
/// escapes (<c>\d \w \s \D \W \S \n \t \r \f \v \xHH \uHHHH</c> and escaped punctuation), classes with ranges and
/// negation, <c>.</c> (any character but a newline), groups (<c>(…)</c>, <c>(?:…)</c>), <c>|</c>, the quantifiers
/// <c>* + ? {m} {m,} {m,n}</c> (lazy forms are treated as greedy), and <c>^</c>/<c>$</c> at the ends. Lookaround and
/// back-references cannot be expressed in a context-free grammar and are rejected.
/// </summary>
internal sealed class RegexConverter
{
    private readonly string _pattern;
    private int _pos;

    private RegexConverter(string pattern) => _pattern = pattern;

    /// <summary>The GBNF expression for <paramref name="pattern"/>.</summary>
    /// <exception cref="InvalidConstraintException">The pattern is malformed or uses an unsupported feature.</exception>
    public static string ToGbnf(string pattern)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        var c = new RegexConverter(pattern);
        if (c.Peek('^')) c._pos++;
        string result = c.ParseAlternation();
        if (c._pos < pattern.Length) throw c.Error($"unexpected '{pattern[c._pos]}'");
        return result.Length == 0 ? "\"\"" : result;
    }

    /// <summary>A grammar whose root is <paramref name="pattern"/>.</summary>
    public static Grammar Compile(string pattern)
    {
        var builder = new GrammarBuilder();
        GbnfParser.ParseExpressionInto(ToGbnf(pattern), builder.Rule("root"), builder);
        return builder.Build("root");
    }

    private bool Peek(char c) => _pos < _pattern.Length && _pattern[_pos] == c;

    private string ParseAlternation()
    {
        // NOTE: patterns come from requests; nested groups recurse here (see Constraint.Compile).
        RuntimeHelpers.EnsureSufficientExecutionStack();
        var alts = new List<string> { ParseConcat() };
        while (Peek('|'))
        {
            _pos++;
            alts.Add(ParseConcat());
        }
        if (alts.Count == 1) return alts[0];
        return "(" + string.Join(" | ", alts.Select(a => a.Length == 0 ? "\"\"" : a)) + ")";
    }

    private string ParseConcat()
    {
        var sb = new StringBuilder();
        while (_pos < _pattern.Length && _pattern[_pos] is not ('|' or ')'))
        {
            if (_pattern[_pos] == '$' && _pos == _pattern.Length - 1) { _pos++; break; }
            string atom = ParseAtom();
            atom = ParseQuantifier(atom);
            if (sb.Length > 0) sb.Append(' ');
            sb.Append(atom);
        }
        return sb.ToString();
    }

    private string ParseQuantifier(string atom)
    {
        if (_pos >= _pattern.Length) return atom;
        char c = _pattern[_pos];
        string? q = null;
        if (c is '*' or '+' or '?')
        {
            _pos++;
            q = c.ToString();
        }
        else if (c == '{')
        {
            int close = _pattern.IndexOf('}', _pos);
            if (close < 0) throw Error("unterminated '{' quantifier");
            string body = _pattern[(_pos + 1)..close];
            var parts = body.Split(',');
            bool ok = parts.Length is 1 or 2 && int.TryParse(parts[0], out _) && (parts.Length == 1 || parts[1].Length == 0 || int.TryParse(parts[1], out _));
            if (!ok) throw Error($"malformed quantifier '{{{body}}}'");
            _pos = close + 1;
            q = "{" + body + "}";
        }
        if (q is null) return atom;
        if (Peek('?') || Peek('+')) _pos++; // lazy or possessive: the same language
        if (_pos < _pattern.Length && _pattern[_pos] is '*' or '+' or '?' or '{') throw Error("a quantifier follows a quantifier");
        return "(" + atom + ")" + q;
    }

    private string ParseAtom()
    {
        char c = _pattern[_pos];
        switch (c)
        {
            case '(':
                _pos++;
                if (Peek('?'))
                {
                    if (_pos + 1 < _pattern.Length && _pattern[_pos + 1] == ':') _pos += 2;
                    else throw Error("lookaround and named or flagged groups are not supported");
                }
                string inner = ParseAlternation();
                if (!Peek(')')) throw Error("expected ')'");
                _pos++;
                return "(" + (inner.Length == 0 ? "\"\"" : inner) + ")";
            case '[':
                return ParseClass();
            case '.':
                _pos++;
                return "[^\\n]";
            case '\\':
                {
                    _pos++;
                    if (_pos >= _pattern.Length) throw Error("a backslash ends the pattern");
                    char e = _pattern[_pos];
                    var ranges = new List<(int, int)>();
                    if (Shorthand(e, ranges, out bool negated))
                    {
                        _pos++;
                        return ClassText(ranges, negated);
                    }
                    int cp = ParseEscape();
                    return GbnfParser.Quote(char.ConvertFromUtf32(cp));
                }
            case '*' or '+' or '?' or '{':
                throw Error($"'{c}' has nothing to repeat");
            case '^' or '$':
                throw Error($"anchor '{c}' is only supported at the ends of the pattern");
            default:
                {
                    int cp = char.ConvertToUtf32(_pattern, _pos);
                    _pos += char.IsSurrogatePair(_pattern, _pos) ? 2 : 1;
                    return GbnfParser.Quote(char.ConvertFromUtf32(cp));
                }
        }
    }

    private string ParseClass()
    {
        int start = _pos;
        _pos++;
        bool negated = Peek('^');
        if (negated) _pos++;
        var ranges = new List<(int, int)>();
        bool first = true;
        while (true)
        {
            if (_pos >= _pattern.Length) throw Error("unterminated character class", start);
            if (_pattern[_pos] == ']' && !first) { _pos++; break; }
            first = false;
            int lo;
            if (_pattern[_pos] == '\\')
            {
                _pos++;
                if (_pos >= _pattern.Length) throw Error("a backslash ends the pattern");
                if (Shorthand(_pattern[_pos], ranges, out bool neg))
                {
                    if (neg) throw Error($"'\\{_pattern[_pos]}' inside a character class is not supported");
                    _pos++;
                    continue;
                }
                lo = ParseEscape();
            }
            else
            {
                lo = char.ConvertToUtf32(_pattern, _pos);
                _pos += char.IsSurrogatePair(_pattern, _pos) ? 2 : 1;
            }
            int hi = lo;
            if (_pos + 1 < _pattern.Length && _pattern[_pos] == '-' && _pattern[_pos + 1] != ']')
            {
                _pos++;
                if (_pattern[_pos] == '\\')
                {
                    _pos++;
                    hi = ParseEscape();
                }
                else
                {
                    hi = char.ConvertToUtf32(_pattern, _pos);
                    _pos += char.IsSurrogatePair(_pattern, _pos) ? 2 : 1;
                }
                if (hi < lo) throw Error("character range is reversed", start);
            }
            ranges.Add((lo, hi));
        }
        return ClassText(ranges, negated);
    }

    /// <summary>Decodes the escape at the position (after the backslash) into a code point.</summary>
    private int ParseEscape()
    {
        // NOTE: a range's upper end can be a backslash that ends the pattern ('[a-\\').
        if (_pos >= _pattern.Length) throw Error("a backslash ends the pattern");
        char e = _pattern[_pos++];
        switch (e)
        {
            case 'n': return '\n';
            case 'r': return '\r';
            case 't': return '\t';
            case 'f': return '\f';
            case 'v': return '\v';
            case '0': return 0;
            case 'x': return Hex(2);
            case 'u': return Hex(4);
            default:
                if (char.IsAsciiLetterOrDigit(e)) throw Error($"escape '\\{e}' is not supported", _pos - 2);
                return e;
        }
    }

    private int Hex(int digits)
    {
        if (_pos + digits > _pattern.Length || !int.TryParse(_pattern.AsSpan(_pos, digits), System.Globalization.NumberStyles.AllowHexSpecifier, null, out int v))
            throw Error($"expected {digits} hex digits");
        _pos += digits;
        return v;
    }

    private static bool Shorthand(char e, List<(int, int)> ranges, out bool negated)
    {
        negated = char.IsAsciiLetterUpper(e);
        switch (char.ToLowerInvariant(e))
        {
            case 'd':
                if (e is not ('d' or 'D')) return false;
                ranges.Add(('0', '9'));
                return true;
            case 'w':
                if (e is not ('w' or 'W')) return false;
                ranges.AddRange([('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')]);
                return true;
            case 's':
                if (e is not ('s' or 'S')) return false;
                ranges.AddRange([(' ', ' '), ('\t', '\r')]);
                return true;
            default:
                negated = false;
                return false;
        }
    }

    private static string ClassText(List<(int Lo, int Hi)> ranges, bool negated)
    {
        var sb = new StringBuilder("[");
        if (negated) sb.Append('^');
        foreach (var (lo, hi) in ranges)
        {
            sb.Append($"\\U{lo:X8}");
            if (hi != lo) sb.Append($"-\\U{hi:X8}");
        }
        return sb.Append(']').ToString();
    }

    private InvalidConstraintException Error(string message, int? at = null) =>
        new($"regex position {(at ?? _pos) + 1}: {message}");
}
