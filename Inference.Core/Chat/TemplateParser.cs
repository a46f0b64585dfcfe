using System.Globalization;
using System.Runtime.CompilerServices;

namespace Inference.Chat;

/// <summary>
/// Recursive-descent parser from <see cref="TemplateToken"/>s to a syntax tree. Expression precedence follows Jinja:
/// conditional &lt; or &lt; and &lt; not &lt; comparisons / in &lt; + - &lt; ~ &lt; * / // % &lt; ** &lt; unary,
/// with filters (<c>|</c>) and tests (<c>is</c>) binding to the operand before them.
/// </summary>
internal sealed class TemplateParser
{
    private readonly List<TemplateToken> _tokens;
    private int _at;
    private int _loopDepth;

    private TemplateParser(List<TemplateToken> tokens) => _tokens = tokens;

    public static IReadOnlyList<TemplateNode> Parse(string source)
    {
        var parser = new TemplateParser(TemplateLexer.Tokenize(source));
        var body = parser.ParseBody(out string? end);
        if (end is not null) throw parser.Error($"unexpected '{{% {end} %}}'");
        return body;
    }

    // ---------------------------------------------------------------- statements

    // Parses nodes until the end of the template or a block tag named in stopAt (returned in end, its name consumed).
    private List<TemplateNode> ParseBody(out string? end, params string[] stopAt)
    {
        RuntimeHelpers.EnsureSufficientExecutionStack();
        var nodes = new List<TemplateNode>();
        while (true)
        {
            var token = Peek;
            switch (token.Kind)
            {
                case TemplateTokenKind.End:
                    if (stopAt.Length > 0) throw Error($"missing '{{% {stopAt[^1]} %}}'");
                    end = null;
                    return nodes;
                case TemplateTokenKind.Text:
                    _at++;
                    nodes.Add(new TextNode(token.Value));
                    break;
                case TemplateTokenKind.OutputStart:
                    _at++;
                    nodes.Add(new OutputNode(ParseExpression()));
                    Expect(TemplateTokenKind.OutputEnd, "'}}'");
                    break;
                case TemplateTokenKind.StatementStart:
                    var keyword = _tokens[_at + 1];
                    if (keyword.Kind != TemplateTokenKind.Name) throw Error("expected a statement name after '{%'");
                    if (Array.IndexOf(stopAt, keyword.Value) >= 0)
                    {
                        _at += 2;
                        end = keyword.Value;
                        return nodes;
                    }
                    _at += 2;
                    nodes.Add(ParseStatement(keyword));
                    break;
                default:
                    throw Error($"unexpected token '{token.Value}'");
            }
        }
    }

