using System.Text;

namespace Inference.Cuda;

/// <summary>Text of a generated PTX module: one instruction per line, operands aligned, labels and comments.</summary>
internal sealed class PtxWriter
{
    private readonly StringBuilder _sb = new();

    /// <summary>Appends <paramref name="text"/> with its line endings normalised to '\n'.</summary>
    public void Raw(string text) => _sb.Append(text.ReplaceLineEndings("\n"));

    /// <summary>Appends <c>op operands;  // comment</c>.</summary>
    public void Line(string op, string? operands, string? comment = null)
    {
        _sb.Append('\t').Append(op);
        if (operands is not null) _sb.Append(' ', Math.Max(1, 24 - op.Length)).Append(operands);
        _sb.Append(';');
        if (comment is not null) _sb.Append("    // ").Append(comment);
        _sb.Append('\n');
    }

    /// <summary>Appends a label.</summary>
    public void Label(string name) => _sb.Append(name).Append(":\n");

    /// <summary>Appends a comment line.</summary>
    public void Comment(string text) => _sb.Append("\t// ").Append(text).Append('\n');

    /// <inheritdoc/>
    public override string ToString() => _sb.ToString();
}
