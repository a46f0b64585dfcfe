namespace Inference.Constraints;

/// <summary>
/// Builds a <see cref="Grammar"/>: rules made of alternatives, each a sequence of elements (byte classes and rule
/// references). Repetitions and character classes outside ASCII become helper rules. Checks that every referenced
/// rule is defined and that no rule is left-recursive.
/// </summary>
internal sealed class GrammarBuilder
{
    /// <summary>An element: a byte class (<see cref="IsRule"/> false) or a rule reference.</summary>
    internal readonly record struct Element(bool IsRule, int Value);

    private readonly List<string> _names = [];
    private readonly Dictionary<string, int> _byName = new(StringComparer.Ordinal);
    private readonly List<List<List<Element>>?> _rules = [];
    private readonly List<ulong> _classes = [];
    private readonly Dictionary<(ulong, ulong, ulong, ulong), int> _classIds = new();
    private readonly Dictionary<string, int> _helpers = new(StringComparer.Ordinal);
    private readonly List<string> _definedAt = [];

    /// <summary>Most repetitions a bounded quantifier may ask for.</summary>
    public const int MaxRepeat = 10_000;

    /// <summary>The id of the rule named <paramref name="name"/>, declared (not yet defined) if new.</summary>
    public int Rule(string name)
    {
        if (_byName.TryGetValue(name, out int id)) return id;
        id = _rules.Count;
        _names.Add(name);
        _byName.Add(name, id);
        _rules.Add(null);
        return id;
    }

    public bool IsDefined(int rule) => _rules[rule] is not null;

    /// <summary>Defines rule <paramref name="rule"/>; a rule is defined once.</summary>
    public void Define(int rule, List<List<Element>> alternatives)
    {
        if (_rules[rule] is not null) throw new InvalidConstraintException($"rule '{_names[rule]}' is defined twice");
        _rules[rule] = alternatives;
    }

    /// <summary>A new helper rule with the given alternatives.</summary>
    public int Helper(string hint, List<List<Element>> alternatives)
    {
        int id = Rule($"{hint}-{_rules.Count}");
        _rules[id] = alternatives;
        return id;
    }

    /// <summary>The element for a byte class given as a 256-bit map.</summary>
    public Element Class(ReadOnlySpan<ulong> bits)
    {
        var key = (bits[0], bits[1], bits[2], bits[3]);
        if (!_classIds.TryGetValue(key, out int id))
        {
            id = _classIds.Count;
            _classIds.Add(key, id);
            _classes.AddRange([bits[0], bits[1], bits[2], bits[3]]);
        }
        return new Element(false, id);
    }

    /// <summary>The element for bytes in [lo, hi].</summary>
    public Element ByteRange(byte lo, byte hi)
    {
        Span<ulong> bits = stackalloc ulong[4];
        for (int b = lo; b <= hi; b++) bits[b >> 6] |= 1UL << (b & 63);
        return Class(bits);
    }

    /// <summary>Appends the elements spelling the UTF-8 bytes of <paramref name="text"/>.</summary>
    public void Literal(ReadOnlySpan<byte> text, List<Element> into)
    {
        foreach (byte b in text) into.Add(ByteRange(b, b));
    }

    /// <summary>
    /// The element matching one code point in <paramref name="ranges"/> (or outside them when
    /// <paramref name="negated"/>): a byte class when all are ASCII, else a helper rule of UTF-8 sequences.
    /// </summary>
    public Element CodePointClass(List<(int Lo, int Hi)> ranges, bool negated)
    {
        var set = Normalize(ranges);
        if (negated) set = Complement(set);
        if (set.Count == 0) throw new InvalidConstraintException("a character class matches nothing");
        if (set[^1].Hi <= 0x7F)
        {
            Span<ulong> bits = stackalloc ulong[4];
            foreach (var (lo, hi) in set)
                for (int c = lo; c <= hi; c++) bits[c >> 6] |= 1UL << (c & 63);
            return Class(bits);
        }
        string key = string.Join(",", set.Select(r => $"{r.Lo:X}-{r.Hi:X}"));
        if (_helpers.TryGetValue(key, out int rule)) return new Element(true, rule);
        var alternatives = new List<List<Element>>();
        // NOTE: sequences that differ only in their first byte range merge into one alternative with a wider class.
        foreach (var seq in Utf8Ranges.Sequences(set))
        {
            var alt = new List<Element>(seq.Length);
            foreach (var r in seq) alt.Add(ByteRange(r.Lo, r.Hi));
            alternatives.Add(alt);
        }
        rule = Helper("char", alternatives);
        _helpers.Add(key, rule);
        return new Element(true, rule);
    }

