namespace Inference.Constraints;

/// <summary>
/// A context-free grammar over bytes, compiled into one flat program that <see cref="GrammarAutomaton"/> runs as a
/// pushdown automaton. Immutable and shared by every request that uses the same constraint.
/// </summary>
/// <remarks>
/// Layout of <see cref="Code"/>: each rule's alternatives one after another, each a run of elements closed by
/// <see cref="End"/>. An element ≥ 0 is a terminal, the index of a 256-bit byte class in <see cref="Classes"/>; an
/// element ≤ −2 is a reference to rule <c>−2 − element</c>.
/// <code>
///   rule r:  [e e e End] [e e End] ...      AltStarts[r] = offsets of each alternative's first element
/// </code>
/// Characters outside ASCII are already spelled as UTF-8 byte sequences, so a token that ends in the middle of a
/// character simply leaves the automaton in the middle of that sequence.
/// </remarks>
internal sealed class Grammar
{
    /// <summary>Closes an alternative.</summary>
    public const int End = -1;

    public Grammar(int[] code, int[][] altStarts, ulong[] classes, string[] ruleNames, int root)
    {
        Code = code;
        AltStarts = altStarts;
        Classes = classes;
        RuleNames = ruleNames;
        Root = root;
    }

    /// <summary>The program (see remarks).</summary>
    public int[] Code { get; }

    /// <summary>[rule][alternative] offset in <see cref="Code"/> of the alternative's first element.</summary>
    public int[][] AltStarts { get; }

    /// <summary>[class × 4] bitmaps of the bytes each terminal accepts.</summary>
    public ulong[] Classes { get; }

    /// <summary>[rule] names, for messages.</summary>
    public string[] RuleNames { get; }

    /// <summary>The start rule.</summary>
    public int Root { get; }

    /// <summary>Whether terminal <paramref name="cls"/> accepts <paramref name="b"/>.</summary>
    public bool Accepts(int cls, byte b) => (Classes[cls * 4 + (b >> 6)] & (1UL << (b & 63))) != 0;

    public static int RefOf(int rule) => -2 - rule;
    public static int RuleOf(int element) => -2 - element;
}
