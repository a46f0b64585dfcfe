using System.Reflection;
using System.Text;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Inference.Models;

namespace Inference.Cuda.Runner;

/// <summary>How <see cref="DeviceForwardExecutor"/> runs pure decode steps (from <see cref="CudaOptions"/>).</summary>
/// <param name="EnforceEager">Never pad or capture: every step launches its kernels one by one.</param>
/// <param name="MaxCaptureSize">
/// The largest batch padded and captured; batch sizes are 1, 2, 4, … and this. The executor lowers it to the engine's
/// sequence limit rounded up to a bucket (<see cref="DeviceForwardExecutor.DecodeBucketFor"/>).
/// </param>
/// <param name="MaxSeqLenToCapture">The longest context a captured step covers (its attention is split over this many positions).</param>
internal sealed record DecodeGraphOptions(bool EnforceEager, int MaxCaptureSize, int MaxSeqLenToCapture);

/// <summary>
/// The decode step captured as a CUDA graph per batch size (vLLM's design): static input buffers, the batch padded to a
/// captured size, every launch argument constant for that size, the kernels reading per-step sizes from device memory.
/// </summary>
/// <remarks>
/// <code>
///  a pure decode step (every segment one token wanting logits, S sequences, S ≤ MaxCaptureSize,
///  every context ≤ MaxSeqLenToCapture) is padded to the bucket B = the smallest of 1, 2, 4, … ≥ S:
///    row r &lt; S   token, slot, position, contextLen and block table of segment r
///    row r ≥ S   token 0, slot −1 (no KV write), position 0, contextLen 0 (a zero attention row)
///  static device buffers (one set for the largest bucket, bucket B uses their first B rows),
///  C = the largest bucket = min(MaxCaptureSize, the engine's MaxNumSeqs rounded up to 1, 2, 4, …):
///    ints  [tokens C | slots C | tokenSeqs C | positions C | seqStarts C + 1 | contextLens C | logitRows C | tables C·maxBlocks]
///          tokenSeqs[r] = seqStarts[r] = logitRows[r] = r, written once
///    angles  per rotation table: cos [B, half] then sin [B, half];  activations [C, width] per graph buffer
///  per step, host → device: the ints before the tables (one copy), the block-table entries that changed since the
///  last step (one copy of the span from the first to the last changed entry; a host mirror holds what the device has)
///  and the angles; then on CUDA one graph launch (the first step of a bucket runs eagerly, then is captured).
///  attention: MaxContextLength = MaxSeqLenToCapture (the split is fixed; partitions past a context do nothing)
/// </code>
/// Every launch goes to one created stream (stream capture refuses the legacy default stream): for the step, the
/// accelerator's <see cref="Accelerator.DefaultStream"/>, which ILGPU's stream kernels, its copies and the PTX launchers
/// all read at each call, points at it. The tensor-core products are left out (their scratch grows with eager steps,
/// and a captured graph keeps addresses): a captured step's products run on the batch-invariant row kernels. Mixture-of-experts
/// blocks are captured too: routing, grouping and the expert products read their counts from device memory, their
/// scratch belongs to the step buffers (the captured steps' sized once for the largest bucket), and their router and
/// shared-expert products take the row kernels like every other product of a captured step.
/// </remarks>
internal sealed partial class DeviceForwardExecutor
{
    private readonly DecodeGraphOptions? _graphOptions;
    private readonly string? _graphsOff;          // why decode steps are never padded, or null
    private string? _graphFailure;                // why capture failed (then every step is eager), or null
    private DecodeGraphState? _decode;

    // NOTE: ILGPU exposes no way to launch its stream kernels or copies on another stream than DefaultStream, whose
    // setter is protected; redirecting it for the step moves every launch of the unchanged op loop (ILGPU kernels,
    // copies, PTX launchers) onto the capturable stream without threading a stream through some forty launchers.
    private static readonly Action<Accelerator, AcceleratorStream>? SetDefaultStream =
        typeof(Accelerator).GetProperty(nameof(Accelerator.DefaultStream))?.GetSetMethod(nonPublic: true)
            ?.CreateDelegate<Action<Accelerator, AcceleratorStream>>();

    /// <summary>Test hook: when set, one line per enqueued operation with every value its launches depend on.</summary>
    internal List<string>? LaunchLog { get; set; }

    /// <summary>Test hook: block-table entries uploaded by the last padded decode step (the incremental update).</summary>
    internal int LastTableEntriesUploaded { get; private set; }

