using System.Runtime.CompilerServices;
using System.Text;
using Element = Inference.Constraints.GrammarBuilder.Element;

namespace Inference.Constraints;

/// <summary>
/// Parses grammars in GBNF, the form llama.cpp reads: <c>name ::= alternatives</c> rules, the start rule <c>root</c>,
/// string literals in double quotes, character classes (<c>[a-z]</c>, <c>[^"\\]</c>), <c>.</c> for any character,
/// groups, <c>|</c>, the quantifiers <c>* + ?</c> and <c>{m}</c>, <c>{m,}</c>, <c>{m,n}</c>, and <c>#</c> comments.
/// </summary>
/// <remarks>
/// A rule ends at the end of its line unless the line ends inside parentheses or the next line starts with <c>|</c>.
/// Escapes in literals and classes: <c>\n \r \t \\ \" \[ \] \- \xHH \uHHHH \UHHHHHHHH</c>.
/// </remarks>
internal sealed class GbnfParser
{
    private readonly string _text;
    private readonly GrammarBuilder _builder;
    private int _pos;

    private GbnfParser(string text, GrammarBuilder builder)
    {
        _text = text;
        _builder = builder;
    }

    /// <summary>Parses <paramref name="text"/> into a grammar starting at <c>root</c>.</summary>
    /// <exception cref="InvalidConstraintException">The grammar is malformed.</exception>
    public static Grammar Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var builder = new GrammarBuilder();
        ParseInto(text, builder);
        return builder.Build("root");
    }

    /// <summary>Parses the rules of <paramref name="text"/> into <paramref name="builder"/>.</summary>
    public static void ParseInto(string text, GrammarBuilder builder)
    {
        var parser = new GbnfParser(text, builder);
        parser.SkipSpace(newlines: true);
        while (parser._pos < text.Length)
        {
            parser.ParseRule();
            parser.SkipSpace(newlines: true);
        }
    }

    /// <summary>Parses <paramref name="expression"/>, the right-hand side of one rule, as the alternatives of <paramref name="rule"/>.</summary>
    public static void ParseExpressionInto(string expression, int rule, GrammarBuilder builder)
    {
        var parser = new GbnfParser(expression, builder);
        parser.SkipSpace(newlines: true);
        var alts = parser.ParseAlternates(nested: true);
        parser.SkipSpace(newlines: true);
        if (parser._pos < expression.Length) throw parser.Error($"unexpected '{expression[parser._pos]}'");
        builder.Define(rule, alts);
    }

    private void ParseRule()
    {
        string name = ParseName() ?? throw Error("expected a rule name");
        SkipSpace(newlines: false);
        if (!_text.AsSpan(_pos).StartsWith("::=")) throw Error($"expected '::=' after '{name}'");
        _pos += 3;
        SkipSpace(newlines: true);
        var alts = ParseAlternates(nested: false);
        int rule = _builder.Rule(name);
        if (_builder.IsDefined(rule)) throw Error($"rule '{name}' is defined twice");
        _builder.Define(rule, alts);
        if (_pos < _text.Length && _text[_pos] is not ('\n' or '\r')) throw Error($"unexpected '{_text[_pos]}'");
    }

    private List<List<Element>> ParseAlternates(bool nested)
    {
        // NOTE: grammars come from requests; nested groups recurse here (see Constraint.Compile).
        RuntimeHelpers.EnsureSufficientExecutionStack();
        var alts = new List<List<Element>> { ParseSequence(nested) };
        while (true)
        {
            int save = _pos;
            if (!nested) SkipSpace(newlines: true); // a following line that starts with '|' continues the rule
            if (_pos < _text.Length && _text[_pos] == '|')
            {
                _pos++;
                SkipSpace(newlines: true);
                alts.Add(ParseSequence(nested));
                continue;
            }
            _pos = save;
            return alts;
        }
    }

    private List<Element> ParseSequence(bool nested)
    {
        var seq = new List<Element>();
        while (_pos < _text.Length)
        {
            char c = _text[_pos];
            if (c is '|' or ')' or '\n' or '\r') break;
            int start = _pos;
            List<Element> atom;
            if (c == '"')
            {
                _pos++;
                var bytes = new List<byte>();
                var buf = new byte[4];
                while (true)
                {
                    if (_pos >= _text.Length) throw Error("unterminated string literal", start);
                    if (_text[_pos] == '"') { _pos++; break; }
                    int cp = ParseChar();
                    int n = Utf8Ranges.Encode(cp, buf);
                    for (int i = 0; i < n; i++) bytes.Add(buf[i]);
                }
                atom = [];
                _builder.Literal(bytes.ToArray(), atom);
            }
            else if (c == '[')
            {
                _pos++;
                bool negated = _pos < _text.Length && _text[_pos] == '^';
                if (negated) _pos++;
                var ranges = new List<(int, int)>();
                while (true)
                {
                    if (_pos >= _text.Length) throw Error("unterminated character class", start);
                    if (_text[_pos] == ']') { _pos++; break; }
                    int lo = ParseChar(), hi = lo;
                    if (_pos + 1 < _text.Length && _text[_pos] == '-' && _text[_pos + 1] != ']')
                    {
                        _pos++;
                        hi = ParseChar();
                    }
                    if (hi < lo) throw Error($"character range is reversed", start);
                    ranges.Add((lo, hi));
                }
                atom = [_builder.CodePointClass(ranges, negated)];
            }
            else if (c == '.')
            {
                _pos++;
                atom = [_builder.CodePointClass([], negated: true)];
            }
            else if (c == '(')
            {
                _pos++;
                SkipSpace(newlines: true);
                var inner = ParseAlternates(nested: true);
                SkipSpace(newlines: true);
                if (_pos >= _text.Length || _text[_pos] != ')') throw Error("expected ')'", start);
                _pos++;
                atom = inner.Count == 1 ? inner[0] : [_builder.Group(inner)];
            }
            else if (IsNameChar(c))
            {
                string name = ParseName()!;
                atom = [new Element(true, _builder.Rule(name))];
            }
            else throw Error($"unexpected '{c}'");

            // Quantifier.
            if (_pos < _text.Length && _text[_pos] is '*' or '+' or '?' or '{')
            {
                int min, max;
                char q = _text[_pos++];
                switch (q)
                {
                    case '*': min = 0; max = -1; break;
                    case '+': min = 1; max = -1; break;
                    case '?': min = 0; max = 1; break;
                    default:
                        SkipSpace(newlines: false);
                        min = ParseInt();
                        SkipSpace(newlines: false);
                        max = min;
                        if (_pos < _text.Length && _text[_pos] == ',')
                        {
                            _pos++;
                            SkipSpace(newlines: false);
                            max = _pos < _text.Length && char.IsAsciiDigit(_text[_pos]) ? ParseInt() : -1;
                            SkipSpace(newlines: false);
                        }
                        if (_pos >= _text.Length || _text[_pos] != '}') throw Error("expected '}'");
                        _pos++;
                        break;
                }
                var item = atom.Count == 1 ? atom[0] : _builder.Group([atom]);
                try { atom = _builder.Repeat(item, min, max); }
                catch (InvalidConstraintException e) { throw Error(e.Message, start); }
            }
            seq.AddRange(atom);
            SkipSpace(newlines: nested);
        }
        return seq;
    }

    private int ParseInt()
    {
        int start = _pos;
        long value = 0;
        while (_pos < _text.Length && char.IsAsciiDigit(_text[_pos]))
        {
            value = value * 10 + (_text[_pos++] - '0');
            if (value > GrammarBuilder.MaxRepeat) throw Error($"repetition count is over {GrammarBuilder.MaxRepeat}", start);
        }
        if (_pos == start) throw Error("expected a number");
        return (int)value;
    }

    /// <summary>One character of a literal or class, escapes decoded, as a code point.</summary>
    private int ParseChar()
    {
        char c = _text[_pos];
        if (c != '\\')
        {
            if (char.IsHighSurrogate(c) && _pos + 1 < _text.Length && char.IsLowSurrogate(_text[_pos + 1]))
            {
                _pos += 2;
                return char.ConvertToUtf32(c, _text[_pos - 1]);
            }
            _pos++;
            return c;
        }
        if (_pos + 1 >= _text.Length) throw Error("a backslash ends the grammar");
        char e = _text[_pos + 1];
        _pos += 2;
        switch (e)
        {
            case 'n': return '\n';
            case 'r': return '\r';
            case 't': return '\t';
            case 'x': return ParseHex(2);
            case 'u': return ParseHex(4);
            case 'U': return ParseHex(8);
            case '\\' or '"' or '[' or ']' or '-' or '^' or '/' or '.' or '(' or ')' or '|' or '*' or '+' or '?' or '{' or '}' or '\'': return e;
            default: throw Error($"unknown escape '\\{e}'", _pos - 2);
        }
    }

    private int ParseHex(int digits)
    {
        if (_pos + digits > _text.Length || !int.TryParse(_text.AsSpan(_pos, digits), System.Globalization.NumberStyles.AllowHexSpecifier, null, out int value) || value > 0x10FFFF)
            throw Error($"expected {digits} hex digits");
        _pos += digits;
        return value;
    }

    private string? ParseName()
    {
        int start = _pos;
        while (_pos < _text.Length && IsNameChar(_text[_pos])) _pos++;
        return _pos > start ? _text[start.._pos] : null;
    }

    private static bool IsNameChar(char c) => char.IsAsciiLetterOrDigit(c) || c is '-' or '_';

    private void SkipSpace(bool newlines)
    {
        while (_pos < _text.Length)
        {
            char c = _text[_pos];
            if (c is ' ' or '\t' || (newlines && c is '\n' or '\r')) _pos++;
            else if (c == '#')
            {
                while (_pos < _text.Length && _text[_pos] is not ('\n' or '\r')) _pos++;
            }
            else break;
        }
    }

    private InvalidConstraintException Error(string message, int? at = null)
    {
        int pos = Math.Min(at ?? _pos, _text.Length);
        int line = 1, column = 1;
        for (int i = 0; i < pos; i++)
        {
            if (_text[i] == '\n') { line++; column = 1; }
            else column++;
        }
        return new InvalidConstraintException($"grammar line {line}, column {column}: {message}");
    }

    /// <summary>Writes <paramref name="text"/> as a GBNF string literal.</summary>
    public static string Quote(string text)
    {
        var sb = new StringBuilder(text.Length + 2).Append('"');
        foreach (char c in text)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c < 0x20) sb.Append($"\\x{(int)c:X2}");
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }
}
