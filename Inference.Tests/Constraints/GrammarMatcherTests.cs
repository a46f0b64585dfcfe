using System.Text;
using System.Text.RegularExpressions;
using Inference.Constraints;
using static Inference.Tests.Constraints.ConstraintTestSupport;

namespace Inference.Tests.Constraints;

public class GrammarMatcherTests
{
    private static IEnumerable<TestCaseData> SchemaCases()
    {
        for (int i = 0; i < FiniteSchemas.Length; i++) yield return new TestCaseData(i).SetName($"RandomWalks_ValidateAgainstSchema({i})");
    }

    [TestCaseSource(nameof(SchemaCases))]
    public void RandomWalks_ValidateAgainstSchema(int schemaIndex)
    {
        string schema = FiniteSchemas[schemaIndex];
        var constraint = new JsonSchemaConstraint(schema);
        foreach (var (tokenizer, seeds) in new[] { (DeepSeek, 3), (Stories, 4), (LlamaSpm, 2) })
        {
            for (int seed = 0; seed < seeds; seed++)
            {
                var matcher = constraint.CreateMatcher(tokenizer);
                var (bytes, ended) = RandomWalk(matcher, tokenizer, new Random(seed * 7919 + schemaIndex), 2000, checkEvery: seed == 0 ? 7 : 0);
                Assert.That(ended, Is.True, "a finite grammar's walk must end");
                AssertValid(schema, StrictUtf8(bytes));
            }
        }
    }

    [Test]
    public void RandomWalks_MatchTheRegex_WithDotNetRegex()
    {
        string[] patterns = [@"\d{3}-[A-Z]{2}", @"(ab|cd)+x?", @"[a-c]{1,4}(\.[0-9]+)?", @"héllo|日本語{1,2}", @"[^a-z\n]{2,3}", @"\w+@\w+\.(com|org)"];
        foreach (var pattern in patterns)
        {
            var constraint = new RegexConstraint(pattern);
            var regex = new Regex($"^(?:{pattern})$");
            foreach (var tokenizer in new[] { DeepSeek, Stories })
                for (int seed = 0; seed < 5; seed++)
                {
                    var (bytes, ended) = RandomWalk(constraint.CreateMatcher(tokenizer), tokenizer, new Random(seed), 60, checkEvery: 5);
                    string text = StrictUtf8(bytes);
                    if (ended) Assert.That(regex.IsMatch(text), Is.True, $"'{text}' does not match {pattern}");
                    else Assert.That(pattern, Does.Contain("+"), "only unbounded patterns may run out of steps");
                }
        }
    }

    [Test]
    public void Choice_AllowsExactlyThePrefixesOfTheChoices()
    {
        string[] choices = ["yes", "no", "maybe so", "ünïcödé", "日本"];
        var constraint = new ChoiceConstraint(choices);
        foreach (var tokenizer in new[] { DeepSeek, Stories, LlamaSpm })
        {
            for (int seed = 0; seed < 3; seed++)
            {
                var matcher = constraint.CreateMatcher(tokenizer);
                var rng = new Random(seed);
                var bytes = new List<byte>();
                var mask = new ulong[(matcher.VocabSize + 63) / 64];
                while (!matcher.IsTerminated)
                {
                    matcher.FillMask(mask);
                    // Reference: a token is allowed iff the bytes so far plus its bytes are a prefix of a choice.
                    var allowed = new List<int>();
                    for (int t = 0; t < tokenizer.VocabularySize; t++)
                    {
                        byte[] piece = tokenizer.GetTokenBytes(t).ToArray();
                        byte[] text = [.. bytes, .. piece];
                        bool expected = piece.Length > 0 && choices.Any(c => Encoding.UTF8.GetBytes(c).AsSpan().StartsWith(text));
                        bool actual = (mask[t >> 6] & (1UL << t)) != 0;
                        if (tokenizer.IsEndOfGeneration(t)) continue;
                        Assert.That(actual, Is.EqualTo(expected), $"token {t} after '{Encoding.UTF8.GetString(bytes.ToArray())}'");
                        if (actual) allowed.Add(t);
                    }
                    int token = allowed[rng.Next(allowed.Count)];
                    matcher.Accept(token);
                    bytes.AddRange(tokenizer.GetTokenBytes(token));
                }
                Assert.That(choices, Does.Contain(StrictUtf8(bytes.ToArray())));
            }
        }
    }

