namespace Inference.Constraints;

/// <summary>
/// Runs a <see cref="Grammar"/> as a pushdown automaton over bytes, determinized lazily: a state is the set of stacks
/// the grammar can be in after the bytes so far, and each state's transition on each byte is computed once and then
/// read from a table. Stacks are hash-consed (a node is a return position and its parent node), so equal stacks are
/// the same node and equal stack sets the same state.
/// </summary>
/// <remarks>
/// A call to a rule in tail position (the last element of an alternative) pushes no return node, so repetitions
/// (<c>star ::= item star | ε</c>) run as loops and revisit the same states. Each state also caches its token mask
/// (see <see cref="GrammarMatcher"/>), which is what makes the per-token cost small once a state has been seen: the
/// states inside a JSON string, between properties of the same object, and so on, recur token after token.
/// Not thread-safe: one automaton per request (the engine thread owns it).
/// </remarks>
internal sealed class GrammarAutomaton
{
    /// <summary>The transition to no state: the byte is rejected.</summary>
    public const int Dead = -2;
    private const int Unknown = -1;
    /// <summary>Node 0 stands for an emptied stack: the grammar has matched a whole string.</summary>
    private const int AcceptNode = 0;
    /// <summary>Most stack nodes one automaton may create before it gives up (a safety net for explosive grammars).</summary>
    private const int MaxNodes = 4_000_000;

    private readonly Grammar _grammar;
    private readonly int[] _code;
    private readonly List<int> _nodePc = [-1];
    private readonly List<int> _nodeParent = [-1];
    private readonly Dictionary<long, int> _nodeIds = new();
    private readonly List<int[]> _stateNodes = [];
    private readonly List<int[]> _transitions = [];
    private readonly Dictionary<int[], int> _stateIds = new(new IntArrayComparer());
    private readonly HashSet<int> _visited = [];
    private readonly List<int> _closure = [];

    public GrammarAutomaton(Grammar grammar)
    {
        _grammar = grammar;
        _code = grammar.Code;
        _closure.Clear();
        _visited.Clear();
        foreach (int start in grammar.AltStarts[grammar.Root]) Close(Node(start, -1));
        InitialState = Intern();
        if (InitialState == Dead) throw new InvalidConstraintException("the grammar matches nothing");
    }

    public int InitialState { get; }

    public int StateCount => _stateNodes.Count;

    /// <summary>Whether the grammar has matched a whole string in <paramref name="state"/>.</summary>
    public bool IsAccepting(int state) => _stateNodes[state][0] == AcceptNode;

    /// <summary>Whether more bytes can follow in <paramref name="state"/>.</summary>
    public bool CanContinue(int state)
    {
        var nodes = _stateNodes[state];
        return nodes.Length > 1 || nodes[0] != AcceptNode;
    }

    /// <summary>The state after <paramref name="b"/> in <paramref name="state"/>, or <see cref="Dead"/>.</summary>
    public int Step(int state, byte b)
    {
        int next = _transitions[state][b];
        return next != Unknown ? next : ComputeStep(state, b);
    }

    /// <summary>The state after all of <paramref name="bytes"/>, or <see cref="Dead"/>.</summary>
    public int Walk(int state, ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
        {
            state = Step(state, b);
            if (state == Dead) return Dead;
        }
        return state;
    }

    private int ComputeStep(int state, byte b)
    {
        _closure.Clear();
        _visited.Clear();
        try
        {
            foreach (int node in _stateNodes[state])
            {
                if (node == AcceptNode) continue;
                int pc = _nodePc[node];
                if (_grammar.Accepts(_code[pc], b)) Close(Node(pc + 1, _nodeParent[node]));
            }
        }
        catch (InsufficientExecutionStackException e)
        {
            throw new InvalidConstraintException("the grammar nests too deeply to match", e);
        }
        int next = Intern();
        _transitions[state][b] = next;
        return next;
    }

    /// <summary>Adds to the closure every node reachable from <paramref name="node"/> without reading a byte.</summary>
    private void Close(int node)
    {
        if (!_visited.Add(node)) return;
        // NOTE: as deep as the chain of rules it enters without reading a byte (see Constraint.Compile).
        System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
        if (node == AcceptNode)
        {
            _closure.Add(AcceptNode);
            return;
        }
        int pc = _nodePc[node], parent = _nodeParent[node];
        int element = _code[pc];
        if (element >= 0)
        {
            _closure.Add(node);       // a terminal on top: waits for a byte
        }
        else if (element == Grammar.End)
        {
            Close(parent < 0 ? AcceptNode : parent); // the alternative is done: return to the caller
        }
        else
        {
            int rule = Grammar.RuleOf(element);
            // NOTE: a call in tail position returns straight to our caller, so right recursion does not grow the stack.
            int ret = _code[pc + 1] == Grammar.End ? parent : Node(pc + 1, parent);
            foreach (int start in _grammar.AltStarts[rule]) Close(Node(start, ret));
        }
    }

    private int Node(int pc, int parent)
    {
        long key = ((long)pc << 32) | (uint)parent;
        if (_nodeIds.TryGetValue(key, out int id)) return id;
        id = _nodePc.Count;
        if (id >= MaxNodes) throw new InvalidConstraintException($"the grammar needs more than {MaxNodes} parser stack nodes; simplify it");
        _nodePc.Add(pc);
        _nodeParent.Add(parent);
        _nodeIds.Add(key, id);
        return id;
    }

    /// <summary>The state for the current closure (sorted, so the accept node comes first), or <see cref="Dead"/>.</summary>
    private int Intern()
    {
        if (_closure.Count == 0) return Dead;
        var nodes = _closure.ToArray();
        Array.Sort(nodes);
        if (_stateIds.TryGetValue(nodes, out int id)) return id;
        id = _stateNodes.Count;
        _stateNodes.Add(nodes);
        var row = new int[256];
        row.AsSpan().Fill(Unknown);
        _transitions.Add(row);
        _stateIds.Add(nodes, id);
        return id;
    }

    private sealed class IntArrayComparer : IEqualityComparer<int[]>
    {
        public bool Equals(int[]? x, int[]? y) => x.AsSpan().SequenceEqual(y);

        public int GetHashCode(int[] obj)
        {
            var h = new HashCode();
            h.AddBytes(System.Runtime.InteropServices.MemoryMarshal.AsBytes(obj.AsSpan()));
            return h.ToHashCode();
        }
    }
}
