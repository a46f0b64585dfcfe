using Inference.Chat;

namespace Inference.Tests.Chat;

/// <summary>The Jinja subset feature by feature; expected outputs follow Jinja's semantics.</summary>
public class ChatTemplateTests
{
    private static readonly ChatMessage[] Messages =
    [
        ChatMessage.System("sys"),
        ChatMessage.User("a"),
        ChatMessage.Assistant("b"),
        ChatMessage.User("c"),
    ];

    private static string Render(string template, IReadOnlyDictionary<string, object?>? variables = null) =>
        ChatTemplate.Parse(template).Render(Messages, new ChatTemplateOptions
        {
            BosToken = "<s>",
            EosToken = "</s>",
            Variables = variables ?? new Dictionary<string, object?>(),
        });

    [TestCase("{{ 'x' }}", "x")]
    [TestCase("{{ \"a\\tb\\\\n\" }}", "a\tb\\n")]
    [TestCase("{{ 1 + 2 * 3 }}", "7")]
    [TestCase("{{ (1 + 2) * 3 }}", "9")]
    [TestCase("{{ 7 // 2 }},{{ -7 // 2 }},{{ 7 % 3 }},{{ -7 % 3 }},{{ 7 / 2 }},{{ 2 ** 10 }}", "3,-4,1,2,3.5,1024")]
    [TestCase("{{ 'a' ~ 1 ~ none ~ true }}", "a1NoneTrue")]
    [TestCase("{{ 'ab' * 3 }}", "ababab")]
    [TestCase("{{ 1e3 }} {{ 2.5E-1 }} {{ 10 / 4 }} {{ 3.0 }} {{ 2 ** -1 }}", "1000.0 0.25 2.5 3.0 0.5")]
    [TestCase("{{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 2 < 3 }} {{ 'b' >= 'a' }}", "True True True True")]
    [TestCase("{{ 'x' if false else 'y' }}{{ 'z' if true }}", "yz")]
    [TestCase("{{ not false and (true or undefined_thing) }}", "True")]
    [TestCase("{{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}", "True True True True")]
    [TestCase("{{ messages[0].role }} {{ messages[-1]['content'] }} {{ messages | length }}", "system c 4")]
    [TestCase("{% for m in messages[1:] %}{{ m.content }}{% endfor %}|{% for m in messages[:-1] %}{{ m.content }}{% endfor %}|{% for m in messages[::-1] %}{{ m.content }}{% endfor %}", "abc|sysab|cbasys")]
    [TestCase("{{ 'hello'[1:3] }}{{ 'hello'[-1] }}{{ -3 | abs }}", "elo3")]
    [TestCase("{% for m in messages %}{{ loop.index0 }}{{ loop.index }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %},{% endfor %}", "01F,12,23,34L,")]
    [TestCase("{% for m in messages if m.role == 'user' %}{{ m.content }}{{ loop.length }}{% endfor %}", "a2c2")]
    [TestCase("{% for x in [] %}x{% else %}empty{% endfor %}", "empty")]
    [TestCase("{% for x in [1, 2, 3, 4] %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}", "12")]
    [TestCase("{% for x in [1, 2, 3] %}{% for y in 'ab' %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{{ y }}{% endfor %}{% endfor %}", "1a1b3a3b")]
    [TestCase("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", "a=1;b=2;")]
    [TestCase("{% set x = 1 %}{% for m in messages %}{% set x = 2 %}{% endfor %}{{ x }}", "1")]
    [TestCase("{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'assistant' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}", "True")]
    [TestCase("{% if false %}a{% elif 0 %}b{% elif [] %}c{% else %}d{% endif %}", "d")]
    [TestCase("{{ '  x  ' | trim }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ 'hello world' | title }}|{{ 'abc' | length }}", "x|ABab|Hello World|3")]
    [TestCase("{{ ['a', 'b'] | join(', ') }}|{{ [1, 2] | first }}{{ [1, 2] | last }}|{{ undefined_thing | default('dflt') }}", "a, b|12|dflt")]
    [TestCase("{{ {'a': [1, 'x', none, true], 'b': 'q\"\\n'} | tojson }}", "{\"a\": [1, \"x\", null, true], \"b\": \"q\\\"\\n\"}")]
    [TestCase("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join }}", "ac")]
    [TestCase("{{ ' x '.strip() }}{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'a,b'.split(',') | length }}{{ 'aXa'.replace('X', 'y') }}", "xTrueTrue2aya")]
    [TestCase("{{ {'k': 'v'}.get('k') }}{{ {'k': 'v'}.get('z', 'd') }}", "vd")]
    [TestCase("{{ x is defined }}{{ undefined_thing is defined }}{{ none is none }}{{ 'a' is string }}{{ 3 is odd }}{{ messages is not string }}", "FalseFalseTrueTrueTrueTrue")]
    [TestCase("{% macro greet(name, p='!') %}hi {{ name }}{{ p }}{% endmacro %}{{ greet('bob') }} {{ greet('al', p='?') }}", "hi bob! hi al?")]
    [TestCase("{% set block %}in{{ 1 }}{% endset %}[{{ block }}]", "[in1]")]
    [TestCase("{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}", "<s></s>True")]
    [TestCase("{# a comment #}x", "x")]
    [TestCase("{{ range(3) | join }}{{ range(1, 7, 2) | join }}", "012135")]
    public void Expressions(string template, string expected)
    {
        Assert.That(Render(template), Is.EqualTo(expected));
    }

