using ILGPU;
using ILGPU.Runtime;

namespace Inference.Cuda.Diagnostics;

/// <summary>
/// The paged-attention metadata of a check or benchmark batch, on the host and on the device: every sequence's block
/// table over given physical blocks, and its query tokens (the last chunk of its context: one token for decode).
/// </summary>
/// <remarks>
/// <code>
///  S sequences, context c[s], chunk q[s] (query tokens of s, its last q[s] positions), T = Σ q[s]
///    tables     [S, maxBlocks]   logical block b of s → blockIds[next++], sequence by sequence; unused entries 0
///    contexts   [S]              c[s]
///    starts     [S + 1]          first query token of s (starts[S] = T)
///    tokenSeqs  [T]              sequence of each query token
///    positions  [T]              c[s] − q[s] + i for the i-th query token of s
/// </code>
/// </remarks>
internal sealed class PagedBatch : IDisposable
{
    private readonly MemoryBuffer1D<int, Stride1D.Dense>[] _buffers;

    /// <param name="accelerator">Where the metadata goes.</param>
    /// <param name="contexts">Context length of each sequence.</param>
    /// <param name="chunks">Query tokens of each sequence (each at most its context).</param>
    /// <param name="blockSize">Tokens per block.</param>
    /// <param name="maxBlocks">Entries per block-table row.</param>
    /// <param name="blockIds">Physical blocks, handed out in order to sequence 0's logical blocks, then sequence 1's, …</param>
    public PagedBatch(Accelerator accelerator, int[] contexts, int[] chunks, int blockSize, int maxBlocks, ReadOnlySpan<int> blockIds)
    {
        Contexts = contexts;
        Tables = new int[contexts.Length * maxBlocks];
        for (int s = 0, next = 0; s < contexts.Length; s++)
            for (int b = 0; b < (contexts[s] + blockSize - 1) / blockSize; b++)
                Tables[s * maxBlocks + b] = blockIds[next++];
        Starts = new int[contexts.Length + 1];
        for (int s = 0; s < contexts.Length; s++) Starts[s + 1] = Starts[s] + chunks[s];
        TokenSeqs = new int[TokenCount];
        Positions = new int[TokenCount];
        for (int s = 0; s < contexts.Length; s++)
            for (int i = Starts[s]; i < Starts[s + 1]; i++)
            {
                TokenSeqs[i] = s;
                Positions[i] = contexts[s] - (Starts[s + 1] - Starts[s]) + (i - Starts[s]);
            }
        _buffers = new MemoryBuffer1D<int, Stride1D.Dense>[5];
        try
        {
            int i = 0;
            foreach (var host in new[] { Tables, Contexts, Starts, TokenSeqs, Positions }) _buffers[i++] = accelerator.Allocate1D(host);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Physical block ids 0 … <paramref name="count"/> − 1 in a random order.</summary>
    public static int[] ShuffledBlocks(Random rng, int count) => Enumerable.Range(0, count).OrderBy(_ => rng.Next()).ToArray();

    public int SeqCount => Contexts.Length;

    public int TokenCount => Starts[^1];

    /// <summary><c>[S, maxBlocks]</c>.</summary>
    public int[] Tables { get; }

    /// <summary><c>[S]</c>.</summary>
    public int[] Contexts { get; }

    /// <summary><c>[S + 1]</c>.</summary>
    public int[] Starts { get; }

    /// <summary><c>[T]</c>.</summary>
    public int[] TokenSeqs { get; }

    /// <summary><c>[T]</c>.</summary>
    public int[] Positions { get; }

    public ArrayView<int> TablesView => _buffers[0].View;

    public ArrayView<int> ContextsView => _buffers[1].View;

    public ArrayView<int> StartsView => _buffers[2].View;

    public ArrayView<int> TokenSeqsView => _buffers[3].View;

    public ArrayView<int> PositionsView => _buffers[4].View;

    public void Dispose()
    {
        foreach (var b in _buffers) b?.Dispose();
    }
}
