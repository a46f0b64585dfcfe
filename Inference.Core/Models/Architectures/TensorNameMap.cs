namespace Inference.Models.Architectures;

/// <summary>
/// One architecture's tensor names in GGUF and in Hugging Face checkpoints: whole-model tensors by full name, block
/// tensors by suffix (<c>blk.N.</c> in GGUF, <c>model.layers.N.</c> in Hugging Face). Experts' matrices are one stacked
/// tensor per block in GGUF (<c>blk.N.ffn_gate_exps.weight</c>) and one per expert in Hugging Face, whose suffix has
/// <c>{0}</c> where the expert's index goes (<c>mlp.experts.{0}.gate_proj.weight</c>).
/// </summary>
internal sealed class TensorNameMap(IReadOnlyList<(string Hf, string Gguf)> globals, IReadOnlyList<(string Hf, string Gguf)> layerSuffixes,
    IReadOnlyList<(string Hf, string Gguf)>? expertSuffixes = null)
{
    private const string GgufLayerPrefix = "blk.";
    private const string HfLayerPrefix = "model.layers.";

    /// <summary>Whole-model tensors (embedding, final norm, output head).</summary>
    public IReadOnlyList<(string Hf, string Gguf)> Globals { get; } = globals;

    /// <summary>Tensors of every block, by suffix.</summary>
    public IReadOnlyList<(string Hf, string Gguf)> LayerSuffixes { get; } = layerSuffixes;

    /// <summary>Stacked expert tensors of every block: the Hugging Face suffix of one expert's tensor (<c>{0}</c> for its index) and the GGUF suffix.</summary>
    public IReadOnlyList<(string Hf, string Gguf)> ExpertSuffixes { get; } = expertSuffixes ?? [];

    /// <summary>This map with more names (an architecture that extends another's blocks).</summary>
    public TensorNameMap With(IReadOnlyList<(string Hf, string Gguf)> globals, IReadOnlyList<(string Hf, string Gguf)> layerSuffixes,
        IReadOnlyList<(string Hf, string Gguf)>? expertSuffixes = null) =>
        new([.. Globals, .. globals], [.. LayerSuffixes, .. layerSuffixes], [.. ExpertSuffixes, .. expertSuffixes ?? []]);

    /// <summary>The Hugging Face name of expert <paramref name="expert"/>'s part of the stacked GGUF tensor <paramref name="ggufName"/>, or null when it is not one.</summary>
    public string? ToHfExpert(string ggufName, int expert)
    {
        if (!TrySplitLayer(ggufName, GgufLayerPrefix, out int layer, out string suffix)) return null;
        foreach (var (hf, gguf) in ExpertSuffixes)
            if (gguf == suffix) return $"{HfLayerPrefix}{layer}.{string.Format(System.Globalization.CultureInfo.InvariantCulture, hf, expert)}";
        return null;
    }

    /// <summary>The Hugging Face name of GGUF tensor <paramref name="ggufName"/>, or null when it has none.</summary>
    public string? ToHf(string ggufName)
    {
        foreach (var (hf, gguf) in Globals)
            if (gguf == ggufName) return hf;
        if (!TrySplitLayer(ggufName, GgufLayerPrefix, out int layer, out string suffix)) return null;
        foreach (var (hf, gguf) in LayerSuffixes)
            if (gguf == suffix) return $"{HfLayerPrefix}{layer}.{hf}";
        return null;
    }

    /// <summary>The GGUF name of Hugging Face tensor <paramref name="hfName"/>, or null when it has none.</summary>
    public string? ToGguf(string hfName)
    {
        foreach (var (hf, gguf) in Globals)
            if (hf == hfName) return gguf;
        if (!TrySplitLayer(hfName, HfLayerPrefix, out int layer, out string suffix)) return null;
        foreach (var (hf, gguf) in LayerSuffixes)
            if (hf == suffix) return $"{GgufLayerPrefix}{layer}.{gguf}";
        return null;
    }

    private static bool TrySplitLayer(string name, string prefix, out int layer, out string suffix)
    {
        layer = -1;
        suffix = "";
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return false;
        int dot = name.IndexOf('.', prefix.Length);
        if (dot < 0) return false;
        var digits = name.AsSpan(prefix.Length, dot - prefix.Length);
        if (digits.IsEmpty || (digits.Length > 1 && digits[0] == '0')) return false;
        foreach (char c in digits)
            if (c is < '0' or > '9') return false;
        if (!int.TryParse(digits, System.Globalization.NumberStyles.None, null, out layer)) return false;
        suffix = name[(dot + 1)..];
        return true;
    }
}
