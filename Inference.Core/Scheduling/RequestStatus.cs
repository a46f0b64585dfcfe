namespace Inference.Scheduling;

/// <summary>Where a request stands in the <see cref="Scheduler"/>.</summary>
public enum RequestStatus
{
    /// <summary>Queued; holds no KV blocks.</summary>
    Waiting,

    /// <summary>Admitted; holds KV blocks and is scheduled each step until finished.</summary>
    Running,

    /// <summary>Was running, gave up its blocks under memory pressure; queued again to be recomputed.</summary>
    Preempted,

    /// <summary>Done (see <see cref="SchedulerRequest.FinishReason"/>); holds no blocks.</summary>
    Finished,
}