    [TestCase("a  {{- 'b' -}}  c", "abc")]
    [TestCase("a\n  {%- if true -%}\n  b\n  {%- endif %}\n", "ab")]
    [TestCase("{% if true %}\nx\n{% endif %}\ny", "x\ny")]                 // trim_blocks: the newline after a block tag goes
    [TestCase("  {% if true %}x{% endif %}", "x")]                          // lstrip_blocks: indentation before a block tag goes
    [TestCase("a  {% if true %}x{% endif %}", "a  x")]                      // ... but only at the start of a line
    [TestCase("{{ 'x' }}\ny", "x\ny")]                                      // an output tag keeps its newline
    [TestCase("  {%+ if true %}x{% endif %}", "  x")]                       // {%+ turns lstrip_blocks off
    [TestCase("{# c #}\nx", "x")]
    [TestCase("x\n", "x")]                                                  // one trailing newline of the template goes
    [TestCase("x\n\n", "x\n")]
    public void WhitespaceControl(string template, string expected)
    {
        Assert.That(Render(template), Is.EqualTo(expected));
    }

    [Test]
    public void VariablesFromOptions()
    {
        var tools = new List<object?> { new Dictionary<string, object?> { ["name"] = "get_time", ["arity"] = 0 } };
        Assert.That(Render("{% for t in tools %}{{ t.name }}/{{ t.arity + 1 }}{% endfor %}", new Dictionary<string, object?> { ["tools"] = tools }),
            Is.EqualTo("get_time/1"));
    }

    [TestCase("{{ 'a' ")]
    [TestCase("{% if x %}a")]
    [TestCase("{% for x in %}{% endfor %}")]
    [TestCase("{% while true %}{% endwhile %}")]
    [TestCase("{{ 'unterminated }}")]
    [TestCase("{% endif %}")]
    [TestCase("{{ a b }}")]
    [TestCase("{% break %}")]
    [TestCase("{% for x in y %}{% macro m() %}{% continue %}{% endmacro %}{% endfor %}")]
    public void SyntaxErrorsThrow(string template)
    {
        Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(template));
    }

    [TestCase("{{ 'a' + 1 }}")]
    [TestCase("{{ 1 // 0 }}")]
    [TestCase("{{ x | no_such_filter }}")]
    [TestCase("{{ nothing() }}")]
    [TestCase("{{ 1 in 2 }}")]
    [TestCase("{{ 'a' < 1 }}")]
    public void RuntimeErrorsThrow(string template)
    {
        var e = Assert.Throws<ChatTemplateException>(() => Render(template))!;
        Assert.That(e.RaisedByTemplate, Is.False);
    }

    [Test]
    public void HostileNestingFailsCleanly()
    {
        // Templates come from model files: absurd nesting must be an exception, never a crashed process.
        Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{{ " + new string('(', 200_000) + "1" + new string(')', 200_000) + " }}"));
        Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(string.Concat(Enumerable.Repeat("{% if true %}", 200_000))));
        var chain = ChatTemplate.Parse("{{ 0" + string.Concat(Enumerable.Repeat(" + 1", 300_000)) + " }}");
        Assert.Throws<ChatTemplateException>(() => chain.Render([]));
        // Moderate depth is fine.
        Assert.That(ChatTemplate.Parse("{{ " + new string('(', 50) + "1" + new string(')', 50) + " }}").Render([]), Is.EqualTo("1"));
        Assert.That(ChatTemplate.Parse("{{ 0" + string.Concat(Enumerable.Repeat(" + 1", 500)) + " }}").Render([]), Is.EqualTo("500"));
    }

    [Test]
    public void RaiseExceptionCarriesTheMessage()
    {
        var e = Assert.Throws<ChatTemplateException>(() => Render("{{ raise_exception('bad ' ~ messages[0].role) }}"))!;
        Assert.That(e.RaisedByTemplate, Is.True);
        Assert.That(e.Message, Is.EqualTo("bad system"));
    }

    [Test]
    public void ParsedTemplateRendersManyTimesAndConcurrently()
    {
        var template = ChatTemplate.Parse("{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}");
        Parallel.For(0, 64, i =>
        {
            var text = template.Render([ChatMessage.User("q" + i)]);
            Assert.That(text, Is.EqualTo($"[user:q{i}]"));
        });
    }

    [Test]
    public void MessageValidation()
    {
        Assert.Throws<ArgumentNullException>(() => _ = new ChatMessage(ChatRole.User, null!));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new ChatMessage((ChatRole)42, "x"));
        Assert.That(new ChatMessage(ChatRole.Tool, "r").RoleName, Is.EqualTo("tool"));
    }
}
