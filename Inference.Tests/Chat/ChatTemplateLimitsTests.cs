using Inference.Chat;

namespace Inference.Tests.Chat;

/// <summary>A model file's chat template is untrusted: runaway loops, huge strings and recursion are refused, not run.</summary>
public class ChatTemplateLimitsTests
{
    private static readonly ChatMessage[] Messages = [ChatMessage.User("hi")];

    [TestCase("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loops more than")]
    [TestCase("{% for i in range(10000000000) %}{% endfor %}", "loops more than")]
    [TestCase("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}", "characters")]
    [TestCase("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "characters")]
    [TestCase("{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", "items")]
    [TestCase("{{ 9223372036854775807 + 1 }}", "overflow")]
    [TestCase("{{ 3037000500 * 3037000500 }}", "overflow")]
    [TestCase("{{ 'x' * 1000000000 }}", "characters")]
    [TestCase("{{ 'xxxxxxxx' * 100000000000000000 }}", "characters")]
    [TestCase("{{ ('x' * 1000000) | replace('x', 'yyyyyyyyyy') }}", "characters")]
    [TestCase("{{ ('x' * 1000000).replace('x', 'yyyyyyyyyy') }}", "characters")]
    [TestCase("{% set s = 'x' * 1000000 %}{{ [s, s, s, s, s] | join('') }}", "characters")]
    [TestCase("{% set s = 'x' * 1000000 %}{{ ''.join([s, s, s, s, s]) }}", "characters")]
    [TestCase("{% set s = 'x' * 1000000 %}{{ [s, s, s, s, s] | tojson }}", "characters")]
    [TestCase("{% set s = 'x' * 1000000 %}{{ [s, s, s, s, s] }}", "characters")]
    [TestCase("{% for i in range(5000) %}{{ 'x' * 1000 }}{% endfor %}", "characters")]
    [TestCase("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nest")]
    [TestCase("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}", "steps")]
    public void RunawayTemplate_IsRefused(string source, string reason)
    {
        // No time limit here, so that the limit on the template's work refuses it, on any machine.
        var template = ChatTemplate.Parse(source);
        var e = Assert.Throws<ChatTemplateException>(() => template.Render(Messages, null, new TemplateLimits(TimeSpan.FromDays(1))));
        Assert.That(e!.Message, Does.Contain(reason));
        Assert.That(e.RaisedByTemplate, Is.False);
    }

    // A value that holds itself, or one nested far deeper than any real template's, walked by printing, tojson or ==.
    // NOTE: before the nesting bound these overflowed the stack, which ends the process (found by fuzzing); a test run
    // without the bound dies here rather than failing.
    [TestCase("{% set x = [] %}{% set _ = x.append(x) %}{{ x }}")]
    [TestCase("{% set x = [] %}{% set _ = x.append(x) %}{{ x | tojson }}")]
    [TestCase("{% set x = [] %}{% set y = [] %}{% set _ = x.append(x) %}{% set _ = y.append(y) %}{{ x == y }}")]
    [TestCase("{% set x = [] %}{% set y = [] %}{% set _ = x.append(x) %}{% set _ = y.append(y) %}{{ x in [y] }}")]
    [TestCase("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}")]
    [TestCase("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns | tojson(indent=2) }}")]
    [TestCase("{% set ns = namespace(x=[]) %}{% for i in range(60000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}")]
    [TestCase("{% set ns = namespace(x=[]) %}{% for i in range(60000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x | tojson }}")]
    [TestCase("{% set ns = namespace(x=[], y=[]) %}{% for i in range(60000) %}{% set ns.x = [ns.x] %}{% set ns.y = [ns.y] %}{% endfor %}{{ ns.x == ns.y }}")]
    public void SelfContainingOrDeeplyNestedValue_IsRefused(string source)
    {
        var template = ChatTemplate.Parse(source);
        var e = Assert.Throws<ChatTemplateException>(() => template.Render(Messages, null, new TemplateLimits(TimeSpan.FromDays(1))));
        Assert.That(e!.Message, Does.Contain("nested more than").Or.Contain("nests too deeply"));
    }

    [Test]
    public void NestedValues_WithinTheBound_Render()
    {
        // 200 levels: printed, serialized and compared like Python does; a list holding itself equals itself (Python
        // compares a container with itself by identity first).
        var template = ChatTemplate.Parse("{% set ns = namespace(x=[], y=[]) %}{% for i in range(200) %}{% set ns.x = [ns.x] %}{% set ns.y = [ns.y] %}{% endfor %}{{ ns.x }}|{{ ns.x | tojson }}|{{ ns.x == ns.y }}"
            + "{% set z = [] %}{% set _ = z.append(z) %}|{{ z == [z] }}");
        string text = template.Render(Messages, null, new TemplateLimits(TimeSpan.FromDays(1)));
        string nested = new string('[', 201) + new string(']', 201);
        Assert.That(text, Is.EqualTo(nested + "|" + nested + "|True|True"));
    }

    // Steps near 2^63 used to wrap 'from + step' to a negative index: IndexOutOfRangeException for strings,
    // ArgumentOutOfRangeException for lists (found by review while fuzzing). Python's answers.
    [TestCase("{{ 'abc'[1::9223372036854775807] }}", "b")]
    [TestCase("{{ [1, 2, 3][1::9223372036854775807] }}", "[2]")]
    [TestCase("{{ 'abc'[::-9223372036854775807] }}", "c")]
    [TestCase("{{ 'abc'[::-9223372036854775807 - 1] }}", "c")]
    [TestCase("{{ 'abcdef'[1:5:2] }}{{ 'abcdef'[::-2] }}{{ 'abcdef'[4:0:-3] }}{{ 'abc'[5:1] }}", "bdfdbeb")]
    // A range whose next value would pass 2^63 wrapped around and ran until the loop limit refused it.
    [TestCase("{{ range(9223372036854775800, 9223372036854775807, 100) | list }}", "[9223372036854775800]")]
    [TestCase("{{ range(-9223372036854775800, -9223372036854775807 - 1, -100) | list }}", "[-9223372036854775800]")]
    // Integer arithmetic went through double, so 2^63 - 1 - 1 wrapped to 2^63 - 1 and 2^53 + 1 lost its last bit.
    [TestCase("{{ 9007199254740993 + 0 }}|{{ -9223372036854775807 - 1 }}|{{ 3 * -3 }}|{{ true + 1 }}", "9007199254740993|-9223372036854775808|-9|2")]
    public void ExtremeSlicesAndRanges_RenderAsInPython(string source, string expected)
    {
        Assert.That(ChatTemplate.Parse(source).Render(Messages), Is.EqualTo(expected));
    }

    [Test]
    public void RunawayTemplate_IsRefusedWithTheDefaultLimits()
    {
        // Whichever limit trips first on this machine, the answer is a ChatTemplateException.
        var template = ChatTemplate.Parse("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
        Assert.Throws<ChatTemplateException>(() => template.Render(Messages));
    }

    [Test]
    public void RenderingPastItsTime_IsRefused()
    {
        // A zero time limit: refused at the first time check past StepsBeforeClock, whatever the machine's speed.
        var template = ChatTemplate.Parse("{% for i in range(40000) %}{{ i }}{% endfor %}");
        Assert.That(template.Render(Messages, null, new TemplateLimits(TimeSpan.FromDays(1))), Has.Length.EqualTo(188_890), "without a time limit it renders");
        var e = Assert.Throws<ChatTemplateException>(() => template.Render(Messages, null, new TemplateLimits(TimeSpan.Zero)));
        Assert.That(e!.Message, Does.Contain("longer than"));
    }

    [Test]
    public void ShortRendering_IsNeverRefusedForTime()
    {
        // Fewer steps than StepsBeforeClock: a stalled thread cannot make an ordinary template fail, even at a zero limit.
        var template = ChatTemplate.Parse("{% for i in range(1000) %}{{ i }}{% endfor %}");
        Assert.That(template.Render(Messages, null, new TemplateLimits(TimeSpan.Zero)), Has.Length.EqualTo(2890));
    }

    [Test]
    public void LargeButReasonableTemplate_Renders()
    {
        // Tens of thousands of iterations and a megabyte of output are fine.
        var text = ChatTemplate.Parse("{% for i in range(20000) %}{{ 'y' * 50 }}{% endfor %}").Render(Messages, null, new TemplateLimits(TimeSpan.FromDays(1)));
        Assert.That(text, Has.Length.EqualTo(1_000_000));
    }
}
