namespace Inference.Parallelism;

/// <summary>What the ranks of a parallel layout exchanged so far (see <see cref="Engine.EngineStats.Communication"/>).</summary>
/// <param name="TensorParallelSize">Ranks that split each layer.</param>
/// <param name="PipelineParallelSize">Pipeline stages.</param>
/// <param name="Steps">Forward passes run.</param>
/// <param name="Bytes">Bytes the ranks read from each other's buffers (all collectives and sends, all ranks together).</param>
/// <param name="Time">A rank's time inside collectives and sends, waiting for the other ranks included (the mean over ranks).</param>
/// <param name="ContextParallelSize">Ranks that split each step's tokens (ring attention).</param>
public sealed record ParallelCommunication(int TensorParallelSize, int PipelineParallelSize, long Steps, long Bytes, TimeSpan Time, int ContextParallelSize = 1)
{
    /// <summary>Bytes per forward pass.</summary>
    public double BytesPerStep => Steps == 0 ? 0 : (double)Bytes / Steps;

    /// <summary>Time inside collectives per forward pass.</summary>
    public TimeSpan TimePerStep => Steps == 0 ? TimeSpan.Zero : Time / Steps;
}
