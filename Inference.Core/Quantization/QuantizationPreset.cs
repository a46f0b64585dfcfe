namespace Inference.Quantization;

/// <summary>
/// A model-wide quantization recipe, as llama.cpp's <c>llama-quantize</c> names them: a default block type and rules that
/// give some tensors more bits. The numeric values are llama.cpp's file types (<c>LLAMA_FTYPE_MOSTLY_*</c>), written to
/// <c>general.file_type</c>.
/// </summary>
public enum QuantizationPreset
{
    /// <summary>Q4_0 everywhere; the output projection Q6_K.</summary>
    Q4_0 = 2,
    /// <summary>Q4_1 everywhere; the output projection Q6_K.</summary>
    Q4_1 = 3,
    /// <summary>Q8_0 everywhere, the output projection too.</summary>
    Q8_0 = 7,
    /// <summary>Q5_0 everywhere; the output projection Q6_K.</summary>
    Q5_0 = 8,
    /// <summary>Q5_1 everywhere; the output projection Q6_K.</summary>
    Q5_1 = 9,
    /// <summary>Q4_K; the first four attention V and the first eighth of the FFN down projections Q5_K; output Q6_K.</summary>
    Q4_K_S = 14,
    /// <summary>Q4_K; about half of the attention V and FFN down projections (the first and last eighth, every third
    /// between) Q6_K; output Q6_K. <c>llama-quantize</c>'s <c>Q4_K</c> means this.</summary>
    Q4_K_M = 15,
    /// <summary>Q5_K everywhere; the output projection Q6_K.</summary>
    Q5_K_S = 16,
    /// <summary>Q5_K; the same attention V and FFN down projections as <see cref="Q4_K_M"/> Q6_K; output Q6_K.
    /// <c>llama-quantize</c>'s <c>Q5_K</c> means this.</summary>
    Q5_K_M = 17,
    /// <summary>Q6_K everywhere.</summary>
    Q6_K = 18,
}

/// <summary>Names and parsing of <see cref="QuantizationPreset"/>.</summary>
public static class QuantizationPresets
{
    /// <summary>Every preset, in <c>llama-quantize</c>'s order.</summary>
    public static IReadOnlyList<QuantizationPreset> All { get; } =
    [
        QuantizationPreset.Q4_0, QuantizationPreset.Q4_1, QuantizationPreset.Q5_0, QuantizationPreset.Q5_1, QuantizationPreset.Q8_0,
        QuantizationPreset.Q4_K_S, QuantizationPreset.Q4_K_M, QuantizationPreset.Q5_K_S, QuantizationPreset.Q5_K_M, QuantizationPreset.Q6_K,
    ];

    /// <summary>
    /// Parses a preset name, case-insensitively: the enum names (<c>Q4_K_M</c>, <c>q8_0</c>) and <c>llama-quantize</c>'s
    /// aliases <c>Q4_K</c> (= Q4_K_M) and <c>Q5_K</c> (= Q5_K_M).
    /// </summary>
    /// <exception cref="ArgumentException">The name is not a preset.</exception>
    public static QuantizationPreset Parse(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return TryParse(name, out var preset) ? preset
            : throw new ArgumentException($"unknown quantization type '{name}' (expected one of {string.Join(", ", All)}, Q4_K, Q5_K)", nameof(name));
    }

    /// <summary>Parses like <see cref="Parse"/>; false when <paramref name="name"/> is not a preset.</summary>
    public static bool TryParse(string? name, out QuantizationPreset preset)
    {
        preset = default;
        if (string.IsNullOrWhiteSpace(name)) return false;
        string n = name.Trim().ToUpperInvariant();
        if (n == "Q4_K") n = "Q4_K_M";
        if (n == "Q5_K") n = "Q5_K_M";
        foreach (var p in All)
        {
            if (p.ToString() == n)
            {
                preset = p;
                return true;
            }
        }
        return false;
    }
}
