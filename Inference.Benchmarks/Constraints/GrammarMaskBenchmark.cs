using System.Diagnostics;
using System.Text.Json;
using Inference.Constraints;
using Inference.Loading;
using Inference.Tokenization;

namespace Inference.Benchmarks.Constraints;

/// <summary>
/// Cost of the constrained-decoding token mask on a large vocabulary. Generation is simulated: at each step the mask
/// is computed and applied to a logits buffer (timed), then a random allowed token is accepted (not timed); one in
/// four picks favours tokens with JSON punctuation so the walk moves through the whole schema. Each walk is one
/// request: a fresh matcher, so its caches start cold. Prints one JSON line: per-token mask time percentiles (µs), the
/// mean of steps that had to compute a mask (cache misses) and of those that did not, and the per-request setup time.
/// </summary>
public static class GrammarMaskBenchmark
{
    /// <summary>A nested schema: objects in arrays in objects, strings, numbers, enums.</summary>
    public const string NestedSchema = """
        {"type":"object","properties":{
          "id":{"type":"integer"},"name":{"type":"string"},"tags":{"type":"array","items":{"type":"string"}},
          "owner":{"type":"object","properties":{"name":{"type":"string"},"email":{"type":"string"},
            "roles":{"type":"array","items":{"enum":["admin","user","guest"]}}},"required":["name","email"]},
          "items":{"type":"array","items":{"type":"object","properties":{
            "sku":{"type":"string"},"qty":{"type":"integer"},"price":{"type":"number"},
            "attrs":{"type":"object","properties":{"color":{"type":"string"},"size":{"enum":["S","M","L"]}}}},
            "required":["sku","qty"]}}},
        "required":["id","name","owner","items"]}
        """;

    public static Task<int> RunAsync(string[] argv)
    {
        var a = new Args(argv);
        string vocabPath = a.String("--vocab", Path.Combine("..", "shared", "testdata", "vocab", "ggml-vocab-deepseek-llm.gguf"));
        string? schemaFile = a.Optional("--json-schema");
        int walks = a.Int("--walks", 8), steps = a.Int("--steps", 300);
        string schema = schemaFile is null ? NestedSchema : File.ReadAllText(schemaFile);
        if (!File.Exists(vocabPath)) throw new FileNotFoundException($"{vocabPath}: file not found", vocabPath);

        ModelTokenizer tokenizer;
        using (var gguf = GgufFile.Open(vocabPath)) tokenizer = ModelTokenizer.FromGguf(gguf);
        int vocab = tokenizer.VocabularySize;
        var constraint = new JsonSchemaConstraint(schema);

        // The vocabulary's trie is built once per tokenizer; time it apart from the per-request setup.
        long t0 = Stopwatch.GetTimestamp();
        _ = constraint.CreateMatcher(tokenizer);
        double firstSetupMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;

        var logits = new float[vocab];
        var mask = new ulong[(vocab + 63) / 64];
        var allowed = new List<int>();
        var punctuated = new List<int>();
        var times = new List<double>();
        var missTimes = new List<double>();
        var hitTimes = new List<double>();
        var setupMs = new List<double>();
        int completed = 0;
        double tickUs = 1e6 / Stopwatch.Frequency;
        for (int w = 0; w < walks; w++)
        {
            var rng = new Random(w + 1);
            long s0 = Stopwatch.GetTimestamp();
            var matcher = constraint.CreateMatcher(tokenizer);
            setupMs.Add(Stopwatch.GetElapsedTime(s0).TotalMilliseconds);
            var seen = new HashSet<string>();
            for (int step = 0; step < steps && !matcher.IsTerminated; step++)
            {
                logits.AsSpan().Fill(1f);
                long m0 = Stopwatch.GetTimestamp();
                matcher.ApplyMask(logits);
                double us = (Stopwatch.GetTimestamp() - m0) * tickUs;
                times.Add(us);

                matcher.FillMask(mask);
                allowed.Clear();
                punctuated.Clear();
                for (int t = 0; t < vocab; t++)
                {
                    if ((mask[t >> 6] & (1UL << t)) == 0) continue;
                    allowed.Add(t);
                    if (tokenizer.GetTokenBytes(t).IndexOfAny("\"{}[],:"u8) >= 0) punctuated.Add(t);
                }
                // A miss is the first visit of a mask (identified by its content); everything else hit the cache.
                string key = Convert.ToBase64String(System.Runtime.InteropServices.MemoryMarshal.AsBytes(mask.AsSpan()));
                (seen.Add(key) ? missTimes : hitTimes).Add(us);
                var pool = punctuated.Count > 0 && rng.Next(4) == 0 ? punctuated : allowed;
                int token = pool[rng.Next(pool.Count)];
                if (!matcher.TryAccept(token)) throw new InvalidOperationException("an allowed token was refused");
                if (tokenizer.IsEndOfGeneration(token)) break;
            }
            if (matcher.IsComplete || matcher.IsTerminated) completed++;
        }
        times.Sort();
        double P(double q) => times[Math.Min(times.Count - 1, (int)(q * times.Count))];
        var result = new
        {
            mode = "grammar-mask",
            vocab,
            tokens = times.Count,
            walks,
            walks_completed = completed,
            median_us = P(0.5),
            p90_us = P(0.9),
            p99_us = P(0.99),
            max_us = times[^1],
            mean_us = times.Average(),
            miss_steps = missTimes.Count,
            miss_mean_us = missTimes.Count > 0 ? missTimes.Average() : 0,
            hit_mean_us = hitTimes.Count > 0 ? hitTimes.Average() : 0,
            first_setup_ms = firstSetupMs,
            request_setup_ms = setupMs.Average(),
        };
        Console.WriteLine(JsonSerializer.Serialize(result));
        return Task.FromResult(0);
    }
}
