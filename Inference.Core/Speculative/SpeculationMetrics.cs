namespace Inference.Speculative;

/// <summary>How speculative decoding fared: over one request (<see cref="Engine.GenerationMetrics.Speculation"/>) or the engine's life (<see cref="Engine.EngineStats.Speculation"/>).</summary>
/// <param name="Steps">Verification steps: forward passes that checked at least one proposed token (vLLM's number of drafts).</param>
/// <param name="ProposedTokens">Tokens proposed and verified.</param>
/// <param name="AcceptedTokens">Proposed tokens the verification kept.</param>
public sealed record SpeculationMetrics(long Steps, long ProposedTokens, long AcceptedTokens)
{
    /// <summary>Accepted / proposed tokens (0 when none were proposed).</summary>
    public double AcceptanceRate => ProposedTokens > 0 ? (double)AcceptedTokens / ProposedTokens : 0;

    /// <summary>
    /// Proposed tokens accepted per verification step (0 without steps). Each step also yields the model's own next
    /// token, so a step produces <see cref="MeanAcceptedTokens"/> + 1 tokens on average (vLLM's mean acceptance length).
    /// </summary>
    public double MeanAcceptedTokens => Steps > 0 ? (double)AcceptedTokens / Steps : 0;
}
