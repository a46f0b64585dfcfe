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
