namespace Inference.Cuda.Runner;

/// <summary>
/// Where each section of a step's int metadata lies in its device buffer, computed once from the counts:
/// <code>
///  [tokens T | slots T | tokenSeqs T | positions T | seqStarts S + 1 | contextLens S | logitRows L | blockTables S·maxBlocks]
/// </code>
/// An eager step lays out its own counts (T tokens, S sequences, L logit rows); the padded decode steps lay out the
/// largest bucket C once (T = S = L = C) and use the first B rows of each section for bucket B.
/// </summary>
internal readonly record struct StepIntLayout
{
    /// <summary>Lays out <paramref name="tokens"/>, <paramref name="seqs"/> and <paramref name="logits"/> rows.</summary>
    /// <param name="tokens">Token rows (T).</param>
    /// <param name="seqs">Sequence rows (S).</param>
    /// <param name="logits">Logit rows (L).</param>
    /// <param name="maxBlocks">Block-table entries per sequence.</param>
    public StepIntLayout(int tokens, int seqs, int logits, int maxBlocks)
    {
        Slots = tokens;
        TokenSeqs = 2 * tokens;
        Positions = 3 * tokens;
        SeqStarts = 4 * tokens;
        ContextLens = SeqStarts + seqs + 1;
        LogitRows = ContextLens + seqs;
        BlockTables = LogitRows + logits;
        Length = BlockTables + (long)seqs * maxBlocks;
    }

    /// <summary>Offset of the token ids (always 0).</summary>
    public int Tokens => 0;

    /// <summary>Offset of the pool slot per token.</summary>
    public int Slots { get; }

    /// <summary>Offset of the sequence per token.</summary>
    public int TokenSeqs { get; }

    /// <summary>Offset of the position per token.</summary>
    public int Positions { get; }

    /// <summary>Offset of the first token per sequence, then the token count (S + 1 entries).</summary>
    public int SeqStarts { get; }

    /// <summary>Offset of the context length per sequence.</summary>
    public int ContextLens { get; }

    /// <summary>Offset of the token row per logit row.</summary>
    public int LogitRows { get; }

    /// <summary>Offset of the block tables, <c>[S, maxBlocks]</c>; everything before them is one contiguous span.</summary>
    public int BlockTables { get; }

    /// <summary>Ints in all.</summary>
    public long Length { get; }
}
