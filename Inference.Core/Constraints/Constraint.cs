using Inference.Tokenization;

namespace Inference.Constraints;

/// <summary>
/// What generated text must match: a JSON schema, any JSON object, a GBNF grammar, a regular expression or one of a
/// list of strings. Set it as <see cref="Sampling.SamplingOptions.Constraint"/>; at each step the tokens that cannot
/// continue a match are masked out before sampling, and generation ends when the match is complete and nothing can
/// follow it. Immutable; the grammar is compiled and validated when the constraint is created, so a bad schema or
/// grammar throws <see cref="InvalidConstraintException"/> there, with a one-line message.
/// </summary>
/// <example>
/// <code>
/// var sampling = new SamplingOptions { Constraint = new JsonSchemaConstraint("""{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}""") };
/// </code>
/// </example>
public abstract record Constraint
{
    private protected Constraint() { }

    /// <summary>The compiled grammar (shared by every request using this constraint).</summary>
    internal abstract Grammar Grammar { get; }

    /// <summary>
    /// A matcher that follows one generation with <paramref name="tokenizer"/>'s vocabulary (logits of
    /// <paramref name="vocabSize"/> entries, default the tokenizer's vocabulary size).
    /// </summary>
    /// <param name="tokenizer">The model's tokenizer.</param>
    /// <param name="vocabSize">The number of logits (a model may pad its vocabulary past the tokenizer's).</param>
    /// <param name="extraEndTokens">Tokens besides the tokenizer's end-of-generation tokens that end generation.</param>
    public GrammarMatcher CreateMatcher(ModelTokenizer tokenizer, int? vocabSize = null, IEnumerable<int>? extraEndTokens = null)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return new GrammarMatcher(Grammar, tokenizer, vocabSize ?? tokenizer.VocabularySize, extraEndTokens);
    }

    /// <summary><paramref name="message"/> with control characters escaped (\uXXXX), cut after 300 characters.</summary>
    private static string OneLine(string message)
    {
        const int MaxChars = 300;
        if (message.Length <= MaxChars && !message.AsSpan().ContainsAnyInRange('\0', '\u001f') && !message.Contains('\u007f') && !message.Contains('\u2028') && !message.Contains('\u2029'))
            return message;
        var sb = new System.Text.StringBuilder(MaxChars + 32);
        int i = 0;
        for (; i < message.Length && sb.Length < MaxChars; i++)
        {
            char c = message[i];
            if (char.IsControl(c) || c is '\u2028' or '\u2029') sb.Append($"\\u{(int)c:X4}");
            else sb.Append(c);
        }
        if (i < message.Length) sb.Append($"… (cut, {message.Length} characters)");
        return sb.ToString();
    }

    /// <summary>Runs <paramref name="compile"/>, turning a failure into <see cref="InvalidConstraintException"/>.</summary>
    private protected static Grammar Compile(Func<Grammar> compile, string what)
    {
        try
        {
            var grammar = compile();
            _ = new GrammarAutomaton(grammar); // the start state: a grammar that matches nothing fails here
            return grammar;
        }
        catch (InvalidConstraintException e)
        {
            // NOTE: messages quote the pattern or grammar, which may hold newlines and run to megabytes: one short line.
            string message = OneLine(e.Message.StartsWith(what, StringComparison.Ordinal) ? e.Message : $"{what}: {e.Message}");
            if (message == e.Message) throw;
            throw new InvalidConstraintException(message, e);
        }
        catch (InsufficientExecutionStackException e)
        {
            // Groups nested thousands deep, or a chain of thousands of rules each starting with the next: refused before
            // the recursive parsers and the grammar's checks could overflow the stack (which ends the process).
            throw new InvalidConstraintException($"{what}: nests too deeply", e);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or KeyNotFoundException or ArgumentException or OverflowException or System.Text.Json.JsonException)
        {
            // A malformed document (a keyword of the wrong JSON type, say) found while converting it.
            throw new InvalidConstraintException(OneLine($"{what}: malformed ({e.Message})"), e);
        }
    }
}

/// <summary>Output is JSON that validates against a JSON Schema (see the supported keywords in the remarks).</summary>
/// <remarks>
/// Supported: <c>type</c>, <c>properties</c>, <c>required</c>, <c>additionalProperties</c>, <c>items</c>,
/// <c>prefixItems</c>, <c>minItems</c>, <c>maxItems</c>, <c>enum</c>, <c>const</c>, <c>anyOf</c>, <c>oneOf</c>,
/// <c>allOf</c> of one schema, local <c>$ref</c> (recursive too), <c>nullable</c>, string <c>minLength</c>,
/// <c>maxLength</c>, <c>pattern</c> and the formats date, time, date-time and uuid. Numeric bounds and other keywords
/// are accepted but not enforced. Properties are generated in schema order.
/// </remarks>
public sealed record JsonSchemaConstraint : Constraint
{
    private readonly Grammar _grammar;