    [Test]
    public void EveryTokenizerWeLoad_WalksValidate_AndTheMaskAgreesWithIsTokenAllowed()
    {
        // Byte-level BPE (deepseek, gpt-2) and SentencePiece with byte fallback (stories260K, llama-spm, phi-3); the
        // schema with non-ASCII keys and values makes tokens end inside multi-byte characters.
        var tokenizers = new[] { ("deepseek", DeepSeek), ("gpt-2", Gpt2), ("stories260K", Stories), ("llama-spm", LlamaSpm), ("phi-3", Phi3) };
        var schema = new JsonSchemaConstraint(FiniteSchemas[7]);
        var regex = new RegexConstraint("[α-ω]{2}-[0-9]{3}");
        foreach (var (name, tokenizer) in tokenizers)
            for (int seed = 0; seed < 3; seed++)
            {
                var (bytes, ended) = RandomWalk(schema.CreateMatcher(tokenizer), tokenizer, new Random(seed), 2000, checkEvery: seed == 0 ? 3 : 0);
                Assert.That(ended, Is.True, name);
                AssertValid(FiniteSchemas[7], StrictUtf8(bytes));
                (bytes, ended) = RandomWalk(regex.CreateMatcher(tokenizer), tokenizer, new Random(seed), 200, checkEvery: seed == 0 ? 2 : 0);
                Assert.That(ended, Is.True, name);
                Assert.That(StrictUtf8(bytes), Does.Match("^[α-ω]{2}-[0-9]{3}$"), name);
            }
    }

    [Test]
    public void ByteLevelTokens_EndingInsideACharacter_AreAllowed()
    {
        // "日本" is three bytes a character; deepseek has byte tokens that hold part of one.
        var matcher = new ChoiceConstraint(["日本"]).CreateMatcher(DeepSeek);
        var mask = new ulong[(matcher.VocabSize + 63) / 64];
        matcher.FillMask(mask);
        int partial = -1;
        for (int t = 0; t < DeepSeek.VocabularySize && partial < 0; t++)
        {
            var b = DeepSeek.GetTokenBytes(t);
            if ((mask[t >> 6] & (1UL << t)) != 0 && b.Length is > 0 and < 3) partial = t;
        }
        Assert.That(partial, Is.GreaterThanOrEqualTo(0), "some token holding part of '日' is allowed");
        matcher.Accept(partial);
        Assert.That(matcher.IsComplete, Is.False);
    }

    [Test]
    public void EndTokens_OnlyWhenComplete_AndRollbackRestores()
    {
        var tokenizer = Stories;
        int eos = tokenizer.EosId!.Value;
        var matcher = new RegexConstraint("ab?").CreateMatcher(tokenizer);
        Assert.That(matcher.IsTokenAllowed(eos), Is.False);
        int a = tokenizer.Encode("a", false).Single(t => tokenizer.GetTokenBytes(t).SequenceEqual("a"u8) || tokenizer.GetTokenBytes(t).SequenceEqual(" a"u8));
        // stories260K may spell "a" with a leading space; accept whichever token is exactly "a" when present.
        int exact = Enumerable.Range(0, tokenizer.VocabularySize).First(t => tokenizer.GetTokenBytes(t).SequenceEqual("a"u8));
        Assert.That(matcher.TryAccept(exact), Is.True);
        Assert.That(matcher.IsComplete, Is.True);
        Assert.That(matcher.IsTerminated, Is.False);
        Assert.That(matcher.IsTokenAllowed(eos), Is.True);
        int b = Enumerable.Range(0, tokenizer.VocabularySize).First(t => tokenizer.GetTokenBytes(t).SequenceEqual("b"u8));
        Assert.That(matcher.TryAccept(b), Is.True);
        Assert.That(matcher.IsTerminated, Is.True);
        Assert.That(matcher.TryAccept(b), Is.False);
        matcher.Rollback(2);
        Assert.That(matcher.AcceptedCount, Is.EqualTo(0));
        Assert.That(matcher.IsTokenAllowed(eos), Is.False);
        Assert.That(matcher.IsTokenAllowed(exact), Is.True);
        Assert.That(() => matcher.Rollback(1), Throws.TypeOf<ArgumentOutOfRangeException>());
        _ = a;
    }

