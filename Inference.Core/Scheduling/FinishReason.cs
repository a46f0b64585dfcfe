namespace Inference.Scheduling;

/// <summary>Why a request finished.</summary>
public enum FinishReason
{
    /// <summary>Not finished.</summary>
    None,

    /// <summary>A stop token (end of sequence) was sampled; it is the last output token.</summary>
    StopToken,

    /// <summary><see cref="SchedulerRequest.MaxNewTokenCount"/> tokens were generated.</summary>
    MaxTokens,

    /// <summary>The engine found a stop sequence in the text and finished the request.</summary>
    StopSequence,

    /// <summary>The request was cancelled.</summary>
    Cancelled,
}