    private TemplateNode ParseStatement(TemplateToken keyword)
    {
        switch (keyword.Value)
        {
            case "if":
            {
                var branches = new List<(TemplateExpression, IReadOnlyList<TemplateNode>)>();
                var condition = ParseExpression();
                EndStatement();
                IReadOnlyList<TemplateNode> elseBody = [];
                while (true)
                {
                    var body = ParseBody(out string? end, "elif", "else", "endif");
                    branches.Add((condition, body));
                    if (end == "elif")
                    {
                        condition = ParseExpression();
                        EndStatement();
                        continue;
                    }
                    if (end == "else")
                    {
                        EndStatement();
                        elseBody = ParseBody(out _, "endif");
                    }
                    EndStatement();
                    return new IfNode(branches, elseBody);
                }
            }
            case "for":
            {
                var targets = new List<string> { ExpectName() };
                while (AcceptOperator(",")) targets.Add(ExpectName());
                ExpectKeyword("in");
                // NOTE: the iterable is parsed without the conditional expression so "for x in xs if cond" filters.
                var items = ParseOr();
                TemplateExpression? condition = AcceptKeyword("if") ? ParseOr() : null;
                EndStatement();
                _loopDepth++;
                var body = ParseBody(out string? end, "else", "endfor");
                _loopDepth--;
                IReadOnlyList<TemplateNode> elseBody = [];
                if (end == "else")
                {
                    EndStatement();
                    elseBody = ParseBody(out _, "endfor");
                }
                EndStatement();
                return new ForNode(targets, items, condition, body, elseBody);
            }
            case "set":
            {
                string name = ExpectName();
                string? attribute = AcceptOperator(".") ? ExpectName() : null;
                if (attribute is null && Peek.Kind == TemplateTokenKind.StatementEnd)
                {
                    EndStatement();
                    var captured = ParseBody(out _, "endset");
                    EndStatement();
                    return new SetBlockNode(name, captured);
                }
                ExpectOperator("=");
                var value = ParseExpression();
                EndStatement();
                return new SetNode(name, attribute, value);
            }
            case "macro":
            {
                string name = ExpectName();
                ExpectOperator("(");
                var parameters = new List<string>();
                var defaults = new List<TemplateExpression?>();
                while (!AcceptOperator(")"))
                {
                    if (parameters.Count > 0) ExpectOperator(",");
                    parameters.Add(ExpectName());
                    defaults.Add(AcceptOperator("=") ? ParseExpression() : null);
                }
                EndStatement();
                int outerLoops = _loopDepth;
                _loopDepth = 0;
                var body = ParseBody(out _, "endmacro");
                _loopDepth = outerLoops;
                EndStatement();
                return new MacroNode(name, parameters, defaults, body);
            }
            case "break" or "continue":
                if (_loopDepth == 0) throw Error($"'{{% {keyword.Value} %}}' outside a loop");
                EndStatement();
                return new LoopControlNode(keyword.Value == "break" ? LoopSignal.Break : LoopSignal.Continue);
            case "generation":
            {
                // Hugging Face's marker for assistant-token masks; it renders its body unchanged.
                EndStatement();
                var body = ParseBody(out _, "endgeneration");
                EndStatement();
                return new IfNode([(new LiteralExpression(true), body)], []);
            }
            default:
                throw Error($"unsupported statement '{{% {keyword.Value} %}}'");
        }
    }

    private void EndStatement() => Expect(TemplateTokenKind.StatementEnd, "'%}'");

    // ---------------------------------------------------------------- expressions

    private TemplateExpression ParseExpression()
    {
        // NOTE: templates come from model files; hostile nesting must fail as a ChatTemplateException, not a crash.
        RuntimeHelpers.EnsureSufficientExecutionStack();
        var value = ParseOr();
        if (!AcceptKeyword("if")) return value;
        var condition = ParseOr();
        var otherwise = AcceptKeyword("else") ? ParseExpression() : null;
        return new ConditionalExpression(condition, value, otherwise);
    }

    private TemplateExpression ParseOr()
    {
        var left = ParseAnd();
        while (AcceptKeyword("or")) left = new BinaryExpression("or", left, ParseAnd());
        return left;
    }

    private TemplateExpression ParseAnd()
    {
        var left = ParseNot();
        while (AcceptKeyword("and")) left = new BinaryExpression("and", left, ParseNot());
        return left;
    }

    private TemplateExpression ParseNot()
    {
        RuntimeHelpers.EnsureSufficientExecutionStack();
        return AcceptKeyword("not") ? new UnaryExpression("not", ParseNot()) : ParseComparison();
    }

    private TemplateExpression ParseComparison()
    {
        var left = ParseAdditive();
        while (true)
        {
            var t = Peek;
            if (t.Kind == TemplateTokenKind.Operator && t.Value is "==" or "!=" or "<" or ">" or "<=" or ">=")
            {
                _at++;
                left = new BinaryExpression(t.Value, left, ParseAdditive());
            }
            else if (IsKeyword(t, "in"))
            {
                _at++;
                left = new BinaryExpression("in", left, ParseAdditive());
            }
            else if (IsKeyword(t, "not") && IsKeyword(_tokens[_at + 1], "in"))
            {
                _at += 2;
                left = new BinaryExpression("not in", left, ParseAdditive());
            }
            else return left;
        }
    }

    private TemplateExpression ParseAdditive()
    {
        var left = ParseConcat();
        while (Peek is { Kind: TemplateTokenKind.Operator, Value: "+" or "-" } t)
        {
            _at++;
            left = new BinaryExpression(t.Value, left, ParseConcat());
        }
        return left;
    }

    private TemplateExpression ParseConcat()
    {
        var left = ParseMultiplicative();
        while (AcceptOperator("~")) left = new BinaryExpression("~", left, ParseMultiplicative());
        return left;
    }

