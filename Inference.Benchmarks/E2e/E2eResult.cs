using System.Text.Json;

namespace Inference.Benchmarks.E2e;

/// <summary>One end-to-end measurement, printed as one JSON line.</summary>
public sealed record E2eResult(
    string Engine, string Model, int Prompt, int Generated, int Batch, int Threads,
    double PrefillTokS, double DecodeTokS, double TtftMs, double TpotMs, double WallS)
{
    /// <summary>Bytes of weights one decode step reads (every matrix, one embedding row).</summary>
    public long WeightBytesPerToken { get; init; }

    /// <summary>Read bandwidth measured in the same run, GB/s (0 when not measured).</summary>
    public double BandwidthGbs { get; init; }

    /// <summary>Seconds from the start of loading until the warm-up request is answered (0 when not measured).</summary>
    public double ReadyS { get; init; }

    /// <summary>Tokens generated over all requests (fewer than batch × N when a constraint ends a request early).</summary>
    public int GeneratedTokens { get; init; }

    public string ToJson() => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["ready_s"] = Math.Round(ReadyS, 3),
        ["engine"] = Engine,
        ["model"] = Path.GetFileName(Model),
        ["p"] = Prompt,
        ["n"] = Generated,
        ["batch"] = Batch,
        ["threads"] = Threads,
        ["prefill_tok_s"] = Math.Round(PrefillTokS, 2),
        ["decode_tok_s"] = Math.Round(DecodeTokS, 2),
        ["ttft_ms"] = Math.Round(TtftMs, 2),
        ["tpot_ms"] = Math.Round(TpotMs, 3),
        ["wall_s"] = Math.Round(WallS, 3),
        ["weight_mb_per_token"] = Math.Round(WeightBytesPerToken / 1e6, 1),
        ["read_gb_s"] = Math.Round(BandwidthGbs, 2),
        // Decode roofline: every token streams all weights once; batch B shares one pass.
        ["decode_roofline_fraction"] = BandwidthGbs > 0 ? Math.Round(DecodeTokS / Batch * WeightBytesPerToken / (BandwidthGbs * 1e9), 3) : 0,
    });
}
