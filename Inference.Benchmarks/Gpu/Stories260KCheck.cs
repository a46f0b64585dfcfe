using System.Globalization;
using System.Text;
using System.Text.Json;
using Inference.Cuda;
using Inference.Engine;
using Inference.Sampling;

namespace Inference.Benchmarks.Gpu;

/// <summary>
/// The real-model step of <c>gpu OUTDIR</c>: stories260K (head dim 8, GQA 8/4) on the GPU engine, with PTX and with ILGPU
/// attention: 200 greedy tokens from BOS must give llama2.c's text, and 16 concurrent greedy requests must each give the
/// text its prompt gives alone. Needs <c>stories260K.gguf</c> and <c>stories260K-greedy-200.json</c> beside the runner
/// (the pack step puts them there) or in <c>../shared/testdata</c>; skipped with a line when neither has them.
/// </summary>
public static class Stories260KCheck
{
    private static readonly string[] Prompts =
        ["Once upon a time", "Tom had a dog", "The sun", "Lily and Ben went to the park", "One day", "A big cat", "She said", "The little bird"];

    public static bool Run(StringBuilder summary)
    {
        string? model = RunnerFiles.Find("stories260K.gguf", "stories260K.gguf");
        string? expectedFile = RunnerFiles.Find("stories260K-greedy-200.json", Path.Combine("expected", "stories260K-greedy-200.json"));
        if (model is null || expectedFile is null)
        {
            summary.AppendLine("stories260K: skipped (stories260K.gguf or its expected text not found)\n");
            return true;
        }
        string expected;
        using (var doc = JsonDocument.Parse(File.ReadAllText(expectedFile)))
            expected = doc.RootElement.GetProperty("expected_text").GetString()!;

        bool passed = true;
        summary.AppendLine("## stories260K on the GPU engine (head dim 8, 8 heads / 4 KV heads)\n");
        summary.AppendLine("| attention | 200 greedy tokens = llama2.c | 16 concurrent = solo |");
        summary.AppendLine("|---|---|---|");
        var greedy = SamplingOptions.Greedy with { MaxTokens = 200, EndOfSequence = EndOfSequenceHandling.Ignore };
        var options = new EngineOptions { MaxNumSeqs = 16, MaxNumBatchedTokens = 64 };
        foreach (var attention in new[] { CudaAttentionKernels.Ptx, CudaAttentionKernels.Ilgpu })
        {
            try
            {
                var engine = InferenceEngine.LoadAsync(model, options.UseCuda(new CudaOptions { Attention = attention })).GetAwaiter().GetResult();
                try
                {
                    var text = engine.CompleteAsync("", greedy).GetAwaiter().GetResult().Text;
                    bool sameAsReference = text == expected;

                    var short48 = SamplingOptions.Greedy with { MaxTokens = 48 };
                    var solo = Prompts.Select(p => engine.CompleteAsync(p, short48).GetAwaiter().GetResult().Text).ToArray();
                    var all = Task.WhenAll(Enumerable.Range(0, 16).Select(i => engine.CompleteAsync(Prompts[i % Prompts.Length], short48)))
                        .GetAwaiter().GetResult();
                    int matching = Enumerable.Range(0, 16).Count(i => all[i].Text == solo[i % Prompts.Length]);

                    passed &= sameAsReference && matching == 16;
                    summary.AppendLine(CultureInfo.InvariantCulture,
                        $"| {attention} | {(sameAsReference ? "yes" : "**no**")} | {matching}/16 |");
                    Console.WriteLine($"{(sameAsReference && matching == 16 ? "PASS" : "FAIL")} stories260K {attention}: greedy 200 = llama2.c {sameAsReference}, concurrent = solo {matching}/16");
                    if (!sameAsReference) Console.WriteLine($"stories260K {attention} text: {text.ReplaceLineEndings(" ")}");
                }
                finally
                {
                    engine.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }
            catch (Exception e)
            {
                passed = false;
                summary.AppendLine(CultureInfo.InvariantCulture, $"| {attention} | **exception**: {RunnerFiles.OneLine(e)} | |");
                Console.WriteLine($"FAIL stories260K {attention}: {e}");
            }
        }
        summary.AppendLine();
        return passed;
    }
}
