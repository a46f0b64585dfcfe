namespace Inference.Chat;

/// <summary>Kinds of <see cref="TemplateToken"/>.</summary>
internal enum TemplateTokenKind
{
    /// <summary>Literal text between tags (already trimmed by whitespace control).</summary>
    Text,
    /// <summary><c>{{</c></summary>
    OutputStart,
    /// <summary><c>}}</c></summary>
    OutputEnd,
    /// <summary><c>{%</c></summary>
    StatementStart,
    /// <summary><c>%}</c></summary>
    StatementEnd,
    /// <summary>An identifier or keyword.</summary>
    Name,
    /// <summary>A string literal (the value is unescaped).</summary>
    String,
    /// <summary>An integer literal.</summary>
    Integer,
    /// <summary>A floating-point literal.</summary>
    Float,
    /// <summary>An operator or punctuation.</summary>
    Operator,
    /// <summary>The end of the template.</summary>
    End,
}

/// <summary>One token of a template; <see cref="Position"/> is its character offset in the source, for errors.</summary>
internal readonly record struct TemplateToken(TemplateTokenKind Kind, string Value, int Position);