    [Test]
    public void Gbnf_LlamaCppStyleGrammar_GeneratesMatchingText()
    {
        const string gbnf = """
            # arithmetic, as in llama.cpp's grammars/arithmetic.gbnf (written anew)
            root  ::= (expr "=" ws term "\n")+
            expr  ::= term ([-+*/] term)*
            term  ::= ident | num | "(" ws expr ")" ws
            ident ::= [a-z] [a-z0-9_]{0,3} ws
            num   ::= [0-9]{1,3} ws
            ws    ::= [ ]?
            """;
        var constraint = new GrammarConstraint(gbnf);
        var line = new Regex(@"^[-+*/()a-z0-9_ ]+= ?[a-z0-9_ ()+*/-]+$");
        for (int seed = 0; seed < 5; seed++)
        {
            var (bytes, _) = RandomWalk(constraint.CreateMatcher(DeepSeek), DeepSeek, new Random(seed), 40, checkEvery: 10);
            var lines = StrictUtf8(bytes).Split('\n');
            // The last piece is an unfinished line when the walk ran out of steps.
            foreach (var l in lines[..^1]) Assert.That(line.IsMatch(l), Is.True, l);
        }
    }

    [Test]
    public void RecursiveSchema_AcceptsValidTextTokenByToken_AndRejectsInvalid()
    {
        const string schema = """{"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v"]}},"$ref":"#/$defs/node"}""";
        var constraint = new JsonSchemaConstraint(schema);
        Assert.That(Accepts(constraint, """{"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":-4}]}]}"""), Is.True);
        Assert.That(Accepts(constraint, """{"v": 1, "kids": []}"""), Is.True);
        Assert.That(Accepts(constraint, """{"kids":[]}"""), Is.False);
        Assert.That(Accepts(constraint, """{"v":1.5}"""), Is.False);
        Assert.That(Accepts(constraint, """{"v":1,"kids":[{"v":"x"}]}"""), Is.False);
    }

    /// <summary>Whether the text, tokenized by deepseek, is accepted token by token and leaves the grammar complete.</summary>
    private static bool Accepts(Constraint constraint, string text)
    {
        var matcher = constraint.CreateMatcher(DeepSeek);
        foreach (int t in DeepSeek.Encode(text, addSpecial: false))
            if (!matcher.TryAccept(t)) return false;
        return matcher.IsComplete;
    }

    [Test]
    public void JsonObject_AcceptsObjectsOnly()
    {
        Assert.That(Accepts(JsonObjectConstraint.Instance, """{"a":[1,2,{"b":null}],"c":"d\n\u00e9"}"""), Is.True);
        Assert.That(Accepts(JsonObjectConstraint.Instance, "[1]"), Is.False);
        Assert.That(Accepts(JsonObjectConstraint.Instance, """{"a":01}"""), Is.False);
    }

    [TestCase("""{"type":"object","properties":{"a":{"type":"strin"}}}""", "unknown type 'strin'")]
    [TestCase("""{"type":"object",""", "not valid JSON")]
    [TestCase("""{"$ref":"#/$defs/missing"}""", "does not resolve")]
    [TestCase("""{"type":"object","properties":{},"required":["x"]}""", "required property 'x'")]
    [TestCase("""{"type":"string","pattern":"(?=a)b"}""", "lookaround")]
    public void BadSchema_ThrowsTypedOneLineException(string schema, string fragment)
    {
        var e = Assert.Throws<InvalidConstraintException>(() => _ = new JsonSchemaConstraint(schema))!;
        Assert.That(e.Message, Does.Contain(fragment).And.Not.Contain("\n"));
    }

    [TestCase("root ::= foo", "'foo' is used but not defined")]
    [TestCase("rot ::= \"a\"", "no 'root' rule")]
    [TestCase("root ::= root \"a\" | \"b\"", "left-recursive")]
    [TestCase("root ::= \"a", "unterminated string")]
    [TestCase("root ::= [b-a]", "reversed")]
    [TestCase("root ::= \"a\"{3,1}", "out of range")]
    [TestCase("root ::= \"a\"\nroot ::= \"b\"", "defined twice")]
    public void BadGrammar_ThrowsTypedOneLineException(string gbnf, string fragment)
    {
        var e = Assert.Throws<InvalidConstraintException>(() => _ = new GrammarConstraint(gbnf))!;
        Assert.That(e.Message, Does.Contain(fragment).And.Not.Contain("\n"));
    }

