using System.Text.Json;

namespace Inference.Benchmarks.E2e;

/// <summary>One end-to-end measurement, printed as one JSON line.</summary>
public sealed record E2eResult(
    string Engine, string Model, int Prompt, int Generated, int Batch, int Threads,
    double PrefillTokS, double DecodeTokS, double TtftMs, double TpotMs, double WallS)
{
    public string ToJson() => JsonSerializer.Serialize(new Dictionary<string, object>
    {
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
    });
}
