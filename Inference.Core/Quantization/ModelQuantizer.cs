using System.Runtime.InteropServices;
using Inference.Loading;

namespace Inference.Quantization;

/// <summary>
/// Quantizes a float model (a GGUF file, or a Hugging Face checkpoint folder) into a GGUF file of a
/// <see cref="QuantizationPreset"/>, the way llama.cpp's <c>llama-quantize</c> does without an importance matrix: the same
/// per-tensor types (<see cref="TensorTypeRules"/>) and the same block bytes (<see cref="BlockQuantizer"/>).
/// </summary>
/// <remarks>
/// The output keeps every metadata key of the input, sets <c>general.file_type</c> to the preset and
/// <c>general.quantization_version</c> to 2, and lists the tensors in llama.cpp's order (<see cref="TensorTypeRules.CompareNames"/>).
/// Tensors are converted one at a time, their rows spread over all cores; only one tensor's output is held in memory.
/// </remarks>
public static class ModelQuantizer
{
    /// <summary>ggml's quantization format version (<c>GGML_QNT_VERSION</c>).</summary>
    public const uint QuantizationVersion = 2;

    /// <summary>Quantizes <paramref name="modelPath"/> (a GGUF file or a Hugging Face checkpoint folder) into <paramref name="outputPath"/>.</summary>
    /// <param name="modelPath">F32/F16/BF16 weights: a GGUF file or a folder with <c>config.json</c> and safetensors.</param>
    /// <param name="outputPath">The GGUF file to write (replaced if it exists; removed again if quantization fails).</param>
    /// <param name="preset">The recipe.</param>
    /// <param name="progress">Receives the fraction of tensor values done, 0 to 1.</param>
    /// <param name="cancellationToken">Stops between row chunks.</param>
    /// <returns>The decisions taken, in the output's tensor order.</returns>
    /// <exception cref="ModelFormatException">The input is not a readable model.</exception>
    /// <exception cref="NotSupportedException">A tensor to quantize is not stored as F32, F16 or BF16.</exception>
    /// <exception cref="ArgumentException">A tensor's rows fit neither the preset's type nor a fallback.</exception>
    public static Task<IReadOnlyList<TensorQuantization>> QuantizeAsync(string modelPath, string outputPath, QuantizationPreset preset,
        IProgress<float>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelPath);
        ArgumentException.ThrowIfNullOrEmpty(outputPath);
        _ = TensorTypeRules.DefaultType(preset); // validates the preset before any work
        return Task.Run(() => Quantize(modelPath, outputPath, preset, progress, cancellationToken), cancellationToken);
    }

    private static IReadOnlyList<TensorQuantization> Quantize(string modelPath, string outputPath, QuantizationPreset preset,
        IProgress<float>? progress, CancellationToken cancellationToken)
    {
        if (!Directory.Exists(modelPath)) return QuantizeGguf(modelPath, outputPath, preset, progress, cancellationToken);
        // NOTE: a checkpoint folder goes through the GGUF converter first (the same file `convert` writes), so both inputs
        // take one path and the result equals quantizing the converted file.
        string converted = outputPath + ".f16.tmp";
        try
        {
            using (var checkpoint = HfCheckpoint.Open(modelPath))
                HfCheckpointGgufConverter.Write(checkpoint, converted, QkRowOrder.AdjacentPairs, cancellationToken);
            return QuantizeGguf(converted, outputPath, preset, progress, cancellationToken);
        }
        finally
        {
            File.Delete(converted);
        }
    }

    /// <summary>The facts of <paramref name="gguf"/> the per-tensor rules read.</summary>
    /// <exception cref="ModelFormatException"><c>general.architecture</c> or the block count is missing.</exception>
    public static QuantizationModelFacts ReadFacts(GgufFile gguf)
    {
        ArgumentNullException.ThrowIfNull(gguf);
        string arch = gguf.GetString("general.architecture") ?? throw gguf.Bad(-1, "general.architecture is missing");
        int layers = (int)(gguf.GetInteger($"{arch}.block_count") ?? throw gguf.Bad(-1, $"{arch}.block_count is missing"));
        int heads = (int)(gguf.GetInteger($"{arch}.attention.head_count") ?? 0);
        int kvHeads = (int)(gguf.GetInteger($"{arch}.attention.head_count_kv") ?? heads);
        int experts = (int)(gguf.GetInteger($"{arch}.expert_count") ?? 0);
        return new QuantizationModelFacts(arch, layers, heads, kvHeads, experts);
    }

    /// <summary>The type each tensor of <paramref name="gguf"/> gets under <paramref name="preset"/>, in llama.cpp's order.</summary>
    public static IReadOnlyList<TensorQuantization> Plan(GgufFile gguf, QuantizationPreset preset)
    {
        ArgumentNullException.ThrowIfNull(gguf);
        var inputs = new List<QuantizationInput>(gguf.Tensors.Count);
        foreach (var t in gguf.Tensors) inputs.Add(new QuantizationInput(t.Name, t.Dimensions, t.Type));
        return TensorTypeRules.Plan(inputs, preset, ReadFacts(gguf));
    }

    private static unsafe IReadOnlyList<TensorQuantization> QuantizeGguf(string inputPath, string outputPath, QuantizationPreset preset,
        IProgress<float>? progress, CancellationToken cancellationToken)
    {
        using var gguf = GgufFile.Open(inputPath);
        var plan = Plan(gguf, preset);
        foreach (var t in plan)
        {
            if (t.SourceType != t.TargetType && !IsFloat(t.SourceType))
                throw new NotSupportedException($"tensor '{t.Name}' is stored as {t.SourceType}; only F32, F16 and BF16 tensors can be quantized");
        }
        long totalElements = 0;
        foreach (var t in plan) totalElements += gguf.GetTensor(t.Name).ElementCount;

        try
        {
            var options = gguf.Alignment == GgufWriter.DefaultAlignment ? null : new GgufWriterOptions { Alignment = gguf.Alignment };
            using var w = GgufWriter.Create(outputPath, options);
            bool hasFileType = false, hasVersion = false;
            foreach (var key in gguf.MetadataKeys)
            {
                if (key == "general.alignment") continue;
                if (key == "general.file_type")
                {
                    w.AddUInt32(key, (uint)preset);
                    hasFileType = true;
                }
                else if (key == "general.quantization_version")
                {
                    w.AddUInt32(key, QuantizationVersion);
                    hasVersion = true;
                }
                else
                {
                    w.AddValue(key, gguf.Metadata[key]);
                }
            }
            // NOTE: llama.cpp appends the two keys in this order when the input lacks them.
            if (!hasVersion) w.AddUInt32("general.quantization_version", QuantizationVersion);
            if (!hasFileType) w.AddUInt32("general.file_type", (uint)preset);
            foreach (var t in plan) w.AddTensorInfo(t.Name, t.Dimensions, t.TargetType);
            w.WriteHeader();

            long done = 0;
            byte[]? buffer = null;
            foreach (var t in plan)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var info = gguf.GetTensor(t.Name);
                if (t.SourceType == t.TargetType)
                {
                    w.WriteTensorData(t.Name, gguf.GetTensorBytes(info));
                }
                else
                {
                    long bytes = GgmlTypeInfo.RowBytes(t.TargetType, info.RowLength) * info.RowCount;
                    if (buffer is null || buffer.Length < bytes) buffer = GC.AllocateUninitializedArray<byte>(checked((int)bytes));
                    fixed (byte* dst = buffer)
                    {
                        long before = done;
                        ConvertRows(info.Type, gguf.GetTensorPointer(info), t.TargetType, dst, info.RowCount, checked((int)info.RowLength),
                            cancellationToken, rows => progress?.Report((float)((before + rows * info.RowLength) / (double)totalElements)));
                    }
                    w.WriteTensorData(t.Name, buffer.AsSpan(0, (int)bytes));
                }
                done += info.ElementCount;
                progress?.Report((float)(done / (double)Math.Max(1, totalElements)));
            }
            w.Complete();
        }
        catch
        {
            // NOTE: never leave a half-written model behind (cancellation, full disk, an unquantizable tensor).
            File.Delete(outputPath);
            throw;
        }
        return plan;
    }

    private static bool IsFloat(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;

    /// <summary>
    /// Converts <paramref name="rows"/> rows of <paramref name="cols"/> values from float type <paramref name="from"/> at
    /// <paramref name="src"/> to <paramref name="to"/> at <paramref name="dst"/>, chunks of rows spread over all cores.
    /// </summary>
    /// <remarks>The <paramref name="rowsDone"/> callback runs on any thread with the number of rows finished so far.</remarks>
    internal static unsafe void ConvertRows(GgmlType from, byte* src, GgmlType to, byte* dst, long rows, int cols,
        CancellationToken cancellationToken, Action<long>? rowsDone = null)
    {
        if (!IsFloat(from)) throw new NotSupportedException($"only F32, F16 and BF16 rows can be converted, not {from}");
        long srcRowBytes = GgmlTypeInfo.RowBytes(from, cols), dstRowBytes = GgmlTypeInfo.RowBytes(to, cols);
        // NOTE: chunks of at least 64K values keep the scheduling overhead small next to the K-quant fits.
        long rowsPerChunk = Math.Max(1, (1 << 16) / cols);
        long chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
        long finished = 0;
        var options = new ParallelOptions { CancellationToken = cancellationToken };
        Parallel.For(0L, chunks, options, () => new float[cols], (chunk, _, row) =>
        {
            long first = chunk * rowsPerChunk, last = Math.Min(rows, first + rowsPerChunk);
            for (long r = first; r < last; r++)
            {
                ToFloats(from, src + r * srcRowBytes, row);
                BlockQuantizer.QuantizeRow(to, row, new Span<byte>(dst + r * dstRowBytes, checked((int)dstRowBytes)));
            }
            if (rowsDone is not null) rowsDone(Interlocked.Add(ref finished, last - first));
            return row;
        }, static _ => { });
    }

    /// <summary>One row of float-typed values widened exactly to float.</summary>
    private static unsafe void ToFloats(GgmlType type, byte* src, Span<float> dst)
    {
        switch (type)
        {
            case GgmlType.F32:
                new ReadOnlySpan<float>(src, dst.Length).CopyTo(dst);
                break;
            case GgmlType.F16:
                System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(src, dst.Length), dst);
                break;
            case GgmlType.BF16:
                var bits = new ReadOnlySpan<ushort>(src, dst.Length);
                var wide = MemoryMarshal.Cast<float, uint>(dst);
                for (int i = 0; i < bits.Length; i++) wide[i] = (uint)bits[i] << 16;
                break;
            default:
                throw new NotSupportedException($"{type} is not a float type");
        }
    }
}