    private TemplateExpression ParseMultiplicative()
    {
        var left = ParsePower();
        while (Peek is { Kind: TemplateTokenKind.Operator, Value: "*" or "/" or "//" or "%" } t)
        {
            _at++;
            left = new BinaryExpression(t.Value, left, ParsePower());
        }
        return left;
    }

    private TemplateExpression ParsePower()
    {
        var left = ParseUnary();
        while (AcceptOperator("**")) left = new BinaryExpression("**", left, ParseUnary());
        return left;
    }

    // As in Jinja, "-x | f" applies f to -x: the operand of a sign takes no filters of its own.
    private TemplateExpression ParseUnary(bool withFilters = true)
    {
        RuntimeHelpers.EnsureSufficientExecutionStack();
        TemplateExpression value;
        if (Peek is { Kind: TemplateTokenKind.Operator, Value: "-" or "+" } t)
        {
            _at++;
            value = new UnaryExpression(t.Value, ParseUnary(withFilters: false));
        }
        else value = ParsePostfix(ParsePrimary());
        return withFilters ? ParseFilters(value) : value;
    }

    private TemplateExpression ParseFilters(TemplateExpression value)
    {
        while (true)
        {
            if (AcceptOperator("|"))
            {
                string name = ExpectName();
                var args = Peek is { Kind: TemplateTokenKind.Operator, Value: "(" } ? ParseCallArguments() : TemplateArguments.None;
                value = new FilterExpression(value, name, args);
            }
            else if (AcceptKeyword("is"))
            {
                bool negated = AcceptKeyword("not");
                string name = ExpectName();
                TemplateArguments args = TemplateArguments.None;
                if (Peek is { Kind: TemplateTokenKind.Operator, Value: "(" }) args = ParseCallArguments();
                else if (Peek.Kind is TemplateTokenKind.String or TemplateTokenKind.Integer or TemplateTokenKind.Float)
                    args = new TemplateArguments([ParsePrimary()], []); // "x is divisibleby 3", "x is sameas none"
                value = new TestExpression(value, name, negated, args);
            }
            else return value;
        }
    }

    private TemplateExpression ParsePostfix(TemplateExpression value)
    {
        while (Peek.Kind == TemplateTokenKind.Operator)
        {
            switch (Peek.Value)
            {
                case ".":
                    _at++;
                    var name = Next();
                    if (name.Kind is not (TemplateTokenKind.Name or TemplateTokenKind.Integer)) throw Error("expected an attribute name after '.'");
                    value = new AttributeExpression(value, name.Value);
                    break;
                case "[":
                    _at++;
                    value = ParseSubscript(value);
                    break;
                case "(":
                    value = new CallExpression(value, ParseCallArguments());
                    break;
                default:
                    return value;
            }
        }
        return value;
    }

    private TemplateExpression ParseSubscript(TemplateExpression target)
    {
        TemplateExpression? start = null;
        if (!IsOperator(Peek, ":")) start = ParseExpression();
        if (AcceptOperator("]"))
            return new IndexExpression(target, start!);
        ExpectOperator(":");
        TemplateExpression? stop = null, step = null;
        if (!IsOperator(Peek, ":") && !IsOperator(Peek, "]")) stop = ParseExpression();
        if (AcceptOperator(":") && !IsOperator(Peek, "]")) step = ParseExpression();
        ExpectOperator("]");
        return new SliceExpression(target, start, stop, step);
    }

    private TemplateArguments ParseCallArguments()
    {
        ExpectOperator("(");
        var positional = new List<TemplateExpression>();
        var named = new List<(string, TemplateExpression)>();
        while (!AcceptOperator(")"))
        {
            if (positional.Count + named.Count > 0) ExpectOperator(",");
            if (Peek.Kind == TemplateTokenKind.Name && IsOperator(_tokens[_at + 1], "="))
            {
                string name = Next().Value;
                _at++;
                named.Add((name, ParseExpression()));
            }
            else
            {
                if (named.Count > 0) throw Error("a positional argument follows a keyword argument");
                positional.Add(ParseExpression());
            }
        }
        return new TemplateArguments(positional, named);
    }

