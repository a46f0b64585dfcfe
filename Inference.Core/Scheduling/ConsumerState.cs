namespace Inference.Scheduling;

/// <summary>Whether whoever receives a request's tokens keeps up with them.</summary>
public enum ConsumerState
{
    /// <summary>Tokens are being read; decode as usual.</summary>
    Reading,

    /// <summary>
    /// Tokens pile up unread (for example a full output channel): the request is not decoded, and it is the first to be
    /// preempted when KV blocks run out.
    /// </summary>
    NotReading,
}