    /// <summary>Creates the constraint.</summary>
    /// <param name="schema">The JSON Schema, as JSON text.</param>
    /// <exception cref="InvalidConstraintException">The schema is not JSON or cannot be enforced.</exception>
    public JsonSchemaConstraint(string schema)
    {
        ArgumentNullException.ThrowIfNull(schema);
        Schema = schema;
        _grammar = Compile(() => GbnfParser.Parse(JsonSchemaConverter.ToGbnf(schema)), "JSON schema");
    }

    /// <summary>The JSON Schema text.</summary>
    public string Schema { get; }

    internal override Grammar Grammar => _grammar;

    /// <summary>The grammar the schema compiles to, in GBNF.</summary>
    public string ToGbnf() => JsonSchemaConverter.ToGbnf(Schema);

    /// <inheritdoc/>
    public bool Equals(JsonSchemaConstraint? other) => other is not null && Schema == other.Schema;

    /// <inheritdoc/>
    public override int GetHashCode() => Schema.GetHashCode(StringComparison.Ordinal);
}

/// <summary>Output is one JSON object (any keys and values): OpenAI's <c>response_format: json_object</c>.</summary>
public sealed record JsonObjectConstraint : Constraint
{
    private static readonly Grammar Compiled = Compile(() => GbnfParser.Parse(JsonSchemaConverter.JsonObjectGbnf()), "JSON object");

    /// <summary>The constraint (it has no parameters).</summary>
    public static JsonObjectConstraint Instance { get; } = new();

    internal override Grammar Grammar => Compiled;
}

/// <summary>Output matches a grammar in GBNF, llama.cpp's grammar format, from its <c>root</c> rule.</summary>
public sealed record GrammarConstraint : Constraint
{
    private readonly Grammar _grammar;

    /// <summary>Creates the constraint.</summary>
    /// <param name="gbnf">The grammar text.</param>
    /// <exception cref="InvalidConstraintException">The grammar is malformed, has no <c>root</c>, uses an undefined rule or is left-recursive.</exception>
    public GrammarConstraint(string gbnf)
    {
        ArgumentNullException.ThrowIfNull(gbnf);
        Gbnf = gbnf;
        _grammar = Compile(() => GbnfParser.Parse(gbnf), "grammar");
    }

    /// <summary>The grammar text.</summary>
    public string Gbnf { get; }

    internal override Grammar Grammar => _grammar;

    /// <inheritdoc/>
    public bool Equals(GrammarConstraint? other) => other is not null && Gbnf == other.Gbnf;

    /// <inheritdoc/>
    public override int GetHashCode() => Gbnf.GetHashCode(StringComparison.Ordinal);
}

/// <summary>The whole output matches a regular expression (see <see cref="Pattern"/> for the supported syntax).</summary>
public sealed record RegexConstraint : Constraint
{
    private readonly Grammar _grammar;

    /// <summary>Creates the constraint.</summary>
    /// <param name="pattern">The regular expression.</param>
    /// <exception cref="InvalidConstraintException">The pattern is malformed or uses lookaround or back-references.</exception>
    public RegexConstraint(string pattern)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        Pattern = pattern;
        _grammar = Compile(() => RegexConverter.Compile(pattern), "regex");
    }

    /// <summary>
    /// The regular expression: literals, escapes (<c>\d \w \s</c> and their negations, <c>\n \t \xHH \uHHHH</c>),
    /// classes, <c>.</c>, groups, <c>|</c>, <c>* + ? {m} {m,} {m,n}</c>, and <c>^</c>/<c>$</c> at the ends.
    /// </summary>
    public string Pattern { get; }

    internal override Grammar Grammar => _grammar;

    /// <inheritdoc/>
    public bool Equals(RegexConstraint? other) => other is not null && Pattern == other.Pattern;

    /// <inheritdoc/>
    public override int GetHashCode() => Pattern.GetHashCode(StringComparison.Ordinal);
}

/// <summary>Output is exactly one of the given strings.</summary>
public sealed record ChoiceConstraint : Constraint
{
    private readonly Grammar _grammar;

    /// <summary>Creates the constraint.</summary>
    /// <param name="choices">The strings to choose from (at least one; none null).</param>
    /// <exception cref="InvalidConstraintException">The list is empty or holds null.</exception>
    public ChoiceConstraint(IEnumerable<string> choices)
    {
        ArgumentNullException.ThrowIfNull(choices);
        var list = new List<string>();
        foreach (var c in choices) list.Add(c ?? throw new InvalidConstraintException("choice: a choice is null"));
        if (list.Count == 0) throw new InvalidConstraintException("choice: the list of choices is empty");
        Choices = list.AsReadOnly();
        _grammar = Compile(() => GbnfParser.Parse("root ::= " + string.Join(" | ", list.Select(GbnfParser.Quote)) + "\n"), "choice");
    }

    /// <summary>The strings to choose from.</summary>
    public IReadOnlyList<string> Choices { get; }

    internal override Grammar Grammar => _grammar;

    /// <inheritdoc/>
    public bool Equals(ChoiceConstraint? other) => other is not null && Choices.SequenceEqual(other.Choices);

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var h = new HashCode();
        foreach (var c in Choices) h.Add(c);
        return h.ToHashCode();
    }
}
