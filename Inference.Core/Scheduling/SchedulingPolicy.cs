namespace Inference.Scheduling;

/// <summary>The order in which waiting requests are admitted and running ones are preempted.</summary>
public enum SchedulingPolicy
{
    /// <summary>Admit in arrival order; preempt the most recently admitted request.</summary>
    FirstComeFirstServed,

    /// <summary>
    /// Admit by <see cref="SchedulerRequest.Priority"/> (lower value first), then arrival; preempt the lowest priority
    /// (highest value), most recently arrived request.
    /// </summary>
    Priority,
}
