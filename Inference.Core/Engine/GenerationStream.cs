using System.Runtime.CompilerServices;

namespace Inference.Engine;

/// <summary>
/// The tokens of one request as they are generated, and its <see cref="Completion"/> once it ends.
/// Like any async sequence it is cold: the request is queued when enumeration starts. Enumerate it once. Breaking out of the loop, disposing the enumerator or cancelling ends the request and frees
/// its resources in the engine's next step.
/// </summary>
public sealed class GenerationStream : IAsyncEnumerable<GeneratedToken>
{
    private readonly GenerationRequest? _request;
    private readonly Action<GenerationRequest>? _submit;
    private readonly Func<CancellationToken, IAsyncEnumerable<GeneratedToken>>? _source;
    private readonly Task<Completion> _completion;
    private readonly CancellationToken _cancellationToken;
    private int _started;
    private int _submitted;

    internal GenerationStream(GenerationRequest request, Action<GenerationRequest> submit, CancellationToken cancellationToken)
    {
        _request = request;
        _submit = submit;
        _completion = request.Completion.Task;
        _cancellationToken = cancellationToken;
    }

    private GenerationStream(Func<CancellationToken, IAsyncEnumerable<GeneratedToken>> source, Task<Completion> completion, CancellationToken cancellationToken)
    {
        _source = source;
        _completion = completion;
        _cancellationToken = cancellationToken;
    }

    /// <summary>
    /// A stream over generation that runs elsewhere (another process, a cluster of engines), for code written against
    /// <see cref="ITextGenerator"/>.
    /// </summary>
    /// <param name="source">Starts the generation and yields its tokens; called once, when enumeration starts, with a
    /// token that is cancelled when the caller cancels or stops enumerating early.</param>
    /// <param name="completion">Completes with the whole result when <paramref name="source"/> ends (faults as it does).</param>
    /// <param name="cancellationToken">Cancels the generation.</param>
    public static GenerationStream FromSource(Func<CancellationToken, IAsyncEnumerable<GeneratedToken>> source, Task<Completion> completion, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(completion);
        return new GenerationStream(source, completion, cancellationToken);
    }

    /// <summary>The whole result; completes when generation ends (after enumeration started) (faults with <see cref="OperationCanceledException"/> on cancellation).</summary>
    public Task<Completion> Completion => _completion;

    /// <summary>
    /// The prompt's log-probabilities when <see cref="Sampling.SamplingOptions.PromptLogprobs"/> asked for them; set
    /// before the first token is streamed (null until then, when not asked for, and on a stream from <see cref="FromSource"/>).
    /// </summary>
    public IReadOnlyList<Sampling.TokenLogprobs>? PromptLogprobs => _request?.PromptLogprobs;

    /// <summary>Runs the request to its end without streaming and returns the whole result.</summary>
    public async Task<Completion> CompleteAsync()
    {
        await foreach (var _ in this.ConfigureAwait(false))
        {
        }
        return await Completion.ConfigureAwait(false);
    }

    /// <summary>
    /// Queues the request now instead of at the first enumeration, so that a full queue is known before anything else
    /// is done (the server answers 429 before it writes a response). Does nothing when already queued. The stream's
    /// cancellation token ends the request from now on, even if it is never enumerated.
    /// </summary>
    /// <exception cref="RequestQueueFullException">The engine already holds <see cref="EngineOptions.MaxWaitingRequests"/> requests waiting to start.</exception>
    /// <exception cref="ObjectDisposedException">The engine was disposed.</exception>
    public void Start()
    {
        // A stream from a source starts when it is enumerated.
        if (_request is null || Interlocked.Exchange(ref _submitted, 1) != 0) return;
        // Registered before the engine sees the request, so that the engine disposes it when the request ends.
        if (_cancellationToken.CanBeCanceled)
            _request.CancelRegistration = _cancellationToken.Register(static r => ((GenerationRequest)r!).Cancel(), _request);
        try
        {
            _submit!(_request);
        }
        catch
        {
            _request.CancelRegistration.Dispose();
            Volatile.Write(ref _submitted, 0);
            throw;
        }
    }

    /// <inheritdoc />
    public IAsyncEnumerator<GeneratedToken> GetAsyncEnumerator(CancellationToken cancellationToken = default) =>
        Stream(cancellationToken).GetAsyncEnumerator(cancellationToken);

    private async IAsyncEnumerable<GeneratedToken> Stream([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0) throw new InvalidOperationException("a generation stream can be enumerated only once");
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(_cancellationToken, cancellationToken);
        var token = linked.Token;
        if (_request is null)
        {
            try
            {
                await foreach (var item in _source!(token).WithCancellation(token).ConfigureAwait(false)) yield return item;
            }
            finally
            {
                // A consumer that stops early ends the remote request too.
                if (!_completion.IsCompleted) await linked.CancelAsync().ConfigureAwait(false);
            }
            yield break;
        }
        Start();
        using var registration = token.Register(static r => ((GenerationRequest)r!).Cancel(), _request);
        try
        {
            var reader = _request.Output.Reader;
            while (await reader.WaitToReadAsync(token).ConfigureAwait(false))
            {
                while (reader.TryRead(out var item))
                {
                    token.ThrowIfCancellationRequested();
                    yield return item;
                }
            }
        }
        finally
        {
            // A consumer that stops early ends the request; the engine frees its KV blocks in its next step.
            if (!_request.Completion.Task.IsCompleted) _request.Cancel();
        }
    }
}
