namespace Inference.Chat;

// The syntax tree of a chat template: statements (TemplateNode) and expressions (TemplateExpression).

/// <summary>A statement of a template.</summary>
internal abstract record TemplateNode;

/// <summary>Literal text.</summary>
internal sealed record TextNode(string Text) : TemplateNode;

/// <summary><c>{{ expression }}</c></summary>
internal sealed record OutputNode(TemplateExpression Expression) : TemplateNode;

/// <summary><c>{% if %}…{% elif %}…{% else %}…{% endif %}</c>: the first branch whose condition holds runs.</summary>
internal sealed record IfNode(IReadOnlyList<(TemplateExpression Condition, IReadOnlyList<TemplateNode> Body)> Branches, IReadOnlyList<TemplateNode> Else) : TemplateNode;

/// <summary><c>{% for a, b in items if condition %}…{% else %}…{% endfor %}</c></summary>
internal sealed record ForNode(IReadOnlyList<string> Targets, TemplateExpression Items, TemplateExpression? Condition, IReadOnlyList<TemplateNode> Body, IReadOnlyList<TemplateNode> Else) : TemplateNode;

/// <summary><c>{% set name = value %}</c> or <c>{% set ns.attribute = value %}</c> (Attribute non-null).</summary>
internal sealed record SetNode(string Name, string? Attribute, TemplateExpression Value) : TemplateNode;

/// <summary><c>{% set name %}…{% endset %}</c>: captures the rendered body as a string.</summary>
internal sealed record SetBlockNode(string Name, IReadOnlyList<TemplateNode> Body) : TemplateNode;

/// <summary><c>{% macro name(params) %}…{% endmacro %}</c>; Defaults hold null for parameters without one.</summary>
internal sealed record MacroNode(string Name, IReadOnlyList<string> Parameters, IReadOnlyList<TemplateExpression?> Defaults, IReadOnlyList<TemplateNode> Body) : TemplateNode;

/// <summary><c>{% break %}</c> or <c>{% continue %}</c> (Jinja's loopcontrols extension, which Hugging Face enables).</summary>
internal sealed record LoopControlNode(LoopSignal Signal) : TemplateNode;

/// <summary>How a statement list ended: normally, or by <c>break</c>/<c>continue</c> of the innermost loop.</summary>
internal enum LoopSignal
{
    None,
    Break,
    Continue,
}

/// <summary>An expression of a template.</summary>
internal abstract record TemplateExpression;

/// <summary>A literal: string, long, double, bool or null (<c>none</c>).</summary>
internal sealed record LiteralExpression(object? Value) : TemplateExpression;

/// <summary>A variable.</summary>
internal sealed record NameExpression(string Name) : TemplateExpression;

/// <summary><c>[a, b]</c> (tuples too).</summary>
internal sealed record ListExpression(IReadOnlyList<TemplateExpression> Items) : TemplateExpression;

/// <summary><c>{'a': b}</c></summary>
internal sealed record DictExpression(IReadOnlyList<(TemplateExpression Key, TemplateExpression Value)> Entries) : TemplateExpression;

/// <summary><c>target.name</c></summary>
internal sealed record AttributeExpression(TemplateExpression Target, string Name) : TemplateExpression;

/// <summary><c>target[index]</c></summary>
internal sealed record IndexExpression(TemplateExpression Target, TemplateExpression Index) : TemplateExpression;

/// <summary><c>target[start:stop:step]</c></summary>
internal sealed record SliceExpression(TemplateExpression Target, TemplateExpression? Start, TemplateExpression? Stop, TemplateExpression? Step) : TemplateExpression;

/// <summary>Positional and keyword arguments of a call, filter or test.</summary>
internal sealed record TemplateArguments(IReadOnlyList<TemplateExpression> Positional, IReadOnlyList<(string Name, TemplateExpression Value)> Named)
{
    public static TemplateArguments None { get; } = new([], []);
}

/// <summary><c>callee(arguments)</c></summary>
internal sealed record CallExpression(TemplateExpression Callee, TemplateArguments Arguments) : TemplateExpression;

/// <summary><c>value | name(arguments)</c></summary>
internal sealed record FilterExpression(TemplateExpression Value, string Name, TemplateArguments Arguments) : TemplateExpression;

/// <summary><c>value is [not] name(arguments)</c></summary>
internal sealed record TestExpression(TemplateExpression Value, string Name, bool Negated, TemplateArguments Arguments) : TemplateExpression;

/// <summary><c>not x</c>, <c>-x</c>, <c>+x</c></summary>
internal sealed record UnaryExpression(string Operator, TemplateExpression Operand) : TemplateExpression;

/// <summary>Binary operators, <c>and</c>/<c>or</c> (short-circuit), comparisons, <c>in</c> and <c>not in</c>.</summary>
internal sealed record BinaryExpression(string Operator, TemplateExpression Left, TemplateExpression Right) : TemplateExpression;

/// <summary><c>whenTrue if condition else whenFalse</c> (WhenFalse null: undefined).</summary>
internal sealed record ConditionalExpression(TemplateExpression Condition, TemplateExpression WhenTrue, TemplateExpression? WhenFalse) : TemplateExpression;