    /// <summary>The element matching <paramref name="item"/> between <paramref name="min"/> and <paramref name="max"/> times (max −1: unbounded).</summary>
    public List<Element> Repeat(Element item, int min, int max)
    {
        if (min < 0 || min > MaxRepeat || max > MaxRepeat || (max >= 0 && max < min))
            throw new InvalidConstraintException($"repetition {{{min},{(max < 0 ? "" : max.ToString())}}} is out of range (0 ≤ min ≤ max ≤ {MaxRepeat})");
        var seq = new List<Element>();
        for (int i = 0; i < min; i++) seq.Add(item);
        if (max < 0)
        {
            // star ::= item star | ε   (right recursion: the automaton runs it as a loop, without growing its stack)
            int star = Rule($"star-{_rules.Count}");
            _rules[star] = [[item, new Element(true, star)], []];
            seq.Add(new Element(true, star));
        }
        else if (max > min)
        {
            // opt_k ::= item opt_(k-1) | ε  …  opt_1 ::= item | ε
            int next = -1;
            for (int k = 1; k <= max - min; k++)
            {
                var alt = new List<Element> { item };
                if (next >= 0) alt.Add(new Element(true, next));
                next = Helper("opt", [alt, []]);
            }
            seq.Add(new Element(true, next));
        }
        return seq;
    }

    /// <summary>One element standing for a group of alternatives (inlined when it is a single element).</summary>
    public Element Group(List<List<Element>> alternatives)
    {
        if (alternatives.Count == 1 && alternatives[0].Count == 1) return alternatives[0][0];
        return new Element(true, Helper("group", alternatives));
    }

    /// <summary>Compiles the rules, starting at <paramref name="rootName"/>.</summary>
    /// <exception cref="InvalidConstraintException">A rule is missing or left-recursive.</exception>
    public Grammar Build(string rootName)
    {
        if (!_byName.TryGetValue(rootName, out int root) || _rules[root] is null)
            throw new InvalidConstraintException($"the grammar has no '{rootName}' rule");
        for (int r = 0; r < _rules.Count; r++)
            if (_rules[r] is null) throw new InvalidConstraintException($"rule '{_names[r]}' is used but not defined");
        CheckLeftRecursion();

        var code = new List<int>();
        var altStarts = new int[_rules.Count][];
        for (int r = 0; r < _rules.Count; r++)
        {
            var alts = _rules[r]!;
            altStarts[r] = new int[alts.Count];
            for (int a = 0; a < alts.Count; a++)
            {
                altStarts[r][a] = code.Count;
                foreach (var e in alts[a]) code.Add(e.IsRule ? Grammar.RefOf(e.Value) : e.Value);
                code.Add(Grammar.End);
            }
        }
        return new Grammar(code.ToArray(), altStarts, _classes.ToArray(), _names.ToArray(), root);
    }

    private void CheckLeftRecursion()
    {
        int n = _rules.Count;
        var nullable = new bool[n];
        for (bool changed = true; changed;)
        {
            changed = false;
            for (int r = 0; r < n; r++)
            {
                if (nullable[r]) continue;
                foreach (var alt in _rules[r]!)
                {
                    bool all = true;
                    foreach (var e in alt)
                        if (!e.IsRule || !nullable[e.Value]) { all = false; break; }
                    if (all) { nullable[r] = true; changed = true; break; }
                }
            }
        }
        // Edges r → s where s can come first in r (after nullable rules); a cycle is left recursion.
        var state = new byte[n]; // 0 unvisited, 1 on the path, 2 done
        for (int r = 0; r < n; r++) Visit(r);

        void Visit(int r)
        {
            if (state[r] == 2) return;
            // NOTE: a chain of rules each starting with the next is as deep as it is long (see Constraint.Compile).
            System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
            if (state[r] == 1) throw new InvalidConstraintException($"rule '{_names[r]}' is left-recursive (it can reach itself without consuming input)");
            state[r] = 1;
            foreach (var alt in _rules[r]!)
                foreach (var e in alt)
                {
                    if (!e.IsRule) break;
                    Visit(e.Value);
                    if (!nullable[e.Value]) break;
                }
            state[r] = 2;
        }
    }

    private static List<(int Lo, int Hi)> Normalize(List<(int Lo, int Hi)> ranges)
    {
        var sorted = new List<(int Lo, int Hi)>(ranges);
        sorted.Sort((a, b) => a.Lo.CompareTo(b.Lo));
        var merged = new List<(int Lo, int Hi)>();
        foreach (var r in sorted)
        {
            if (r.Lo > r.Hi) throw new InvalidConstraintException($"character range U+{r.Lo:X4}-U+{r.Hi:X4} is reversed");
            if (merged.Count > 0 && r.Lo <= merged[^1].Hi + 1) merged[^1] = (merged[^1].Lo, Math.Max(merged[^1].Hi, r.Hi));
            else merged.Add(r);
        }
        return merged;
    }

    private static List<(int Lo, int Hi)> Complement(List<(int Lo, int Hi)> set)
    {
        var result = new List<(int Lo, int Hi)>();
        int next = 0;
        foreach (var (lo, hi) in set)
        {
            if (lo > next) result.Add((next, lo - 1));
            next = hi + 1;
        }
        if (next <= 0x10FFFF) result.Add((next, 0x10FFFF));
        return result;
    }
}
