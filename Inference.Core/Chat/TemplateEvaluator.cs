using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using static Inference.Chat.TemplateValues;

namespace Inference.Chat;

/// <summary>
/// Renders a parsed template. Scoping follows Jinja: a <c>for</c> body and a macro call get their own scope, so a
/// <c>{% set %}</c> inside a loop does not leak out of it (use <c>namespace()</c> for that); <c>if</c> shares its scope.
/// </summary>
internal sealed class TemplateEvaluator
{
    private const int MaxCallDepth = 64;

    private readonly List<Dictionary<string, object?>> _scopes = [];
    private readonly TemplateLimits.Budget _budget;
    private int _callDepth;

    private TemplateEvaluator(Dictionary<string, object?> globals, TemplateLimits limits)
    {
        _budget = new TemplateLimits.Budget(limits);
        _scopes.Add(Builtins(_budget));
        _scopes.Add(globals);
    }

    public static string Render(IReadOnlyList<TemplateNode> nodes, Dictionary<string, object?> globals, TemplateLimits limits)
    {
        var evaluator = new TemplateEvaluator(globals, limits);
        var output = TemplateLimits.NewBuilder();
        evaluator.Execute(nodes, output);
        return output.ToString();
    }

    // ---------------------------------------------------------------- statements

    private LoopSignal Execute(IReadOnlyList<TemplateNode> nodes, StringBuilder output)
    {
        RuntimeHelpers.EnsureSufficientExecutionStack();
        foreach (var node in nodes)
        {
            _budget.Step();
            switch (node)
            {
                case TextNode text:
                    output.Append(text.Text);
                    break;
                case OutputNode o:
                    output.Append(ToText(Evaluate(o.Expression)));
                    break;
                case IfNode branch:
                {
                    IReadOnlyList<TemplateNode> chosen = branch.Else;
                    foreach (var (condition, body) in branch.Branches)
                    {
                        if (!IsTruthy(Evaluate(condition))) continue;
                        chosen = body;
                        break;
                    }
                    var signal = Execute(chosen, output);
                    if (signal != LoopSignal.None) return signal;
                    break;
                }
                case LoopControlNode control:
                    return control.Signal;
                case ForNode loop:
                    ExecuteFor(loop, output);
                    break;
                case SetNode set:
                {
                    var value = Evaluate(set.Value);
                    if (set.Attribute is null) _scopes[^1][set.Name] = value;
                    else if (Lookup(set.Name) is TemplateNamespace ns) ns[set.Attribute] = value;
                    else throw new ChatTemplateException($"cannot set '{set.Name}.{set.Attribute}': '{set.Name}' is not a namespace");
                    break;
                }
                case SetBlockNode block:
                {
                    var captured = TemplateLimits.NewBuilder();
                    Execute(block.Body, captured);
                    _scopes[^1][block.Name] = captured.ToString();
                    break;
                }
                case MacroNode macro:
                    _scopes[^1][macro.Name] = MakeMacro(macro);
                    break;
                default:
                    throw new ChatTemplateException($"unsupported node {node.GetType().Name}");
            }
        }
        return LoopSignal.None;
    }