    private TemplateExpression ParsePrimary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case TemplateTokenKind.String:
            {
                // Adjacent string literals concatenate, as in Python.
                string s = t.Value;
                while (Peek.Kind == TemplateTokenKind.String) s += Next().Value;
                return new LiteralExpression(s);
            }
            case TemplateTokenKind.Integer:
                return long.TryParse(t.Value, NumberStyles.None, CultureInfo.InvariantCulture, out long integer) ? new LiteralExpression(integer)
                    : throw new ChatTemplateException($"the integer literal {(t.Value.Length > 40 ? t.Value[..40] + "…" : t.Value)} is out of range (64-bit integers only)");
            case TemplateTokenKind.Float:
                return new LiteralExpression(double.Parse(t.Value, CultureInfo.InvariantCulture));
            case TemplateTokenKind.Name:
                return t.Value switch
                {
                    "true" or "True" => new LiteralExpression(true),
                    "false" or "False" => new LiteralExpression(false),
                    "none" or "None" => new LiteralExpression(null),
                    _ => new NameExpression(t.Value),
                };
            case TemplateTokenKind.Operator when t.Value == "(":
            {
                if (AcceptOperator(")")) return new ListExpression([]);
                var first = ParseExpression();
                if (AcceptOperator(")")) return first;
                var items = new List<TemplateExpression> { first };
                while (AcceptOperator(","))
                {
                    if (IsOperator(Peek, ")")) break;
                    items.Add(ParseExpression());
                }
                ExpectOperator(")");
                return new ListExpression(items);
            }
            case TemplateTokenKind.Operator when t.Value == "[":
            {
                var items = new List<TemplateExpression>();
                while (!AcceptOperator("]"))
                {
                    if (items.Count > 0)
                    {
                        ExpectOperator(",");
                        if (AcceptOperator("]")) break;
                    }
                    items.Add(ParseExpression());
                }
                return new ListExpression(items);
            }
            case TemplateTokenKind.Operator when t.Value == "{":
            {
                var entries = new List<(TemplateExpression, TemplateExpression)>();
                while (!AcceptOperator("}"))
                {
                    if (entries.Count > 0)
                    {
                        ExpectOperator(",");
                        if (AcceptOperator("}")) break;
                    }
                    var key = ParseExpression();
                    ExpectOperator(":");
                    entries.Add((key, ParseExpression()));
                }
                return new DictExpression(entries);
            }
            default:
                _at--;
                throw Error(t.Kind == TemplateTokenKind.End ? "unexpected end of template" : $"unexpected '{t.Value}{(t.Kind is TemplateTokenKind.OutputEnd ? "}}" : t.Kind is TemplateTokenKind.StatementEnd ? "%}" : "")}'");
        }
    }

    // ---------------------------------------------------------------- token helpers

    private TemplateToken Peek => _tokens[_at];

    private TemplateToken Next()
    {
        var t = _tokens[_at];
        if (t.Kind != TemplateTokenKind.End) _at++;
        return t;
    }

    private static bool IsKeyword(TemplateToken t, string name) => t.Kind == TemplateTokenKind.Name && t.Value == name;

    private static bool IsOperator(TemplateToken t, string op) => t.Kind == TemplateTokenKind.Operator && t.Value == op;

    private bool AcceptKeyword(string name)
    {
        if (!IsKeyword(Peek, name)) return false;
        _at++;
        return true;
    }

    private bool AcceptOperator(string op)
    {
        if (!IsOperator(Peek, op)) return false;
        _at++;
        return true;
    }

    private void ExpectKeyword(string name)
    {
        if (!AcceptKeyword(name)) throw Error($"expected '{name}'");
    }

    private void ExpectOperator(string op)
    {
        if (!AcceptOperator(op)) throw Error($"expected '{op}'");
    }

    private string ExpectName()
    {
        if (Peek.Kind != TemplateTokenKind.Name) throw Error("expected a name");
        return Next().Value;
    }

    private void Expect(TemplateTokenKind kind, string what)
    {
        if (Peek.Kind != kind) throw Error($"expected {what}");
        _at++;
    }

    private ChatTemplateException Error(string message) =>
        new($"chat template syntax error at offset {Peek.Position}: {message}");
}