    /// <summary>Test hook: the bucket of the last padded decode step, 0 when the last step ran eagerly.</summary>
    internal int LastDecodeBucket { get; private set; }

    /// <summary>
    /// The bucket a decode step of <paramref name="sequenceCount"/> sequences pads to: the smallest of 1, 2, 4, … that
    /// holds them, capped at <paramref name="maxCaptureSize"/> (itself a bucket, power of two or not). Given the engine's
    /// sequence limit it is the largest bucket the executor needs.
    /// </summary>
    internal static int DecodeBucketFor(int maxCaptureSize, int sequenceCount)
    {
        int bucket = 1;
        while (bucket < sequenceCount && bucket < maxCaptureSize) bucket *= 2;
        return Math.Min(bucket, maxCaptureSize);
    }

    /// <summary>Test hook: the buckets of the padded decode steps (1, 2, 4, … the largest), null before the first padded step.</summary>
    internal int[]? DecodeBuckets => _decode?.Buckets;

    /// <summary>Test hook: bytes of the padded decode steps' static device buffers (activations, angles, metadata), 0 before the first padded step.</summary>
    internal long DecodeBufferBytes => _decode?.Step.ByteCount ?? 0;

    private int CaptureContextLength => Math.Min(_graphOptions!.MaxSeqLenToCapture, _shape.MaxContextLength);

    private string? DecodeGraphsOffReason(DecodeGraphOptions? options)
    {
        if (options is null || options.EnforceEager) return "EnforceEager";
        if (SetDefaultStream is null) return "ILGPU's default stream cannot be redirected to a capturable stream";
        if (_accelerator is CudaAccelerator && !CudaGraph.IsSupported(out var reason)) return reason;
        return null;
    }

    private string DecodeGraphStatus =>
        _graphsOff is not null ? $"decode eager ({_graphsOff})"
        : _graphFailure is not null ? $"decode eager (CUDA graph capture failed: {_graphFailure})"
        : _accelerator is CudaAccelerator
            ? $"decode steps of up to {_graphOptions!.MaxCaptureSize} sequences and {CaptureContextLength} positions as CUDA graphs"
            : $"decode steps padded to graph-safe batch sizes up to {_graphOptions!.MaxCaptureSize} (run eagerly: no CUDA graphs on this accelerator)";

    /// <summary>The bucket a pure decode step pads to, or null when the step runs eagerly.</summary>
    private int? TryDecodeBucket(ModelBatch batch)
    {
        LastDecodeBucket = 0;
        if (_graphsOff is not null || _graphFailure is not null) return null;
        int seqs = batch.Segments.Count;
        if (batch.TokenCount != seqs || batch.LogitCount != seqs || seqs > _graphOptions!.MaxCaptureSize) return null;
        int maxContext = CaptureContextLength;
        for (int si = 0; si < seqs; si++)
        {
            var seg = batch.Segments[si];
            if (seg.TokenCount != 1 || seg.LogitRowCount != 1 || seg.LogitIndex != si || seg.StartPosition + 1 > maxContext) return null;
        }
        return DecodeBucketFor(_graphOptions.MaxCaptureSize, seqs);
    }

    /// <summary>Runs a pure decode step padded to <paramref name="bucket"/> rows; returns its logits on the device.</summary>
    private ArrayView1D<float, Stride1D.Dense> RunDecodeStep(ModelBatch batch, int bucket)
    {
        var d = _decode ??= CreateDecodeState();
        int seqs = batch.Segments.Count;
        // Whatever went to the legacy stream before (eager steps, copy-on-write block copies) is done before this
        // step's stream (non-blocking on CUDA) reads the pool.
        var legacy = _accelerator.DefaultStream;
        legacy.Synchronize();
        SetDefaultStream!(_accelerator, d.Stream);
        try
        {
            var step = UploadDecode(batch, d, bucket);
            int index = Array.IndexOf(d.Buckets, bucket);
            if (d.Graphs[index] is { } graph)
            {
                graph.Launch((CudaStream)d.Stream);
            }
            else
            {
                // The first step of a bucket runs eagerly (it loads whatever modules it needs), then is captured.
                EnqueueOps(d.Step, step, bucket, bucket, _plan.Steps.Length, d.Attention, gemm: null);
                if (d.Stream is CudaStream cudaStream)
                {
                    try
                    {
                        d.Graphs[index] = CudaGraph.Capture(cudaStream, () => EnqueueOps(d.Step, step, bucket, bucket, _plan.Steps.Length, d.Attention, gemm: null));
                    }
                    catch (Exception e) when (e is InvalidOperationException or NotSupportedException or CudaException or ArgumentException)
                    {
                        _graphFailure = e.Message.ReplaceLineEndings(" ");
                    }
                }
            }
            d.Stream.Synchronize();
        }
        finally
        {
            SetDefaultStream(_accelerator, legacy);
        }
        LastDecodeBucket = bucket;
        return View(d.Step, _graph.LogitsBuffer, seqs, seqs);
    }