    private void ExecuteFor(ForNode loop, StringBuilder output)
    {
        var source = Evaluate(loop.Items);
        var items = new List<object?>();
        _scopes.Add(new Dictionary<string, object?>(StringComparer.Ordinal));
        try
        {
            foreach (var item in Iterate(source))
            {
                _budget.Iteration();
                if (loop.Condition is not null)
                {
                    Bind(loop.Targets, item);
                    if (!IsTruthy(Evaluate(loop.Condition))) continue;
                }
                items.Add(item);
            }
            if (items.Count == 0)
            {
                Execute(loop.Else, output);
                return;
            }
            for (int i = 0; i < items.Count; i++)
            {
                _budget.Iteration();
                var scope = _scopes[^1];
                scope.Clear();
                Bind(loop.Targets, items[i]);
                int index = i;
                scope["loop"] = new Dictionary<string, object?>(StringComparer.Ordinal)
                {
                    ["index0"] = (long)i,
                    ["index"] = (long)(i + 1),
                    ["revindex0"] = (long)(items.Count - 1 - i),
                    ["revindex"] = (long)(items.Count - i),
                    ["first"] = i == 0,
                    ["last"] = i == items.Count - 1,
                    ["length"] = (long)items.Count,
                    ["previtem"] = i > 0 ? items[i - 1] : TemplateUndefined.Instance,
                    ["nextitem"] = i + 1 < items.Count ? items[i + 1] : TemplateUndefined.Instance,
                    ["cycle"] = (TemplateCallable)((args, _) => args.Count == 0 ? null : args[index % args.Count]),
                };
                if (Execute(loop.Body, output) == LoopSignal.Break) break;
            }
        }
        finally
        {
            _scopes.RemoveAt(_scopes.Count - 1);
        }
    }

    private void Bind(IReadOnlyList<string> targets, object? item)
    {
        var scope = _scopes[^1];
        if (targets.Count == 1)
        {
            scope[targets[0]] = item;
            return;
        }
        if (item is not List<object?> tuple || tuple.Count != targets.Count)
            throw new ChatTemplateException($"cannot unpack {TypeName(item)} into {targets.Count} loop variables");
        for (int i = 0; i < targets.Count; i++) scope[targets[i]] = tuple[i];
    }

    private static IEnumerable<object?> Iterate(object? value)
    {
        switch (value)
        {
            case List<object?> list: return list.ToArray();
            case Dictionary<string, object?> dictionary: return dictionary.Keys.Cast<object?>().ToArray();
            case string s: return s.Select(c => (object?)c.ToString()).ToArray();
            case null or TemplateUndefined: return [];
            default: throw new ChatTemplateException($"cannot iterate over {TypeName(value)}");
        }
    }

    private TemplateCallable MakeMacro(MacroNode macro) => (positional, named) =>
    {
        if (++_callDepth > MaxCallDepth) throw new ChatTemplateException("macro calls nest too deeply");
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
        for (int i = 0; i < macro.Parameters.Count; i++)
        {
            string p = macro.Parameters[i];
            scope[p] = i < positional.Count ? positional[i]
                : named.TryGetValue(p, out var v) ? v
                : macro.Defaults[i] is { } d ? Evaluate(d)
                : TemplateUndefined.Instance;
        }
        _scopes.Add(scope);
        try
        {
            var output = TemplateLimits.NewBuilder();
            Execute(macro.Body, output);
            return output.ToString();
        }
        finally
        {
            _scopes.RemoveAt(_scopes.Count - 1);
            _callDepth--;
        }
    };

    private object? Lookup(string name)
    {
        for (int i = _scopes.Count - 1; i >= 0; i--)
            if (_scopes[i].TryGetValue(name, out var value)) return value;
        return TemplateUndefined.Instance;
    }

    // ---------------------------------------------------------------- expressions

