using System.Diagnostics;
using System.Text;

namespace Inference.Chat;

/// <summary>
/// What one rendering may spend. A model file's chat template is untrusted code: a loop of 10^10 iterations, a string
/// doubled in a loop or a macro recursing without end must be refused with a <see cref="ChatTemplateException"/>, never
/// hang the request or exhaust memory.
/// </summary>
/// <remarks>
/// NOTE: the figures leave real templates far behind (the largest we know render a few thousand steps and a few
/// hundred kilobytes with long tool lists); a prompt over <see cref="MaxStringChars"/> characters cannot fit any context.
/// </remarks>
internal sealed class TemplateLimits
{
    /// <summary>Longest string (the output included) a rendering may build: 4 Mi characters.</summary>
    public const int MaxStringChars = 4 << 20;

    /// <summary>Longest list a rendering may build.</summary>
    public const int MaxListItems = 1 << 20;

    /// <summary>Loop iterations of one rendering, all loops together.</summary>
    public const long MaxLoopIterations = 200_000;

    /// <summary>Statements and expressions evaluated by one rendering.</summary>
    public const long MaxSteps = 5_000_000;

    /// <summary>
    /// Steps a rendering may take before its clock is checked: a rendering this short is never refused for time, so a
    /// machine that stalls the thread (a busy host, a garbage collection) cannot fail an ordinary template.
    /// </summary>
    public const long StepsBeforeClock = 1 << 16;

    /// <summary>The defaults: two seconds of rendering at most.</summary>
    public static TemplateLimits Default { get; } = new(TimeSpan.FromSeconds(2));

    public TemplateLimits(TimeSpan maxTime) => MaxTime = maxTime;

    /// <summary>Longest a rendering may take (checked every few hundred steps past <see cref="StepsBeforeClock"/>).</summary>
    public TimeSpan MaxTime { get; }

    /// <summary>A string builder that refuses to grow past <see cref="MaxStringChars"/>.</summary>
    public static StringBuilder NewBuilder(int capacity = 16) => new(Math.Min(capacity, MaxStringChars), MaxStringChars);

    /// <summary>Throws unless a string of <paramref name="chars"/> characters is allowed.</summary>
    public static void CheckString(long chars)
    {
        if (chars > MaxStringChars) throw new ChatTemplateException($"the chat template builds a string of {chars} characters; the limit is {MaxStringChars}");
    }

    /// <summary>Throws unless a list of <paramref name="items"/> items is allowed.</summary>
    public static void CheckList(long items)
    {
        if (items > MaxListItems) throw new ChatTemplateException($"the chat template builds a list of {items} items; the limit is {MaxListItems}");
    }

    /// <summary><paramref name="s"/> with every <paramref name="old"/> replaced, refused before it is built when too long.</summary>
    public static string Replace(string s, string old, string replacement)
    {
        if (old.Length == 0) return s;
        if (replacement.Length > old.Length)
        {
            long count = 0;
            for (int i = s.IndexOf(old, StringComparison.Ordinal); i >= 0; i = s.IndexOf(old, i + old.Length, StringComparison.Ordinal)) count++;
            CheckString(s.Length + count * (replacement.Length - old.Length));
        }
        return s.Replace(old, replacement, StringComparison.Ordinal);
    }

    /// <summary>Counts one rendering's steps and loop iterations against the limits.</summary>
    internal sealed class Budget(TemplateLimits limits)
    {
        private readonly long _deadline = Stopwatch.GetTimestamp() + (long)(limits.MaxTime.TotalSeconds * Stopwatch.Frequency);
        private long _steps;
        private long _iterations;

        public void Step()
        {
            if (++_steps > MaxSteps) throw new ChatTemplateException($"the chat template takes more than {MaxSteps} steps");
            if ((_steps & 255) == 0 && _steps >= StepsBeforeClock && Stopwatch.GetTimestamp() > _deadline)
                throw new ChatTemplateException($"the chat template takes longer than {limits.MaxTime.TotalSeconds:0.###} s to render");
        }

        public void Iteration()
        {
            if (++_iterations > MaxLoopIterations) throw new ChatTemplateException($"the chat template loops more than {MaxLoopIterations} times");
            Step();
        }
    }
}
