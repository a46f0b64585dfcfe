using System.Diagnostics;
using Inference.Loading;
using LLama;
using LLama.Native;

namespace Inference.Benchmarks.Models;

/// <summary>
/// Writes the benchmark models: random-weight llama GGUFs of a given shape with stories260K's 512-token vocabulary.
/// F32, F16 and Q8_0 are written directly; the other types are quantized from an F32 file by llama.cpp with its preset
/// of that name (q4_k: Q4_K_M, a mix of Q4_K and Q6_K; q5_k: Q5_K_M; q3_k: Q3_K_M; q4_1, q5_0, q5_1, iq4_nl, iq4_xs, q2_k,
/// q3_k_s, q4_k_s, q5_k_s: those presets).
/// <code>
/// dotnet run -c Release --project Inference.Benchmarks -- write-model --out .models/bench-q8_0.gguf --type q8_0
/// </code>
/// Defaults: dim 1024, 16 layers, 16 heads, 4 KV heads, ffn 2816 (178M parameters).
/// </summary>
public static class WriteModel
{
    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        string output = a.Required("--out");
        string type = a.String("--type", "q8_0").ToLowerInvariant();
        string donor = a.String("--donor", RepositoryPaths.TestData("stories260K.gguf"));
        var options = new SyntheticModelOptions
        {
            Architecture = a.String("--arch", "llama"),
            Dimension = a.Int("--dim", 1024),
            LayerCount = a.Int("--layers", 16),
            HeadCount = a.Int("--heads", 16),
            KvHeadCount = a.Int("--kv-heads", 4),
            FeedForwardLength = a.Int("--ffn", 2816),
            ContextLength = a.Int("--ctx", 4096),
            ExpertCount = a.Int("--experts", 0),
            ExpertUsedCount = a.Int("--experts-used", 0),
            ExpertFeedForwardLength = a.Int("--expert-ffn", 0),
            SharedExpertFeedForwardLength = a.Int("--shared-expert-ffn", 0),
            Seed = a.Int("--seed", 1),
            WeightScale = 0.03f,
            TokenizerDonorPath = donor,
        };
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        var sw = Stopwatch.StartNew();
        switch (type)
        {
            case "f32": SyntheticModel.Write(output, options with { TensorType = GgmlType.F32 }); break;
            case "f16": SyntheticModel.Write(output, options with { TensorType = GgmlType.F16 }); break;
            case "bf16": SyntheticModel.Write(output, options with { TensorType = GgmlType.BF16 }); break;
            case "q8_0": SyntheticModel.Write(output, options with { TensorType = GgmlType.Q8_0 }); break;
            case var _ when LlamaCppTypes.TryGetValue(type, out var ftype):
                string f32 = output + ".f32.tmp";
                SyntheticModel.Write(f32, options with { TensorType = GgmlType.F32 });
                E2e.LlamaCppSetup.EnsureQuiet();
                bool ok = LLamaQuantizer.Quantize(f32, output, ftype, Environment.ProcessorCount);
                File.Delete(f32);
                if (!ok) throw new InvalidOperationException($"llama.cpp could not quantize to {type}");
                break;
            default: throw new ArgumentException($"unknown --type '{type}' (f32, f16, bf16, q8_0, {string.Join(", ", LlamaCppTypes.Keys)})");
        }
        Console.WriteLine($"{{\"out\":\"{output}\",\"type\":\"{type}\",\"bytes\":{new FileInfo(output).Length},\"seconds\":{sw.Elapsed.TotalSeconds:F1}}}");
        return Task.FromResult(0);
    }

    /// <summary>The types quantized by llama.cpp from an F32 file, with the preset each uses (a preset is a mix: its
    /// type for most matrices, Q6_K or Q8_0 for the output, and others for some layers).</summary>
    private static readonly Dictionary<string, LLamaFtype> LlamaCppTypes = new()
    {
        ["q4_0"] = LLamaFtype.MOSTLY_Q4_0,
        ["q4_1"] = LLamaFtype.MOSTLY_Q4_1,
        ["q5_0"] = LLamaFtype.MOSTLY_Q5_0,
        ["q5_1"] = LLamaFtype.MOSTLY_Q5_1,
        ["iq4_nl"] = LLamaFtype.MOSTLY_IQ4_NL,
        ["iq4_xs"] = LLamaFtype.MOSTLY_IQ4_XS,
        ["q2_k"] = LLamaFtype.MOSTLY_Q2_K,
        ["q3_k"] = LLamaFtype.MOSTLY_Q3_K_M,
        ["q3_k_s"] = LLamaFtype.MOSTLY_Q3_K_S,
        ["q4_k"] = LLamaFtype.MOSTLY_Q4_K_M,
        ["q4_k_s"] = LLamaFtype.MOSTLY_Q4_K_S,
        ["q5_k"] = LLamaFtype.MOSTLY_Q5_K_M,
        ["q5_k_s"] = LLamaFtype.MOSTLY_Q5_K_S,
        ["q6_k"] = LLamaFtype.MOSTLY_Q6_K,
    };
}
