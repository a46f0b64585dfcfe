using Inference.Models;

namespace Inference.Parallelism;

/// <summary>
/// One step's batch cut among the ranks of context parallelism: which tokens each rank computes (its own
/// <see cref="ModelBatch"/>, whose segments are its pieces of the step's sequences), where each piece's sequence
/// started in this step, and which rows of the step's logits each piece's logits are.
/// </summary>
/// <remarks>
/// <code>
///  a segment of n ≥ 2C tokens: 2C chunks (RankGroup.Part(n, 2C, k)); rank c takes chunks c and 2C − 1 − c
///      C = 2:   | c0 | c1 | c1 | c0 |      every rank gets one early and one late chunk, so the causal mask leaves
///                                        each about the same number of (query, key) pairs (a plain split in C gives
///                                        the last rank C times the first's); the last chunk, with the logits, is rank 0's
///  a shorter segment (a decode token, a short chunk): whole, to ranks in turn (rank = its index among them mod C)
/// </code>
/// Written by the engine thread before the ranks start; read by every rank during the step.
/// </remarks>
internal sealed class ContextSplit
{
    private readonly List<int>[] _stepStarts;
    private readonly List<int>[] _logitRows;
    private int[] _tokens = [];

    public ContextSplit(int ranks)
    {
        Batches = new ModelBatch[ranks];
        _stepStarts = new List<int>[ranks];
        _logitRows = new List<int>[ranks];
        for (int c = 0; c < ranks; c++)
        {
            Batches[c] = new ModelBatch();
            _stepStarts[c] = [];
            _logitRows[c] = [];
        }
    }

    /// <summary>Each rank's tokens: one segment per piece, in the step's segment order, a sequence's pieces in position order.</summary>
    public ModelBatch[] Batches { get; }

    /// <summary>The position at which piece <paramref name="piece"/>'s sequence starts in this step (positions before it are in the KV cache).</summary>
    public int StepStart(int rank, int piece) => _stepStarts[rank][piece];

    /// <summary>The row of the step's logits that piece <paramref name="piece"/>'s first logits row is (-1 without logits).</summary>
    public int LogitRow(int rank, int piece) => _logitRows[rank][piece];

    /// <summary>Cuts <paramref name="batch"/> among the ranks.</summary>
    public void Split(ModelBatch batch)
    {
        int ranks = Batches.Length;
        for (int c = 0; c < ranks; c++)
        {
            Batches[c].Clear();
            _stepStarts[c].Clear();
            _logitRows[c].Clear();
        }
        if (_tokens.Length < batch.TokenCount) _tokens = new int[Math.Max(batch.TokenCount, 2 * _tokens.Length)];
        for (int i = 0; i < batch.TokenCount; i++) _tokens[i] = batch.Tokens[i];
        int turn = 0;
        foreach (var seg in batch.Segments)
        {
            int n = seg.TokenCount;
            if (n < 2 * ranks)
            {
                Add(turn++ % ranks, seg, 0, n);
                continue;
            }
            for (int k = 0; k < 2 * ranks; k++)
            {
                var (start, length) = RankGroup.Part(n, 2 * ranks, k);
                Add(k < ranks ? k : 2 * ranks - 1 - k, seg, start, length);
            }
        }
    }

    /// <summary>Gives rank <paramref name="rank"/> tokens [<paramref name="start"/>, + <paramref name="length"/>) of <paramref name="seg"/>.</summary>
    private void Add(int rank, BatchSegment seg, int start, int length)
    {
        // The segment's logits rows are its last LogitRowCount tokens; a piece holds the part of them inside it.
        int firstLogit = seg.TokenCount - seg.LogitRowCount;
        int from = Math.Max(start, firstLogit), logitRows = Math.Max(0, start + length - from);
        Batches[rank].Add(seg.SequenceId, _tokens.AsSpan(seg.TokenStart + start, length), seg.StartPosition + start, logitRows);
        _stepStarts[rank].Add(seg.StartPosition);
        _logitRows[rank].Add(logitRows == 0 ? -1 : seg.LogitIndex + (from - firstLogit));
    }
}