    /// <summary>Fills the static metadata of a padded decode step and uploads what changed; returns the attention views.</summary>
    private AttentionStep UploadDecode(ModelBatch batch, DecodeGraphState d, int bucket)
    {
        var c = _config;
        int seqs = batch.Segments.Count, maxBlocks = _shape.MaxBlocksPerSeq;
        var o = d.Layout;
        var ints = d.Ints;
        var mirror = d.Tables;
        int lo = int.MaxValue, hi = -1;
        // NOTE: a step refused half-way (a missing block, a bad token) must not leave the mirror claiming entries the
        // device never received (the engine retries the other sequences alone): the whole mirror is marked unknown, so
        // the next step uploads every entry it uses again.
        try
        {
            for (int si = 0; si < seqs; si++)
            {
                var seg = batch.Segments[si];
                int pos = seg.StartPosition, end = pos + 1;
                var table = UsedBlocks(seg.SequenceId, end);
                int token = batch.Tokens[seg.TokenStart];
                if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(batch), $"token id {token} is outside the vocabulary of {c.VocabSize}");
                ints[o.Tokens + si] = token;
                ints[o.Slots + si] = Slot(table, pos);
                ints[o.Positions + si] = pos;
                ints[o.ContextLens + si] = end;
                int row = si * maxBlocks;
                for (int j = 0; j < table.Length; j++)
                {
                    if (mirror[row + j] == table[j]) continue;
                    mirror[row + j] = table[j];
                    lo = Math.Min(lo, row + j);
                    hi = row + j;
                }
            }
        }
        catch
        {
            Array.Fill(mirror, -1);
            throw;
        }
        for (int r = seqs; r < bucket; r++)
        {
            ints[o.Tokens + r] = 0;
            ints[o.Slots + r] = -1;
            ints[o.Positions + r] = 0;
            ints[o.ContextLens + r] = 0;
        }
        var view = d.Step.Ints.View;
        ((ArrayView<int>)view.SubView(0, o.BlockTables)).CopyFromCPU<int, ArrayView<int>>(ints);
        LastTableEntriesUploaded = hi >= lo ? hi - lo + 1 : 0;
        if (hi >= lo)
            ((ArrayView<int>)view.SubView(o.BlockTables + lo, hi - lo + 1)).CopyFromCPU<int, ArrayView<int>>(mirror.AsSpan(lo, hi - lo + 1));

        // per rotation table r: cos [B, half_r] then sin [B, half_r]; rows past the batch keep earlier (finite) angles
        int totalHalf = RopeOffset(_graph.RopeTables.Length);
        for (int r = 0; r < _graph.RopeTables.Length; r++)
        {
            int half = _graph.RopeTables[r].RopeDim / 2, offset = 2 * bucket * RopeOffset(r);
            _graph.ComputeRopeAngles(r, batch, d.Angles.AsSpan(offset, seqs * half), d.Angles.AsSpan(offset + bucket * half, seqs * half));
        }
        if (totalHalf > 0)
            ((ArrayView<float>)d.Step.Angles.View.SubView(0, 2L * bucket * totalHalf)).CopyFromCPU<float, ArrayView<float>>(d.Angles.AsSpan(0, 2 * bucket * totalHalf));