    [Test]
    public void BadRegexAndChoice_ThrowTypedExceptions()
    {
        Assert.Throws<InvalidConstraintException>(() => _ = new RegexConstraint("(a"));
        Assert.Throws<InvalidConstraintException>(() => _ = new RegexConstraint(@"(a)\1"));
        Assert.Throws<InvalidConstraintException>(() => _ = new ChoiceConstraint([]));
        Assert.That(new ChoiceConstraint(["a", "b"]), Is.EqualTo(new ChoiceConstraint(["a", "b"])));
        Assert.That(new JsonSchemaConstraint("{}"), Is.EqualTo(new JsonSchemaConstraint("{}")));
    }

    // Requests carry patterns and grammars: groups nested 100,000 deep, or 50,000 rules each starting with the next,
    // used to recurse until the stack overflowed, which ends the process (the server's included). Found by review while
    // fuzzing the server's requests; a test run without the fix dies here rather than failing.
    [Test]
    public void DeeplyNestedPatternsAndGrammars_AreRefused()
    {
        const int Depth = 100_000;
        string groups = new string('(', Depth) + "a" + new string(')', Depth);
        var regex = Assert.Throws<InvalidConstraintException>(() => _ = new RegexConstraint(groups))!;
        Assert.That(regex.Message, Does.Contain("nests too deeply").And.Not.Contain("\n"));
        Assert.Throws<InvalidConstraintException>(() => _ = new GrammarConstraint("root ::= " + groups.Replace("a", "\"a\"") + "\n"));
        Assert.Throws<InvalidConstraintException>(() => _ = new JsonSchemaConstraint($$"""{"type":"string","pattern":"{{groups}}"}"""));
        var chain = new StringBuilder("root ::= r0\n");
        for (int i = 0; i < 50_000; i++) chain.Append($"r{i} ::= r{i + 1}\n");
        chain.Append("r50000 ::= \"a\"\n");
        var rules = Assert.Throws<InvalidConstraintException>(() => _ = new GrammarConstraint(chain.ToString()))!;
        Assert.That(rules.Message, Does.Contain("nests too deeply"));

        // Nesting as deep as real patterns go still compiles and matches.
        string fifty = new string('(', 50) + "ab|c" + new string(')', 50) + "+";
        Assert.That(Accepts(new RegexConstraint(fifty), "abcab"), Is.True);
        Assert.That(Accepts(new RegexConstraint(fifty), "abd"), Is.False);
    }

    // Found by fuzzing constraints: a class range ending in a backslash at the end of the pattern read past it
    // (IndexOutOfRangeException); messages quoting the pattern or grammar kept its newlines and its whole length.
    [Test]
    public void MalformedConstraints_AreOneShortLine()
    {
        var backslash = Assert.Throws<InvalidConstraintException>(() => _ = new RegexConstraint("x[a-\\"))!;
        Assert.That(backslash.Message, Does.Contain("backslash"));
        foreach (var make in new Func<Constraint>[]
        {
            () => new RegexConstraint("a{\n}"),
            () => new RegexConstraint("a{" + new string('x', 100_000) + "}"),
            () => new GrammarConstraint("root ::= \"\\\n\""),
            () => new JsonSchemaConstraint("{\"type\":\n\"object\"\n"),
        })
        {
            var e = Assert.Throws<InvalidConstraintException>(() => make())!;
            Assert.That(e.Message, Does.Not.Contain('\n'));
            Assert.That(e.Message, Has.Length.LessThan(400));
        }
    }

    [Test]
    public void Utf8Ranges_CoverExactlyTheCodePoints()
    {
        var rng = new Random(5);
        for (int trial = 0; trial < 200; trial++)
        {
            int lo = rng.Next(0x110000), hi = Math.Min(0x10FFFF, lo + rng.Next(trial % 2 == 0 ? 100 : 200000));
            var seqs = Utf8Ranges.Sequences([(lo, hi)]);
            for (int k = 0; k < 300; k++)
            {
                int cp = rng.Next(Math.Max(0, lo - 50), Math.Min(0x10FFFF, hi + 50) + 1);
                if (cp is >= 0xD800 and <= 0xDFFF) continue;
                var bytes = Encoding.UTF8.GetBytes(char.ConvertFromUtf32(cp));
                int matches = seqs.Count(s => s.Length == bytes.Length && s.Select((r, i) => bytes[i] >= r.Lo && bytes[i] <= r.Hi).All(x => x));
                Assert.That(matches, Is.EqualTo(cp >= lo && cp <= hi ? 1 : 0), $"U+{cp:X} in [{lo:X}, {hi:X}]");
            }
        }
    }
}
