using System.Text.Json;

namespace Inference.Benchmarks.E2e;

/// <summary>One end-to-end measurement, printed as one JSON line.</summary>
public sealed record E2eResult(
    string Engine, string Model, int Prompt, int Generated, int Batch, int Threads,
    double PrefillTokS, double DecodeTokS, double TtftMs, double TpotMs, double WallS)
{
    /// <summary>Bytes of weights one decode step reads (every matrix, one embedding row).</summary>
    public long WeightBytesPerToken { get; init; }

    /// <summary>Decode tokens/s × weight bytes per token ÷ <paramref name="gbs"/> GB/s (0 when no bandwidth was measured).</summary>
    private double RooflineFraction(double gbs) => gbs > 0 ? Math.Round(DecodeTokS / Batch * WeightBytesPerToken / (gbs * 1e9), 3) : 0;

    /// <summary>Read bandwidth the roofline divides by, GB/s (0 when not measured): the highest
    /// <see cref="ReadBandwidth.RooflineGbs"/> of <see cref="ReadBandwidths"/>, over the decode's footprint.</summary>
    public double BandwidthGbs { get; init; }

    /// <summary>The batch-1 decode ceiling of this model on this machine (ours only); null when not measured.</summary>
    public Kernels.ModelCeiling? Ceiling { get; init; }

    /// <summary>Seconds from the start of loading until the warm-up request is answered (0 when not measured).</summary>
    public double ReadyS { get; init; }

    /// <summary>Tokens generated over all requests (fewer than batch × N when a constraint ends a request early).</summary>
    public int GeneratedTokens { get; init; }

    /// <summary>Process CPU milliseconds per decoded token.</summary>
    public double DecodeCpuMsPerToken { get; init; }

    /// <summary>Accepted / proposed tokens with speculative decoding; null without.</summary>
    public double? AcceptanceRate { get; init; }

    /// <summary>Accepted proposals per verification step with speculative decoding; null without.</summary>
    public double? MeanAcceptedTokens { get; init; }

    /// <summary>Decode tok/s of the same run without speculation (side by side); null when not run.</summary>
    public double? BaselineDecodeTokS { get; init; }

    /// <summary>Median over repeats of speculative / baseline decode tok/s, each pair back to back; null when not run.</summary>
    public double? PairedSpeedupMedian { get; init; }

    /// <summary>Median over repeats of baseline / speculative CPU milliseconds per decoded token; null when not run.</summary>
    public double? CpuSpeedupMedian { get; init; }

    /// <summary>Engine steps during the decode (ours only).</summary>
    public long? DecodeSteps { get; init; }

    /// <summary>Mean wall milliseconds of an engine step during the decode (ours only).</summary>
    public double StepMs { get; init; }

    /// <summary>Mean milliseconds per decode step spent proposing tokens (a draft model's steps).</summary>
    public double ProposeMsPerStep { get; init; }

    /// <summary>Mean milliseconds per decode step of the model's forward pass (with speculation, the verification).</summary>
    public double ForwardMsPerStep { get; init; }

    /// <summary>Mean milliseconds per decode step that the engine's compute threads spent runnable but waiting for a core
    /// (<see cref="RunQueueWait"/>): how much other work preempted the decode (ours only; 0 where unknown).</summary>
    public double RunQueueWaitMsPerStep { get; init; }

    /// <summary>Every read-bandwidth measurement of the run in order (over the footprint and over the large ring):
    /// before each counted pass and after the last.</summary>
    public IReadOnlyList<ReadBandwidth> ReadBandwidths { get; init; } = [];

    /// <summary>The best counted pass's decode over its own ceiling, whose bandwidth roofline uses the higher of the two
    /// measurements beside the pass; null when not measured.</summary>
    public double? CeilingFractionAdjacent { get; init; }

    /// <summary>Mean step milliseconds of the run without speculation (side by side); null when not run.</summary>
    public double? BaselineStepMs { get; init; }

    /// <summary>Whether every request's tokens equal the run without speculation; null when not run.</summary>
    public bool? SameText { get; init; }

    /// <summary>Ranks that split each layer.</summary>
    public int TensorParallelSize { get; init; } = 1;

    /// <summary>Pipeline stages.</summary>
    public int PipelineParallelSize { get; init; } = 1;

    /// <summary>Ranks that split each step's tokens (ring attention).</summary>
    public int ContextParallelSize { get; init; } = 1;

    /// <summary>The ranks' communication over the measured run (several ranks only).</summary>
    public Inference.Parallelism.ParallelCommunication? Communication { get; init; }

    /// <summary>Tokens the measured run put through the model (prompts and generated).</summary>
    public long ProcessedTokens { get; init; }

    public string ToJson()
    {
        var json = Fields();
        json["tp"] = TensorParallelSize;
        json["pp"] = PipelineParallelSize;
        json["cp"] = ContextParallelSize;
        if (Communication is { } comm)
        {
            json["comm_steps"] = comm.Steps;
            json["comm_bytes_per_step"] = Math.Round(comm.BytesPerStep);
            json["comm_bytes_per_token"] = ProcessedTokens == 0 ? 0 : Math.Round((double)comm.Bytes / ProcessedTokens, 1);
            json["comm_ms_per_step"] = Math.Round(comm.TimePerStep.TotalMilliseconds, 4);
        }
        if (AcceptanceRate is double rate) json["acceptance_rate"] = Math.Round(rate, 3);
        if (MeanAcceptedTokens is double mean) json["mean_accepted_tokens"] = Math.Round(mean, 3);
        if (BaselineDecodeTokS is double baseline)
        {
            json["baseline_decode_tok_s"] = Math.Round(baseline, 2);
            json["speedup"] = Math.Round(DecodeTokS / baseline, 3);
        }
        if (PairedSpeedupMedian is double paired) json["speedup_median_pair"] = Math.Round(paired, 3);
        if (CpuSpeedupMedian is double cpu) json["cpu_speedup_median_pair"] = Math.Round(cpu, 3);
        if (SameText is bool same) json["same_text"] = same;
        if (DecodeSteps is long steps)
        {
            json["decode_steps"] = steps;
            json["step_ms"] = Math.Round(StepMs, 3);
            json["propose_ms_per_step"] = Math.Round(ProposeMsPerStep, 3);
            json["forward_ms_per_step"] = Math.Round(ForwardMsPerStep, 3);
            json["run_queue_wait_ms_per_step"] = Math.Round(RunQueueWaitMsPerStep, 3);
        }
        if (ReadBandwidths.Count > 0)
        {
            // NOTE: read_gb_s (the roofline's) is over the footprint; the large ring's DRAM figure is kept beside it, and
            // the fraction of it shows how much of the decode the last-level cache serves. Where the footprint exceeds
            // the last-level cache (or is at least the ring) it is measured once, over the ring: then the footprint and
            // DRAM fields (and their _all arrays) carry the same figures, and footprint_mb is the ring's size.
            double dram = ReadBandwidths.Max(r => r.DramGbs);
            json["footprint_mb"] = Math.Round(ReadBandwidths[0].FootprintBytes / 1e6, 1);
            json["footprint_read_gb_s"] = Math.Round(ReadBandwidths.Max(r => r.FootprintGbs), 2);
            json["dram_read_gb_s"] = Math.Round(dram, 2);
            json["decode_dram_roofline_fraction"] = RooflineFraction(dram);
            json["footprint_read_gb_s_all"] = ReadBandwidths.Select(r => Math.Round(r.FootprintGbs, 2)).ToArray();
            json["dram_read_gb_s_all"] = ReadBandwidths.Select(r => Math.Round(r.DramGbs, 2)).ToArray();
        }
        if (BaselineStepMs is double baselineStep) json["baseline_step_ms"] = Math.Round(baselineStep, 3);
        if (Ceiling is { } c)
        {
            // NOTE: the ceiling is min(bandwidth roofline, compute roofline): the in-cache rate of each weight type's
            // kernel on one core, times the threads, against the bytes of that type per token.
            json["ceiling_bandwidth_tok_s"] = Math.Round(c.BandwidthTokS, 2);
            json["ceiling_compute_tok_s"] = Math.Round(c.ComputeTokS, 2);
            json["ceiling_tok_s"] = Math.Round(c.TokS, 2);
            json["bound_by"] = c.BoundBy;
            json["decode_ceiling_fraction"] = c.TokS > 0 ? Math.Round(DecodeTokS / c.TokS, 3) : 0;
            if (CeilingFractionAdjacent is double adjacent) json["decode_ceiling_fraction_adjacent"] = Math.Round(adjacent, 3);
            json["in_cache_gb_s"] = c.InCacheGbs.ToDictionary(kv => kv.Key.ToString(), kv => Math.Round(kv.Value, 2));
        }
        return JsonSerializer.Serialize(json);
    }

    private Dictionary<string, object?> Fields() => new()
    {
        ["cpu"] = Kernels.DecodeCeiling.CpuTag,
        ["llc_mib"] = Kernels.DecodeCeiling.LastLevelCacheMib,
        ["cpu_name"] = Kernels.DecodeCeiling.CpuName,
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
        ["decode_cpu_ms_per_token"] = Math.Round(DecodeCpuMsPerToken, 2),
        ["weight_mb_per_token"] = Math.Round(WeightBytesPerToken / 1e6, 1),
        ["read_gb_s"] = Math.Round(BandwidthGbs, 2),
        // Decode roofline: every token streams all weights once; batch B shares one pass.
        ["decode_roofline_fraction"] = RooflineFraction(BandwidthGbs),
    };
}
