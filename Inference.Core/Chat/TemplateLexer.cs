using System.Globalization;
using System.Text;

namespace Inference.Chat;

/// <summary>
/// Splits Jinja template source into text and tag tokens, applying whitespace control as Hugging Face renders chat
/// templates: <c>trim_blocks</c> and <c>lstrip_blocks</c> on, plus <c>{%-</c> / <c>-%}</c> / <c>{{-</c> / <c>-}}</c>.
/// </summary>
/// <remarks>
/// NOTE: Hugging Face's <c>apply_chat_template</c> creates its Jinja environment with <c>trim_blocks=True</c> and
/// <c>lstrip_blocks=True</c>; templates are written for that (Zephyr's one-tag-per-line template relies on it), so
/// we apply both always.
/// </remarks>
internal static class TemplateLexer
{
    // Longest operators first so "//" wins over "/", "==" over "=".
    private static readonly string[] Operators =
        ["==", "!=", "<=", ">=", "//", "**", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "="];

    public static List<TemplateToken> Tokenize(string source)
    {
        // Jinja drops a single trailing newline of the template (keep_trailing_newline defaults to false).
        if (source.EndsWith("\r\n", StringComparison.Ordinal)) source = source[..^2];
        else if (source.EndsWith('\n')) source = source[..^1];
        var tokens = new List<TemplateToken>();
        int pos = 0;
        bool stripLeading = false;   // the previous tag ended with '-': drop all leading whitespace
        bool trimNewline = false;    // the previous tag was a block or comment: drop one leading newline (trim_blocks)
        while (true)
        {
            int open = FindTagOpen(source, pos);
            int textEnd = open < 0 ? source.Length : open;
            int textStart = pos;
            if (stripLeading)
                while (textStart < textEnd && char.IsWhiteSpace(source[textStart])) textStart++;
            else if (trimNewline)
            {
                if (textStart < textEnd && source[textStart] == '\n') textStart++;
                else if (textStart + 1 < textEnd && source[textStart] == '\r' && source[textStart + 1] == '\n') textStart += 2;
            }
            if (open < 0)
            {
                AddText(tokens, source, textStart, textEnd, pos);
                break;
            }

            char kind = source[open + 1];
            int p = open + 2;
            char modifier = p < source.Length ? source[p] : '\0';
            if (modifier is '-' or '+') p++;
            if (modifier == '-')
                while (textEnd > textStart && char.IsWhiteSpace(source[textEnd - 1])) textEnd--;
            else if (kind != '{' && modifier != '+')
            {
                // lstrip_blocks: spaces and tabs between the start of the line and a block tag go.
                int k = textEnd;
                while (k > textStart && source[k - 1] is ' ' or '\t') k--;
                if (k == 0 || source[k - 1] == '\n') textEnd = k;
            }
            AddText(tokens, source, textStart, textEnd, pos);

            if (kind == '#')
            {
                int close = source.IndexOf("#}", p, StringComparison.Ordinal);
                if (close < 0) throw Error(open, "unclosed comment");
                stripLeading = source[close - 1] == '-' && close - 1 >= p;
                trimNewline = true;
                pos = close + 2;
                continue;
            }

            bool isOutput = kind == '{';
            tokens.Add(new TemplateToken(isOutput ? TemplateTokenKind.OutputStart : TemplateTokenKind.StatementStart, "", open));
            pos = LexTag(source, p, isOutput, tokens, out stripLeading);
            trimNewline = !isOutput;
        }
        tokens.Add(new TemplateToken(TemplateTokenKind.End, "", source.Length));
        return tokens;
    }

    private static void AddText(List<TemplateToken> tokens, string source, int start, int end, int position)
    {
        if (end > start) tokens.Add(new TemplateToken(TemplateTokenKind.Text, source[start..end], position));
    }

    private static int FindTagOpen(string source, int from)
    {
        for (int i = source.IndexOf('{', from); i >= 0 && i + 1 < source.Length; i = source.IndexOf('{', i + 1))
            if (source[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    // Lexes the inside of a {{ }} or {% %} tag from p; returns the position after its closing delimiter.
    private static int LexTag(string source, int p, bool isOutput, List<TemplateToken> tokens, out bool stripAfter)
    {
        char closeFirst = isOutput ? '}' : '%';
        while (true)
        {
            while (p < source.Length && char.IsWhiteSpace(source[p])) p++;
            if (p >= source.Length) throw Error(p, isOutput ? "unclosed '{{'" : "unclosed '{%'");
            char c = source[p];

            // Closing delimiter, possibly with '-' before it.
            int q = c == '-' ? p + 1 : p;
            if (q + 1 < source.Length && source[q] == closeFirst && source[q + 1] == '}')
            {
                stripAfter = c == '-';
                tokens.Add(new TemplateToken(isOutput ? TemplateTokenKind.OutputEnd : TemplateTokenKind.StatementEnd, "", p));
                return q + 2;
            }

            if (char.IsLetter(c) || c == '_')
            {
                int s = p;
                while (p < source.Length && (char.IsLetterOrDigit(source[p]) || source[p] == '_')) p++;
                tokens.Add(new TemplateToken(TemplateTokenKind.Name, source[s..p], s));
            }
            else if (char.IsAsciiDigit(c))
            {
                int s = p;
                while (p < source.Length && (char.IsAsciiDigit(source[p]) || source[p] == '_')) p++;
                bool isFloat = false;
                if (p + 1 < source.Length && source[p] == '.' && char.IsAsciiDigit(source[p + 1]))
                {
                    isFloat = true;
                    p++;
                    while (p < source.Length && char.IsAsciiDigit(source[p])) p++;
                }
                if (p < source.Length && source[p] is 'e' or 'E')
                {
                    int e = p + 1;
                    if (e < source.Length && source[e] is '+' or '-') e++;
                    if (e < source.Length && char.IsAsciiDigit(source[e]))
                    {
                        isFloat = true;
                        p = e;
                        while (p < source.Length && char.IsAsciiDigit(source[p])) p++;
                    }
                }
                tokens.Add(new TemplateToken(isFloat ? TemplateTokenKind.Float : TemplateTokenKind.Integer, source[s..p].Replace("_", ""), s));
            }
            else if (c is '\'' or '"')
            {
                int s = p;
                p = LexString(source, p, out string value);
                tokens.Add(new TemplateToken(TemplateTokenKind.String, value, s));
            }
            else
            {
                string? op = null;
                foreach (var candidate in Operators)
                    if (string.CompareOrdinal(source, p, candidate, 0, candidate.Length) == 0) { op = candidate; break; }
                if (op is null) throw Error(p, $"unexpected character '{c}'");
                tokens.Add(new TemplateToken(TemplateTokenKind.Operator, op, p));
                p += op.Length;
            }
        }
    }

    private static int LexString(string source, int p, out string value)
    {
        char quote = source[p++];
        var sb = new StringBuilder();
        while (true)
        {
            if (p >= source.Length) throw Error(p, "unterminated string literal");
            char c = source[p++];
            if (c == quote) break;
            if (c != '\\') { sb.Append(c); continue; }
            if (p >= source.Length) throw Error(p, "unterminated string literal");
            char e = source[p++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '0': sb.Append('\0'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case 'u' when p + 4 <= source.Length && int.TryParse(source.AsSpan(p, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int code):
                    sb.Append((char)code);
                    p += 4;
                    break;
                default:
                    // Python keeps unknown escapes as written.
                    sb.Append('\\').Append(e);
                    break;
            }
        }
        value = sb.ToString();
        return p;
    }

    private static ChatTemplateException Error(int position, string message) => new($"chat template syntax error at offset {position}: {message}");
}