    private object? Evaluate(TemplateExpression expression)
    {
        // Left-deep operator chains make the tree as deep as the chain is long.
        RuntimeHelpers.EnsureSufficientExecutionStack();
        _budget.Step();
        switch (expression)
        {
            case LiteralExpression literal: return literal.Value;
            case NameExpression name: return Lookup(name.Name);
            case ListExpression list:
            {
                var items = new List<object?>(list.Items.Count);
                foreach (var item in list.Items) items.Add(Evaluate(item));
                return items;
            }
            case DictExpression dict:
            {
                var result = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (key, value) in dict.Entries) result[ToText(Evaluate(key))] = Evaluate(value);
                return result;
            }
            case AttributeExpression attribute: return GetAttribute(Evaluate(attribute.Target), attribute.Name);
            case IndexExpression index: return GetItem(Evaluate(index.Target), Evaluate(index.Index));
            case SliceExpression slice:
                return Slice(Evaluate(slice.Target),
                    slice.Start is null ? null : Evaluate(slice.Start),
                    slice.Stop is null ? null : Evaluate(slice.Stop),
                    slice.Step is null ? null : Evaluate(slice.Step));
            case CallExpression call:
            {
                var callee = Evaluate(call.Callee);
                if (callee is not TemplateCallable function)
                    throw new ChatTemplateException($"'{Describe(call.Callee)}' is not callable (it is {TypeName(callee)})");
                var (positional, named) = EvaluateArguments(call.Arguments);
                return function(positional, named);
            }
            case FilterExpression filter:
            {
                var (positional, named) = EvaluateArguments(filter.Arguments);
                return TemplateFilters.Apply(filter.Name, Evaluate(filter.Value), positional, named);
            }
            case TestExpression test:
            {
                var (positional, _) = EvaluateArguments(test.Arguments);
                return TemplateFilters.Test(test.Name, Evaluate(test.Value), positional) != test.Negated;
            }
            case UnaryExpression unary:
            {
                var operand = Evaluate(unary.Operand);
                return unary.Operator switch
                {
                    "not" => !IsTruthy(operand),
                    "-" => operand is long l ? (object)(-l) : -ToDouble(operand),
                    _ => operand is long or double ? operand : ToDouble(operand),
                };
            }
            case BinaryExpression binary: return EvaluateBinary(binary);
            case ConditionalExpression conditional:
                return IsTruthy(Evaluate(conditional.Condition)) ? Evaluate(conditional.WhenTrue)
                    : conditional.WhenFalse is null ? TemplateUndefined.Instance : Evaluate(conditional.WhenFalse);
            default:
                throw new ChatTemplateException($"unsupported expression {expression.GetType().Name}");
        }
    }

    private (List<object?> Positional, Dictionary<string, object?> Named) EvaluateArguments(TemplateArguments arguments)
    {
        var positional = new List<object?>(arguments.Positional.Count);
        foreach (var a in arguments.Positional) positional.Add(Evaluate(a));
        var named = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (name, value) in arguments.Named) named[name] = Evaluate(value);
        return (positional, named);
    }

    private object? EvaluateBinary(BinaryExpression binary)
    {
        switch (binary.Operator)
        {
            case "and":
            {
                var left = Evaluate(binary.Left);
                return IsTruthy(left) ? Evaluate(binary.Right) : left;
            }
            case "or":
            {
                var left = Evaluate(binary.Left);
                return IsTruthy(left) ? left : Evaluate(binary.Right);
            }
        }
        var a = Evaluate(binary.Left);
        var b = Evaluate(binary.Right);
        switch (binary.Operator)
        {
            case "==": return AreEqual(a, b);
            case "!=": return !AreEqual(a, b);
            case "<": return Compare(a, b) < 0;
            case ">": return Compare(a, b) > 0;
            case "<=": return Compare(a, b) <= 0;
            case ">=": return Compare(a, b) >= 0;
            case "in": return Contains(b, a);
            case "not in": return !Contains(b, a);
            case "~":
            {
                string ta = ToText(a), tb = ToText(b);
                TemplateLimits.CheckString((long)ta.Length + tb.Length);
                return ta + tb;
            }
            case "+":
                if (a is string sa && b is string sb)
                {
                    TemplateLimits.CheckString((long)sa.Length + sb.Length);
                    return sa + sb;
                }
                if (a is List<object?> la && b is List<object?> lb)
                {
                    TemplateLimits.CheckList((long)la.Count + lb.Count);
                    return (List<object?>)[.. la, .. lb];
                }
                return Arithmetic(binary.Operator, a, b);
            case "*":
                if (a is string repeated && b is long times)
                {
                    if (times <= 0 || repeated.Length == 0) return "";
                    TemplateLimits.CheckString(times > TemplateLimits.MaxStringChars ? times : repeated.Length * times);
                    return string.Concat(Enumerable.Repeat(repeated, (int)times));
                }
                return Arithmetic(binary.Operator, a, b);
            default:
                return Arithmetic(binary.Operator, a, b);
        }
    }

    private static object? Arithmetic(string op, object? a, object? b)
    {
        if (!IsNumber(a) || !IsNumber(b))
            throw new ChatTemplateException($"unsupported operand types for {op}: {TypeName(a)} and {TypeName(b)}");
        if (a is not double && b is not double)
        {
            // NOTE: exact, not through double (which rounds past 2^53); past long's range refused as an overflow
            // (Python's integers would grow instead).
            long x = a is long la ? la : (bool)a! ? 1 : 0, y = b is long lb ? lb : (bool)b! ? 1 : 0;
            switch (op)
            {
                case "+": return checked(x + y);
                case "-": return checked(x - y);
                case "*": return checked(x * y);
                case "//": return y == 0 ? throw DivideByZero() : (long)Math.Floor((double)x / y);
                case "%": return y == 0 ? throw DivideByZero() : ((x % y) + y) % y;
                case "**" when y >= 0: return (long)Math.Pow(x, y);
            }
        }
        double p = ToDouble(a), q = ToDouble(b);
        return op switch
        {
            "+" => p + q,
            "-" => p - q,
            "*" => p * q,
            "/" => q == 0 ? throw DivideByZero() : p / q,
            "//" => q == 0 ? throw DivideByZero() : Math.Floor(p / q),
            "%" => q == 0 ? throw DivideByZero() : p - q * Math.Floor(p / q),
            "**" => Math.Pow(p, q),
            _ => throw new ChatTemplateException($"unsupported operator {op}"),
        };
    }

    private static ChatTemplateException DivideByZero() => new("division by zero");

    private static int Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b)) return ToDouble(a).CompareTo(ToDouble(b));
        if (a is string sa && b is string sb) return string.CompareOrdinal(sa, sb);
        throw new ChatTemplateException($"cannot compare {TypeName(a)} with {TypeName(b)}");
    }

    private static bool Contains(object? container, object? item)
    {
        switch (container)
        {
            case string s:
                return item is string needle ? s.Contains(needle, StringComparison.Ordinal)
                    : throw new ChatTemplateException($"'in <string>' needs a string on the left, not {TypeName(item)}");
            case List<object?> list:
                foreach (var x in list)
                    if (AreEqual(x, item)) return true;
                return false;
            case Dictionary<string, object?> dictionary:
                return item is string key && dictionary.ContainsKey(key);
            case TemplateUndefined or null:
                throw new ChatTemplateException($"'in' needs a container on the right, not {TypeName(container)}");
            default:
                throw new ChatTemplateException($"'in' is not supported on {TypeName(container)}");
        }
    }

    /// <summary><c>value.name</c>: a key of a dictionary (Jinja tries the attribute, then the item), else a method.</summary>
    internal static object? GetAttribute(object? value, string name)
    {
        if (value is Dictionary<string, object?> dictionary && dictionary.TryGetValue(name, out var item)) return item;
        return TemplateMethods.Bind(value, name) ?? (object)TemplateUndefined.Instance;
    }

    /// <summary><c>value[index]</c>: list and string positions (negative from the end), dictionary keys; missing → undefined.</summary>
    internal static object? GetItem(object? value, object? index)
    {
        switch (value)
        {
            case List<object?> list when index is long i:
                if (i < 0) i += list.Count;
                return i >= 0 && i < list.Count ? list[(int)i] : TemplateUndefined.Instance;
            case string s when index is long i:
                if (i < 0) i += s.Length;
                return i >= 0 && i < s.Length ? s[(int)i].ToString() : TemplateUndefined.Instance;
            case Dictionary<string, object?> dictionary when index is string key:
                return dictionary.TryGetValue(key, out var item) ? item : TemplateMethods.Bind(value, key) ?? (object)TemplateUndefined.Instance;
            case TemplateUndefined or null:
                return TemplateUndefined.Instance;
            default:
                return index is string name ? GetAttribute(value, name) : TemplateUndefined.Instance;
        }
    }

    // Python slicing: value[start:stop:step] on lists and strings.
    private static object? Slice(object? value, object? start, object? stop, object? step)
    {
        int length = value switch
        {
            List<object?> list => list.Count,
            string s => s.Length,
            _ => throw new ChatTemplateException($"cannot slice {TypeName(value)}"),
        };
        long stepValue = step is null ? 1 : step is long st ? st : throw new ChatTemplateException("slice step must be an integer");
        if (stepValue == 0) throw new ChatTemplateException("slice step cannot be zero");
        long Clamp(object? bound, long whenNull)
        {
            if (bound is null) return whenNull;
            if (bound is not long b) throw new ChatTemplateException("slice bounds must be integers");
            if (b < 0) b += length;
            return stepValue > 0 ? Math.Clamp(b, 0, length) : Math.Clamp(b, -1, length - 1);
        }
        long from = Clamp(start, stepValue > 0 ? 0 : length - 1);
        long to = Clamp(stop, stepValue > 0 ? length : -1);
        // NOTE: counted rather than stepped: 'from + step' overflows for a step near 2^63 and would wrap to a negative index.
        long span = stepValue > 0 ? to - from : from - to;
        long stride = stepValue == long.MinValue ? long.MaxValue : Math.Abs(stepValue);
        long count = span <= 0 ? 0 : 1 + (span - 1) / stride;
        var indices = new List<int>((int)count);
        for (long k = 0; k < count; k++) indices.Add((int)(from + (stepValue > 0 ? k * stride : -k * stride)));
        if (value is string text)
        {
            var sb = TemplateLimits.NewBuilder(indices.Count);
            foreach (int i in indices) sb.Append(text[i]);
            return sb.ToString();
        }
        var source = (List<object?>)value!;
        var result = new List<object?>(indices.Count);
        foreach (int i in indices) result.Add(source[i]);
        return result;
    }

    private static string Describe(TemplateExpression expression) => expression switch
    {
        NameExpression n => n.Name,
        AttributeExpression a => Describe(a.Target) + "." + a.Name,
        _ => "expression",
    };

    private static Dictionary<string, object?> Builtins(TemplateLimits.Budget budget) => new(StringComparer.Ordinal)
    {
        ["raise_exception"] = (TemplateCallable)((args, _) =>
            throw new ChatTemplateException(args.Count > 0 ? ToText(args[0]) : "the chat template raised an exception") { RaisedByTemplate = true }),
        ["namespace"] = (TemplateCallable)((_, named) =>
        {
            var ns = new TemplateNamespace();
            foreach (var (key, value) in named) ns[key] = value;
            return ns;
        }),
        ["range"] = (TemplateCallable)((args, _) =>
        {
            long start = 0, stop, step = 1;
            if (args.Count == 1) stop = AsLong(args[0]);
            else if (args.Count is 2 or 3)
            {
                start = AsLong(args[0]);
                stop = AsLong(args[1]);
                if (args.Count == 3) step = AsLong(args[2]);
            }
            else throw new ChatTemplateException("range() takes 1 to 3 arguments");
            if (step == 0) throw new ChatTemplateException("range() step cannot be zero");
            var result = new List<object?>();
            for (long i = start; step > 0 ? i < stop : i > stop; i += step)
            {
                budget.Iteration();
                result.Add(i);
                // NOTE: the next value would wrap past long's range (Python's integers do not; its range stops here).
                if (step > 0 ? i > long.MaxValue - step : i < long.MinValue - step) break;
            }
            return result;
        }),
    };

    internal static long AsLong(object? value) => value switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        double d => (long)d,
        string s when long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out long parsed) => parsed,
        _ => throw new ChatTemplateException($"expected an integer, got {TypeName(value)}"),
    };
}
