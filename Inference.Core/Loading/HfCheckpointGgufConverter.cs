using Inference.Models;
using Inference.Tokenization;

namespace Inference.Loading;

/// <summary>Row order of the Q and K projections in a converted GGUF file.</summary>
internal enum QkRowOrder
{
    /// <summary>
    /// Permuted for adjacent-pair RoPE, as llama.cpp's converter writes llama models (the file loads as <see cref="RopeLayout.Normal"/>).
    /// </summary>
    AdjacentPairs,
    /// <summary>Left in the checkpoint's half-rotation order (only meaningful with a <see cref="RopeLayout.Neox"/> configuration).</summary>
    AsStored,
}

/// <summary>
/// Converts a Hugging Face checkpoint to GGUF the way llama.cpp's <c>convert_hf_to_gguf.py</c> does for llama and qwen2:
/// GGUF tensor names, 2-D weights copied in their dtype, 1-D tensors as F32, tokenizer keys from <c>tokenizer.json</c>,
/// and — for llama only — Q/K rows permuted from half-rotation to adjacent-pair RoPE order.
/// </summary>
/// <remarks>
/// The permutation (llama.cpp's <c>LlamaModel.permute</c>), per head of <c>headDim</c> rows:
/// <code>
/// rows [heads, 2, headDim/2] → swap the last two axes → [heads, headDim/2, 2]
/// new row h·headDim + 2i + j  =  old row h·headDim + j·headDim/2 + i      (i &lt; headDim/2, j ∈ {0, 1})
/// </code>
/// so the pair (i, i + headDim/2) that NeoX RoPE rotates becomes the adjacent pair (2i, 2i + 1). K uses the KV head count.
/// </remarks>
internal static class HfCheckpointGgufConverter
{
    /// <summary>Writes <paramref name="checkpoint"/> as a GGUF file at <paramref name="path"/>.</summary>
    public static void Write(HfCheckpoint checkpoint, string path, QkRowOrder order, CancellationToken cancellationToken)
    {
        var c = checkpoint.Config;
        bool permute = checkpoint.Architecture.GgufRopeLayout == RopeLayout.Normal && order == QkRowOrder.AdjacentPairs;
        string arch = c.Architecture;

        // The tensors the architecture's forward pass reads from this checkpoint (optional ones where present), in its order.
        var names = checkpoint.Architecture.TensorNames;
        var tensors = new List<(string Gguf, string? Hf, int Heads)>();
        var experts = new Dictionary<string, int>(); // stacked expert tensors: GGUF name → expert count
        var vectors = new HashSet<string>();          // 1-D in GGUF, whatever the checkpoint's shape (qwen2moe's [1, hidden] shared expert gate)
        foreach (var spec in checkpoint.Architecture.Build(c, checkpoint.Weights).Weights)
        {
            if (spec.FirstRow > 0) continue; // the other parts of a fused tensor, written whole with its first
            if (spec.IsExpert)
            {
                // One GGUF tensor [cols, rows, experts] from the checkpoint's tensor of each expert, written with the first.
                if (spec.Expert > 0) continue;
                experts[spec.Name] = spec.Experts;
                tensors.Add((spec.Name, names.ToHfExpert(spec.Name, 0), 0));
                continue;
            }
            if (!spec.IsMatrix) vectors.Add(spec.Name);
            string hf = names.ToHf(spec.Name) ?? throw new InvalidOperationException($"tensor '{spec.Name}' has no Hugging Face name");
            int dot = spec.Name.StartsWith("blk.", StringComparison.Ordinal) ? spec.Name.IndexOf('.', 4) + 1 : 0;
            string suffix = spec.Name[dot..];
            int heads = !permute ? 0 : suffix.StartsWith("attn_q", StringComparison.Ordinal) ? c.HeadCount
                : suffix.StartsWith("attn_k", StringComparison.Ordinal) ? c.KvHeadCount : 0;
            tensors.Add((spec.Name, hf, heads));
        }
        // Llama 3.1's RoPE frequency factors, computed from config.json, as llama.cpp's converter stores them.
        // Vectors computed from config.json (Llama 3.1's RoPE frequency factors, Phi-3's LongRoPE factors), as llama.cpp's
        // converter stores them.
        var computed = new Dictionary<string, float[]>(checkpoint.ComputedVectors);
        if (checkpoint.Weights.GetVector("rope_freqs.weight", c.RopeDim / 2, optional: true) is { } ropeFreqs) computed["rope_freqs.weight"] = ropeFreqs;
        foreach (var name in computed.Keys) tensors.Add((name, null, 0));

        using var w = GgufWriter.Create(path);
        w.AddString("general.architecture", arch);
        w.AddString("general.name", Path.GetFileName(checkpoint.DirectoryPath.TrimEnd(Path.DirectorySeparatorChar)));
        var matrixTypes = new HashSet<SafetensorsDType>();
        foreach (var t in tensors)
            if (t.Hf is not null && checkpoint.FindTensor(t.Hf)!.Shape.Length == 2) matrixTypes.Add(checkpoint.FindTensor(t.Hf)!.DType);
        // LLAMA_FTYPE: ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_BF16 = 32.
        w.AddUInt32("general.file_type", matrixTypes.Contains(SafetensorsDType.BF16) ? 32u : matrixTypes.Contains(SafetensorsDType.F16) ? 1u : 0u);
        checkpoint.Architecture.WriteGgufMetadata(w, c);
        string tokenizerPath = Path.Combine(checkpoint.DirectoryPath, HfCheckpoint.TokenizerFileName);
        if (File.Exists(tokenizerPath))
            HfTokenizerJson.AddGgufMetadata(w, HfTokenizerJson.Parse(tokenizerPath, checkpoint.TokenizerConfig, c.VocabSize));

        foreach (var t in tensors)
        {
            if (t.Hf is null)
            {
                w.AddTensorInfo(t.Gguf, [computed[t.Gguf].Length], GgmlType.F32);
                continue;
            }
            var info = checkpoint.FindTensor(t.Hf)!;
            if (experts.TryGetValue(t.Gguf, out int count))
            {
                for (int e = 1; e < count; e++)
                {
                    var other = checkpoint.FindTensor(names.ToHfExpert(t.Gguf, e)!)!;
                    if (other.DType != info.DType)
                        throw new ModelFormatException(checkpoint.DirectoryPath, -1, $"the experts of '{t.Gguf}' are stored in different dtypes ({info.DType}, {other.DType})");
                }
                w.AddTensorInfo(t.Gguf, [info.Shape[1], info.Shape[0], count], SafetensorsDTypeInfo.ToGgmlType(info.DType));
            }
            else if (info.Shape.Length == 2 && !vectors.Contains(t.Gguf)) w.AddTensorInfo(t.Gguf, [info.Shape[1], info.Shape[0]], SafetensorsDTypeInfo.ToGgmlType(info.DType));
            else w.AddTensorInfo(t.Gguf, [info.ElementCount], GgmlType.F32);
        }
        w.WriteHeader();

        foreach (var t in tensors)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (t.Hf is null)
            {
                w.WriteTensorData(t.Gguf, computed[t.Gguf]);
                continue;
            }
            if (experts.TryGetValue(t.Gguf, out int expertCount))
            {
                for (int e = 0; e < expertCount; e++)
                {
                    var (expertFile, expertInfo) = checkpoint.Locate(names.ToHfExpert(t.Gguf, e)!)!.Value;
                    w.WriteTensorData(t.Gguf, expertFile.GetTensorBytes(expertInfo));
                }
                continue;
            }
            var (file, info) = checkpoint.Locate(t.Hf)!.Value;
            var bytes = file.GetTensorBytes(info);
            if (info.Shape.Length != 2 || vectors.Contains(t.Gguf))
            {
                var values = new float[info.ElementCount];
                WeightConversion.ToFloats(SafetensorsDTypeInfo.ToGgmlType(info.DType), bytes, values);
                if (t.Heads > 0) values = PermuteRows(values, 1, t.Heads);
                float offset = checkpoint.Architecture.HfNormOffset(t.Gguf);
                if (offset != 0f) System.Numerics.Tensors.TensorPrimitives.Add(values, offset, values);
                w.WriteTensorData(t.Gguf, values);
                continue;
            }
            if (t.Heads == 0)
            {
                w.WriteTensorData(t.Gguf, bytes);
                continue;
            }
            int rows = (int)info.Shape[0];
            int rowBytes = (int)(info.ByteCount / rows);
            int headDim = rows / t.Heads, half = headDim / 2;
            for (int newRow = 0; newRow < rows; newRow++)
            {
                int h = newRow / headDim, i = newRow % headDim / 2, j = newRow % 2;
                int oldRow = h * headDim + j * half + i;
                w.WriteTensorData(t.Gguf, bytes.Slice(oldRow * rowBytes, rowBytes));
            }
        }
        w.Complete();
    }

    /// <summary>The row permutation above applied to a [rows, rowLength] float array.</summary>
    internal static float[] PermuteRows(float[] values, int rowLength, int heads)
    {
        int rows = values.Length / rowLength, headDim = rows / heads, half = headDim / 2;
        var result = new float[values.Length];
        for (int newRow = 0; newRow < rows; newRow++)
        {
            int h = newRow / headDim, i = newRow % headDim / 2, j = newRow % 2;
            int oldRow = h * headDim + j * half + i;
            values.AsSpan(oldRow * rowLength, rowLength).CopyTo(result.AsSpan(newRow * rowLength, rowLength));
        }
        return result;
    }
}