        var s = d.Step;
        s.Tokens = view.SubView(o.Tokens, bucket);
        s.Slots = view.SubView(o.Slots, bucket);
        s.LogitRows = view.SubView(o.LogitRows, bucket);
        return new AttentionStep(view.SubView(o.BlockTables, (long)bucket * maxBlocks), view.SubView(o.ContextLens, bucket), view.SubView(o.SeqStarts, bucket + 1),
            view.SubView(o.TokenSeqs, bucket), view.SubView(o.Positions, bucket), bucket, bucket, CaptureContextLength, 1);
    }

    /// <summary>The stream, static buffers and attention scratch of the padded decode steps, sized once for every bucket.</summary>
    private DecodeGraphState CreateDecodeState()
    {
        int cap = _graphOptions!.MaxCaptureSize, maxBlocks = _shape.MaxBlocksPerSeq;
        var buckets = new List<int>();
        for (int b = 1; b < cap; b *= 2) buckets.Add(b);
        buckets.Add(cap);
        var state = new DecodeGraphState(cap, buckets.ToArray(), new StepIntLayout(cap, cap, cap, maxBlocks), maxBlocks, RopeOffset(_graph.RopeTables.Length));
        try
        {
            state.Stream = _accelerator.CreateStream();
            state.Step = new StepBuffers(_accelerator, _graph, maxBlocks, _experts);
            state.Step.Grow(cap, cap, cap);
            // The attention of captured steps has scratch of its own, reserved for every bucket before any capture: eager
            // steps may grow (move) the other instance's buffers.
            state.Attention = CreateAttention(_accelerator, _shape, _storage.DataType, _attentionChoice, flashPrefill: false);
            foreach (int b in state.Buckets) state.Attention.ReserveDecode(b, CaptureContextLength);
            state.Step.Ints.MemSetToZero();
            var o = state.Layout;
            for (int r = 0; r < cap; r++)
            {
                state.Ints[o.TokenSeqs + r] = r;
                state.Ints[o.SeqStarts + r] = r;
                state.Ints[o.LogitRows + r] = r;
            }
            state.Ints[o.SeqStarts + cap] = cap;
            _accelerator.Synchronize();
        }
        catch
        {
            state.Dispose();
            throw;
        }
        return state;
    }

    /// <summary>Every value an operation's launches take: buffer addresses and lengths, the counts, the attention metadata.</summary>
    private string DescribeLaunch(int i, StepBuffers s, in AttentionStep step, int n, int logitCount)
    {
        var op = _graph.Ops[i];
        var text = new StringBuilder($"{i} {op.Kind} n={n} logits={logitCount}");
        foreach (int id in (ReadOnlySpan<int>)[op.Src, op.Src2, op.Src3, op.Dst, op.Dst2, op.Dst3])
            if (id >= 0) Describe<float>(text, $"b{id}", View(s, id, n, logitCount));
        Describe(text, "tokens", s.Tokens);
        Describe(text, "slots", s.Slots);
        Describe(text, "logitRows", s.LogitRows);
        Describe<float>(text, "angles", s.Angles.View);
        if (op.Kind == Models.Graph.OpKind.MixtureOfExperts && s.Experts is { } experts)
        {
            Describe<float>(text, "expertFloats", experts.Floats.View);
            Describe<int>(text, "expertInts", experts.Ints.View);
        }
        if (op.Kind == Models.Graph.OpKind.Attention)
        {
            Describe(text, "tables", step.BlockTables);
            Describe(text, "contextLens", step.ContextLens);
            Describe(text, "seqStarts", step.SeqStarts);
            Describe(text, "tokenSeqs", step.TokenSeqs);
            Describe(text, "positions", step.Positions);
            text.Append($" tokens={step.TokenCount} seqs={step.SeqCount} maxContext={step.MaxContextLength} maxChunk={step.MaxChunkLength}");
        }
        return text.ToString();

        static void Describe<T>(StringBuilder text, string name, ArrayView<T> view) where T : unmanaged =>
            text.Append($" {name}@{(view.IsValid ? view.LoadEffectiveAddressAsPtr() : 0):x}+{view.Length}");
    }

    private void DisposeDecodeGraphs()
    {
        _decode?.Dispose();
        _decode = null;
    }

    /// <summary>The padded decode steps' state: the stream, the static buffers and host mirrors, one graph per bucket.</summary>
    private sealed class DecodeGraphState(int capacity, int[] buckets, StepIntLayout layout, int maxBlocks, int totalHalf) : IDisposable
    {
        public int Capacity { get; } = capacity;
        public int[] Buckets { get; } = buckets;                         // 1, 2, 4, …, Capacity
        public CudaGraph?[] Graphs { get; } = new CudaGraph?[buckets.Length];
        public StepIntLayout Layout { get; } = layout;                  // the largest bucket's (T = S = L = Capacity)
        public int[] Ints { get; } = new int[layout.BlockTables];        // host copy of the ints before the tables
        public int[] Tables { get; } = new int[capacity * maxBlocks];   // [Capacity, maxBlocks], what the device holds
        public float[] Angles { get; } = new float[2 * capacity * totalHalf];
        public AcceleratorStream Stream { get; set; } = null!;
        public StepBuffers Step { get; set; } = null!;
        public IDeviceAttention Attention { get; set; } = null!;

        public void Dispose()
        {
            foreach (var g in Graphs) g?.Dispose();
            Attention?.Dispose();
            Step?.Dispose();
            Stream?.Dispose();
        }
    }
}
